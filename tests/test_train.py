"""Training: config validation, resume reproducibility, DDP, checkpoint safety, metrics."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ecgkit.checkpoint import read_checkpoint
from ecgkit.config import load_config
from ecgkit.errors import CheckpointError, ConfigError

TINY = {
    "seed": 3,
    "data": {"train": ["101", "106", "118"], "val": ["118"], "test": ["100"]},
    "model": {"name": "transnet", "params": {"d_model": 32, "n_layers": 1, "block_channels": [16, 16]}},
    "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 4, "seq_len": 16, "threads": 1},
}


@pytest.fixture
def tiny_config(tmp_path):
    def make(**over):
        cfg = {**TINY, **over, "run_dir": str(tmp_path / "run")}
        p = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*')))}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        return p

    return make


def test_config_rejects_unknown_and_bad_keys(tmp_path, tiny_config):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**TINY, "train": {"epochz": 3}}))
    with pytest.raises(ConfigError, match="epochz"):
        load_config(p)
    p.write_text(yaml.safe_dump({**TINY, "train": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(p)
    p.write_text(yaml.safe_dump({**TINY, "data": {"train": "DS1", "test": ["101"]}}))
    with pytest.raises(ConfigError, match="leaks"):
        load_config(p)
    p.write_text(yaml.safe_dump({**TINY, "data": {"train": ["101"], "val": ["100"]}}))
    with pytest.raises(ConfigError, match="held out"):
        load_config(p)
    p.write_text("seed: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    cfg = load_config(tiny_config())
    assert cfg.train.epochs == 2 and cfg.data.train == ["101", "106", "118"]


def _weights(path):
    return read_checkpoint(path)["state_dict"]


def _interrupt_after_first_epoch(train_mod, cfg, run_dir, data_dir, monkeypatch):
    """Run ``train`` until its first ``last.pt`` is written, then stop it as a kill during epoch 2 would."""
    real_save = train_mod.save_checkpoint

    def save_then_die(path, *a, **k):
        out = real_save(path, *a, **k)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, run_dir=run_dir, show_progress=False, log=lambda m: None, data_dir=data_dir)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == 1


def test_resume_after_interruption_gives_identical_weights(data_dir, tiny_config, monkeypatch):
    from ecgkit import train as train_mod

    cfg_path = tiny_config()
    cfg = load_config(cfg_path)
    run_a = Path(cfg.run_dir + "_a")
    train_mod.train(cfg, run_dir=run_a, show_progress=False, log=lambda m: None, data_dir=data_dir)

    # interrupt run B right after the first epoch's checkpoint, as a kill during epoch 2 would
    run_b = Path(cfg.run_dir + "_b")
    _interrupt_after_first_epoch(train_mod, cfg, run_b, data_dir, monkeypatch)
    train_mod.train(cfg, run_dir=run_b, resume=True, show_progress=False, log=lambda m: None, data_dir=data_dir)

    wa, wb = _weights(run_a / "last.pt"), _weights(run_b / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # and a different seed gives different weights (the comparison above can fail)
    cfg.seed = 4
    train_mod.train(cfg, run_dir=Path(cfg.run_dir + "_c"), show_progress=False, log=lambda m: None, data_dir=data_dir)
    wc = _weights(Path(cfg.run_dir + "_c") / "last.pt")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())


def test_training_writes_run_directory(data_dir, tiny_config):
    from click.testing import CliRunner

    from ecgkit.cli import cli

    cfg_path = tiny_config()
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg_path), "--data", str(data_dir)])
    assert res.exit_code == 0, res.output
    run = Path(load_config(cfg_path).run_dir)
    for f in ("best.pt", "last.pt", "metrics.json", "training_curve.png"):
        assert (run / f).is_file(), f
    ck = read_checkpoint(run / "best.pt")
    assert ck["input_spec"]["classes"] == ["N", "S", "V", "F", "Q"]
    assert ck["seed"] == 3 and "optimizer" not in ck
    # the library versions the weights depend on travel with them
    import numpy
    import scipy
    import wfdb
    assert ck["environment"]["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    assert (ck["environment"]["numpy"], ck["environment"]["scipy"]) == (numpy.__version__, scipy.__version__)
    assert ck["environment"]["wfdb"] == wfdb.__version__ and ck["environment"]["python"].count(".") == 2
    # and the CPU: torch's kernels, hence the last bits of the weights, follow its vector instructions
    assert ck["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(ck["environment"]["cpu"], str) and ck["environment"]["cpu"]
    hist = __import__("json").loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and all("val_jk" in h for h in hist)
    # resume without a checkpoint is a clear error
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg_path), "--resume", "--out", str(run) + "_none",
                                   "--data", str(data_dir)])
    assert res.exit_code != 0 and "no checkpoint" in res.output


def test_ddp_two_cpu_processes(data_dir, tiny_config, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    cfg_path = tiny_config(train={**TINY["train"], "epochs": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ECGKIT_DATA": str(data_dir)}
    out = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517",
                          "-m", "ecgkit.cli", "train", "--config", str(cfg_path)],
                         capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    run = Path(load_config(cfg_path).run_dir)
    ck = read_checkpoint(run / "best.pt")
    assert ck["epoch"] == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ecgkit_pwned_marker",))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = Path("/tmp/ecgkit_pwned_marker")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ecgkit-checkpoint/1", "payload": _Evil()}, evil, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(evil)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        read_checkpoint(plain)
    assert not marker.exists()


def test_garbage_model_file_is_one_line_error(tmp_path, data_dir):
    from click.testing import CliRunner

    from ecgkit.cli import cli

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "ann"
    res = CliRunner().invoke(cli, ["annotate", str(data_dir / "100"), "--model", str(bad), "--out", str(out)])
    assert res.exit_code == 1
    assert isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "model.pt" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_patient_kfold_tests_every_record_once_with_unseen_patients(data_dir, tiny_config, tmp_path):
    from ecgkit.evaluate import kfold

    cfg = load_config(tiny_config(train={**TINY["train"], "epochs": 1, "steps_per_epoch": 2}))
    records = ["100", "101", "105", "119"]
    report = kfold(cfg, k=2, data=data_dir, out_dir=tmp_path / "kf", show_progress=False, records=records)
    assert report["records"] == records
    # each fold trained on the other fold's patients only, and every record was tested exactly once
    folds = sorted((tmp_path / "kf" / "kfold").iterdir())
    assert len(folds) == 2
    tested = []
    for fold in folds:
        cfg_used = __import__("json").loads(read_checkpoint(fold / "best.pt")["config"])
        assert not set(cfg_used["data"]["train"]) & set(cfg_used["data"]["test"])
        assert set(cfg_used["data"]["val"]) <= set(cfg_used["data"]["train"])
        tested += cfg_used["data"]["test"]
    assert sorted(tested) == records
    assert (tmp_path / "kf" / "report.json").is_file() and (tmp_path / "kf" / "confusion_matrix.png").is_file()


def test_kfold_with_fixed_epochs_trains_each_fold_on_all_its_patients(data_dir, tiny_config, tmp_path):
    import json

    from ecgkit.evaluate import kfold

    cfg = load_config(tiny_config(data={**TINY["data"], "val": []},
                                  train={**TINY["train"], "epochs": 2, "steps_per_epoch": 1}))
    records = ["100", "101", "105", "119", "208", "209"]
    kfold(cfg, k=2, data=data_dir, out_dir=tmp_path / "kf", show_progress=False, records=records)
    for fold in sorted((tmp_path / "kf" / "kfold").iterdir()):
        ck = read_checkpoint(fold / "best.pt")
        used = json.loads(ck["config"])["data"]
        assert used["val"] == [] and len(used["train"]) == 3   # no patient held back for validation
        assert ck["epoch"] == 2                                # the last epoch, as in a final fit
    # with validation patients in the config, each fold still holds some of its own back
    cfg = load_config(tiny_config(train={**TINY["train"], "epochs": 2, "steps_per_epoch": 1}))
    kfold(cfg, k=2, data=data_dir, out_dir=tmp_path / "kv", show_progress=False, records=records)
    for fold in sorted((tmp_path / "kv" / "kfold").iterdir()):
        used = json.loads(read_checkpoint(fold / "best.pt")["config"])["data"]
        assert len(used["val"]) == 1 and set(used["val"]) <= set(used["train"])


def test_cli_kfold_over_given_records_and_bad_split(data_dir, tiny_config, tmp_path):
    import json

    from click.testing import CliRunner

    from ecgkit.cli import cli

    cfg = tiny_config(train={**TINY["train"], "epochs": 1, "steps_per_epoch": 2})
    out = tmp_path / "cv"
    res = CliRunner().invoke(cli, ["evaluate", "--protocol", "kfold", "--config", str(cfg), "--folds", "2",
                                   "--records", "100", "105", "119", "--data", str(data_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "report.json").read_text())["records"] == ["100", "105", "119"]
    res = CliRunner().invoke(cli, ["evaluate", "--protocol", "kfold", "--config", str(cfg), "--split", "DS9",
                                   "--data", str(data_dir)])
    assert res.exit_code == 2 and "unknown split 'DS9'" in res.output


def test_ensemble_cv_benchmark_pools_held_out_models(data_dir, tiny_config, tmp_path, capsys, monkeypatch,
                                                    load_benchmark):
    from ecgkit.evaluate import kfold

    mod = load_benchmark("ensemble_cv")
    records = ["100", "105", "119"]
    reports = []
    for seed in (3, 4):  # two differently seeded runs (other folds, other weights)
        cfg = load_config(tiny_config(seed=seed, train={**TINY["train"], "epochs": 1, "steps_per_epoch": 2}))
        reports.append(kfold(cfg, k=2, data=data_dir, out_dir=tmp_path / f"kf{seed}", show_progress=False,
                             records=records))
    mod.main([str(tmp_path / "kf3"), str(tmp_path / "kf4"), "--data", str(data_dir)])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| kf") or ln.startswith("| **ens")]
    # each run's row reproduces that run's own kfold report, every column
    assert rows[0] == mod.report_row("kf3", reports[0]) and rows[1] == mod.report_row("kf4", reports[1])
    # the ensemble row is the mean of the two runs' held-out models, recomputed here
    from ecgkit.datasets import resolve_records
    from ecgkit.datasets.mitdb import reference_beats
    from ecgkit.inference import predict_log_proba, prepare_record
    from ecgkit.io import read_annotations, read_record
    from ecgkit.metrics import ec57_report
    from ecgkit.models import load_any_model

    held = [mod.held_out_models(str(tmp_path / d)) for d in ("kf3", "kf4")]
    ys, ps, rs = [], [], []
    for name, path in zip(records, resolve_records(records, data_dir)):
        r = read_record(path)
        samples, labels = reference_beats(*read_annotations(r.path, "atr"))
        lps = []
        for h in held:
            model, mspec, _ = load_any_model(h[name])
            lps.append(predict_log_proba(model, prepare_record(r, samples, mspec), mspec))
        ys.append(labels); ps.append(np.mean(lps, 0).argmax(1)); rs.append(np.full(labels.size, name))
    expected = ec57_report(np.concatenate(ys), np.concatenate(ps), np.concatenate(rs))
    rows_ens = mod.report_row("x", expected).split("|")[2:]
    assert rows[2].split("|")[2:] == rows_ens
    # --ventricular-neighbours K: the step runs once per record on the runs' mean over all its beats, with K
    # (a stand-in that calls every beat V, so the route shows: one epoch of the tiny recipe calls nothing V)
    calls = []

    def every_beat_v(lp, windows, spec, k):
        calls.append((k, len(lp), len(windows)))
        return np.where(np.arange(lp.shape[1]) == 2, 0.0, -10.0) + 0 * lp

    monkeypatch.setattr(mod, "share_ventricular_evidence", every_beat_v)
    mod.main([str(tmp_path / "kf3"), str(tmp_path / "kf4"), "--data", str(data_dir), "--ventricular-neighbours", "3"])
    out = capsys.readouterr().out.splitlines()
    all_v = ec57_report(np.concatenate(ys), np.full(sum(len(v) for v in ys), 2), np.concatenate(rs))
    assert [ln for ln in out if ln.startswith("| **ens")][0].split("|")[2:] == mod.report_row("x", all_v).split("|")[2:]
    assert [ln for ln in out if ln.startswith("| kf3")][0] == mod.report_row("kf3", reports[0])  # runs stay as is
    assert [(k, n == w) for k, n, w in calls] == [(3, True)] * len(records)
    with pytest.raises(SystemExit, match="no kfold"):
        mod.main([str(tmp_path)])

    # decision_bias.py on the same runs: with only b = 0 on the grid, every row is the ensemble's
    bias = load_benchmark("decision_bias")
    runs = [str(tmp_path / "kf3"), str(tmp_path / "kf4"), "--data", str(data_dir)]
    capsys.readouterr()
    bias.main(runs + ["--grid=0:0:1"])
    rows = [ln.split("|")[2:] for ln in capsys.readouterr().out.splitlines() if ln.startswith("| b =") or
            ln.startswith("| cross")]
    assert len(rows) == 3 and all(r == mod.report_row("x", expected).split("|")[2:] for r in rows)
    # a prior of exp(-50) on S: no beat is called S any more, so S has no +P and zero Se
    bias.main(runs + ["--grid=-50:-50:1"])
    out = capsys.readouterr().out
    assert "chosen on all DS1 folds: b = -50.0" in out
    crossed = [ln for ln in out.splitlines() if ln.startswith("| cross")][0]
    assert crossed.split("|")[3].strip().startswith("0.0 / nan")

    # --compose: runs grouped by recipe (directory name less "_s<seed>"); a composition of one run of
    # each recipe is the two-run ensemble above, one of a single run is that run's own row
    (tmp_path / "a_s0").symlink_to(tmp_path / "kf3")
    (tmp_path / "b_s0").symlink_to(tmp_path / "kf4")
    named = [str(tmp_path / "a_s0"), str(tmp_path / "b_s0"), "--data", str(data_dir)]
    mod.main(named + ["--compose", "a:1,b:1", "--compose", "a:1", "--per-record"])  # repeatable
    out = capsys.readouterr().out.splitlines()
    comp = [ln for ln in out if ln.startswith("| a_s0 + b_s0")]
    mean = [ln for ln in out if ln.startswith("| **mean of 1")]
    assert len(comp) == 1 and comp[0].split("|")[2:] == rows_ens
    assert mean[0].split("|")[2:] == rows_ens
    recs = [ln.split("|") for ln in out if ln.startswith("| 1")]
    assert [r[1].strip() for r in recs] == records
    found = sum(int(r[3].split("of")[0]) for r in recs)
    n_s = sum(int(r[3].split("of")[1]) for r in recs)
    assert n_s == int((np.concatenate(ys) == 1).sum())
    assert found == int(((np.concatenate(ys) == 1) & (np.concatenate(ps) == 1)).sum())
    false_s = sum(int(r[4].split("(")[0]) for r in recs)
    assert found + false_s == int((np.concatenate(ps) == 1).sum())       # every beat called S, once
    comp = [ln for ln in out if ln.startswith("| a_s0 |")]
    assert comp[0].split("|")[2:] == mod.report_row("x", reports[0]).split("|")[2:]
    assert mod.compositions(["r/a_s0", "r/a_s1", "r/b_s0", "r/a_s2"], "a:2,b:1") == [(0, 1, 2), (0, 2, 3), (1, 2, 3)]
    with pytest.raises(SystemExit, match="asks for 2 run"):
        mod.compositions(["r/a_s0", "r/b_s0"], "a:2")
    with pytest.raises(SystemExit, match="RECIPE:K"):
        mod.compositions(["r/a_s0"], "a")

    # rhythm_stress --compose on the same runs, their fold models standing in for two shipped models
    # that disagree (one epoch of the tiny recipe calls nothing S, which would make every line equal)
    stress = load_benchmark("rhythm_stress")
    monkeypatch.setattr(stress, "load_any_model",
                        lambda path: load_any_model("transnet" if "a_s0" in str(path) else "transnet-2lead"))
    stress.main(named + ["--block", "--beats", "300", "--compose", "a:1,b:1", "--compose", "a:1"])
    out = capsys.readouterr().out.splitlines()

    def cells(prefix):
        return [ln.split("|") for ln in out if ln.startswith(prefix)]

    ens, a, b = cells("| **pooled, ensemble**"), cells("| pooled, a_s0"), cells("| pooled, b_s0")
    comp = cells("| a_s0 + b_s0")[0]
    assert [comp[i].strip() for i in (2, 3, 4)] == [ens[0][i].strip() for i in (2, 5, 8)]
    assert comp[5].strip() == f"{ens[1][3].strip()} ({ens[1][4].strip()})"
    assert a[1][3] != b[1][3]                     # the two members differ on the block rhythm
    comp = cells("| a_s0 |")[0]
    assert [comp[i].strip() for i in (2, 3, 4)] == [a[0][i].strip() for i in (2, 5, 8)]
    assert comp[5].strip() == f"{a[1][3].strip()} ({a[1][4].strip()})"


def test_ema_is_the_average_of_the_raw_trajectory_and_leaves_it_unchanged(data_dir, tiny_config, monkeypatch):
    """train.ema: best.pt = exponential average of the raw weights after every step; raw training identical."""
    from torch.optim.swa_utils import AveragedModel

    from ecgkit import train as train_mod

    over = {"data": {**TINY["data"], "val": []}}
    cfg_raw = load_config(tiny_config(**over))
    run_raw = Path(cfg_raw.run_dir + "_raw")
    train_mod.train(cfg_raw, run_dir=run_raw, show_progress=False, log=lambda m: None, data_dir=data_dir)

    snaps = []
    real_update = AveragedModel.update_parameters

    def recording_update(self, model):
        snaps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", recording_update)
    decay = 0.7
    cfg = load_config(tiny_config(**over, train={**TINY["train"], "ema": decay}))
    run = Path(cfg.run_dir + "_ema")
    train_mod.train(cfg, run_dir=run, show_progress=False, log=lambda m: None, data_dir=data_dir)
    steps = TINY["train"]["epochs"] * TINY["train"]["steps_per_epoch"]
    assert len(snaps) == steps

    raw, last, best = _weights(run_raw / "last.pt"), _weights(run / "last.pt"), _weights(run / "best.pt")
    for k in raw:  # the average never feeds back: last.pt holds exactly the raw run's weights
        assert torch.equal(raw[k], last[k]), k
    expected = {k: v.double() for k, v in snaps[0].items() if v.is_floating_point()}
    for s in snaps[1:]:
        expected = {k: decay * v + (1 - decay) * s[k].double() for k, v in expected.items()}
    for k, v in expected.items():
        torch.testing.assert_close(best[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.allclose(best[k], last[k]) for k in expected)  # the average is not the last step


def test_ema_resume_and_bad_decay(data_dir, tiny_config, tmp_path, monkeypatch):
    from ecgkit import train as train_mod

    cfg = load_config(tiny_config(train={**TINY["train"], "ema": 0.9}))
    run_a = Path(cfg.run_dir + "_a")
    train_mod.train(cfg, run_dir=run_a, show_progress=False, log=lambda m: None, data_dir=data_dir)
    # interrupt run B after the first epoch's checkpoint, then resume it: same raw and averaged weights
    run_b = Path(cfg.run_dir + "_b")
    _interrupt_after_first_epoch(train_mod, cfg, run_b, data_dir, monkeypatch)
    train_mod.train(cfg, run_dir=run_b, resume=True, show_progress=False, log=lambda m: None, data_dir=data_dir)
    for name in ("last.pt", "best.pt"):
        wa, wb = _weights(run_a / name), _weights(run_b / name)
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    ea = read_checkpoint(run_a / "last.pt")["ema_state_dict"]
    eb = read_checkpoint(run_b / "last.pt")["ema_state_dict"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    # resuming a run trained without the average is refused, not silently restarted
    run_p = Path(cfg.run_dir + "_p")
    train_mod.train(load_config(tiny_config()), run_dir=run_p, show_progress=False, log=lambda m: None,
                    data_dir=data_dir)
    with pytest.raises(ConfigError, match="without train.ema"):
        train_mod.train(cfg, run_dir=run_p, resume=True, show_progress=False, log=lambda m: None, data_dir=data_dir)
    bad = tmp_path / "bad_ema.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "train": {"ema": 1.0}}))
    with pytest.raises(ConfigError, match="train.ema"):
        load_config(bad)


def test_kfold_fold_seed_fixes_the_folds_across_training_seeds(data_dir, tiny_config, tmp_path):
    import json

    from ecgkit.datasets.mitdb import patient_kfold
    from ecgkit.evaluate import kfold

    records = ["100", "101", "105", "119", "208", "209"]
    tiny_train = {**TINY["train"], "epochs": 1, "steps_per_epoch": 1}

    def folds(seed, fold_seed, name):
        cfg = load_config(tiny_config(seed=seed, data={**TINY["data"], "val": []}, train=tiny_train))
        rep = kfold(cfg, k=2, data=data_dir, out_dir=tmp_path / name, show_progress=False, records=records,
                    fold_seed=fold_seed)
        cks = [read_checkpoint(f / "best.pt") for f in sorted((tmp_path / name / "kfold").iterdir())]
        return [tuple(json.loads(c["config"])["data"]["test"]) for c in cks], [c["seed"] for c in cks], rep

    a, seeds_a, rep_a = folds(3, 1, "a")
    b, seeds_b, _ = folds(4, 1, "b")
    assert a == b and seeds_a == [3, 3] and seeds_b == [4, 4]    # same patients per fold, other training seed
    assert a == [test for _, test in patient_kfold(records, 2, 1)] and "fold seed 1" in rep_a["model"]
    # without it the config seed shuffles the folds, and these seeds give other folds
    assert [t for _, t in patient_kfold(records, 2, 3)] != a != [t for _, t in patient_kfold(records, 2, 4)]


def test_ensemble_cv_scores_raw_weights_of_an_ema_run(data_dir, tiny_config, tmp_path, capsys, load_benchmark):
    """--checkpoint last.pt: the raw weights of an EMA run reproduce the same recipe without EMA, fold for fold."""
    from ecgkit.evaluate import kfold

    mod = load_benchmark("ensemble_cv")
    records = ["100", "105", "119"]
    tiny_train = {**TINY["train"], "epochs": 1, "steps_per_epoch": 3}
    data = {**TINY["data"], "val": []}
    plain = kfold(load_config(tiny_config(data=data, train=tiny_train)), k=2, data=data_dir,
                  out_dir=tmp_path / "plain", show_progress=False, records=records)
    ema = kfold(load_config(tiny_config(data=data, train={**tiny_train, "ema": 0.5})), k=2, data=data_dir,
                out_dir=tmp_path / "ema", show_progress=False, records=records)
    capsys.readouterr()
    mod.main([str(tmp_path / "ema"), "--data", str(data_dir), "--checkpoint", "last.pt"])
    raw_row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ema")][0]
    assert raw_row.split("|")[2:] == mod.report_row("x", plain).split("|")[2:]
    mod.main([str(tmp_path / "ema"), "--data", str(data_dir)])  # default best.pt: the averaged weights
    avg_row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ema")][0]
    assert avg_row.split("|")[2:] == mod.report_row("x", ema).split("|")[2:]
    assert avg_row != raw_row  # the two checkpoints classify differently, so the comparisons above can fail


def test_kfold_resume_ends_as_an_uninterrupted_run(data_dir, tiny_config, tmp_path, monkeypatch):
    """An interrupted k-fold run continues fold by fold: the finished fold is only re-scored,
    the unfinished one resumes from its last.pt, and the report and weights equal an uninterrupted run's."""
    import json

    from ecgkit import train as train_mod
    from ecgkit.errors import ConfigError
    from ecgkit.evaluate import kfold

    records = ["100", "105", "119"]
    cfg_path = tiny_config(data={**TINY["data"], "val": []}, train={**TINY["train"], "epochs": 2, "steps_per_epoch": 2})
    run = lambda out, **kw: kfold(load_config(cfg_path), k=2, data=data_dir, out_dir=out,  # noqa: E731
                                  show_progress=False, records=records, **kw)
    whole = run(tmp_path / "whole")

    real_save = train_mod.save_checkpoint

    def die_in_fold2(path, *a, **k):  # killed in fold 2, after its first epoch was saved
        out = real_save(path, *a, **k)
        if Path(path).parent.name == "fold2" and Path(path).name == "last.pt":
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(train_mod, "save_checkpoint", die_in_fold2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    folds = tmp_path / "cut" / "kfold"
    assert read_checkpoint(folds / "fold1" / "last.pt")["epoch"] == 2
    assert read_checkpoint(folds / "fold2" / "last.pt")["epoch"] == 1
    fold1_mtime = (folds / "fold1" / "last.pt").stat().st_mtime_ns

    resumed = run(tmp_path / "cut", resume=True)
    assert (folds / "fold1" / "last.pt").stat().st_mtime_ns == fold1_mtime  # the finished fold was not retrained
    for f in ("fold1", "fold2"):
        wa, wb = _weights(tmp_path / "whole" / "kfold" / f / "last.pt"), _weights(folds / f / "last.pt")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f
    same = lambda key: json.dumps(resumed[key], sort_keys=True) == json.dumps(whole[key], sort_keys=True)  # noqa: E731
    assert same("confusion_matrix") and same("per_record") and same("gross")  # (json: nan == nan)

    # another recipe in the same directory is refused, not mixed in
    other = tiny_config(data={**TINY["data"], "val": []}, train={**TINY["train"], "epochs": 2, "steps_per_epoch": 2,
                                                               "lr": 0.01})
    with pytest.raises(ConfigError, match="another config or fold assignment"):
        kfold(load_config(other), k=2, data=data_dir, out_dir=tmp_path / "cut", show_progress=False,
              records=records, resume=True)


def test_kfold_resume_of_ensemble_folds(data_dir, tiny_config, tmp_path):
    """With train.ensemble > 1 each fold's members resume (member 1's config is checked, as train_ensemble
    writes it: ensemble 1, float32); a finished run resumed gives the same report, another recipe is refused."""
    import json

    from ecgkit.errors import ConfigError
    from ecgkit.evaluate import kfold

    records = ["100", "105", "119"]
    tr = {**TINY["train"], "epochs": 1, "steps_per_epoch": 1, "ensemble": 2, "weights_dtype": "float16"}
    cfg_path = tiny_config(data={**TINY["data"], "val": []}, train=tr)
    run = lambda cfg, **kw: kfold(load_config(cfg), k=2, data=data_dir, out_dir=tmp_path / "kf",  # noqa: E731
                                  show_progress=False, records=records, **kw)
    first = run(cfg_path)
    again = run(cfg_path, resume=True)
    assert json.dumps(again["per_record"], sort_keys=True) == json.dumps(first["per_record"], sort_keys=True)
    other = tiny_config(data={**TINY["data"], "val": []}, train={**tr, "lr": 0.01})
    with pytest.raises(ConfigError, match="member1/last.pt was trained with another config"):
        run(other, resume=True)


def test_cli_resume_is_for_kfold_only(data_dir):
    from click.testing import CliRunner

    from ecgkit.cli import cli

    res = CliRunner().invoke(cli, ["evaluate", "--resume", "--records", "100", "--data", str(data_dir)])
    assert res.exit_code == 2 and "--resume applies to --protocol kfold only" in res.output


def test_decision_bias_choice_is_the_best_f1_nearest_zero(load_benchmark):
    """The S offset with the highest SVEB F1 wins; among equal ones, the smallest change."""
    bias = load_benchmark("decision_bias")
    # four N beats, two S beats; S is the runner-up in beat 4 (an S) and in beat 2 (an N)
    lp = np.log(np.array([[.9, .1, 0, 0, 0], [.6, .4, 0, 0, 0], [.9, .1, 0, 0, 0],
                          [.55, .45, 0, 0, 0], [.3, .7, 0, 0, 0], [.9, .1, 0, 0, 0]]) + 1e-12)
    y = np.array([0, 0, 0, 1, 1, 0])
    rec = np.array(["a"] * 6)
    grid = bias.parse_grid("-1:1:0.1")
    assert len(grid) == 21 and grid[10] == 0
    # b in (log(.55/.45), log(.6/.4)) = (0.20, 0.41) finds both S beats and no N: F1 1; 0.3 is the only grid point
    assert bias.choose(y, lp, rec, grid) == pytest.approx(0.3)
    # without beat 4 every b in [-0.8, 0.2] is perfect: the nearest 0 is chosen
    keep = np.arange(6) != 3
    assert bias.choose(y[keep], lp[keep], rec[keep], grid) == 0.0
    # an offset on V, chosen for jk: a V beat whose runner-up is V is found from b > log(.6/.4) = 0.41
    lp_v = np.vstack([lp, np.log(np.array([[.6, 0, .4, 0, 0]]) + 1e-12)])
    y_v, rec_v = np.append(y, 2), np.append(rec, "a")
    assert bias.choose(y_v, lp_v, rec_v, grid, cls="V", metric="jk") == pytest.approx(0.5)
    assert bias.score(y_v, lp_v, rec_v, 0.5, "V", "jk") > bias.score(y_v, lp_v, rec_v, 0.0, "V", "jk")


def test_ventricular_ectopy_trains_and_changes_only_what_it_should(data_dir, tiny_config, tmp_path):
    """train.augment.ventricular_ectopy feeds training (other weights) and, at 0, leaves the recipe bit-identical."""
    from ecgkit.train import train

    data = {**TINY["data"], "val": []}
    aug = {"synthetic_ectopy": 1.0}
    runs = {}
    for name, extra in (("off", {}), ("zero", {"ventricular_ectopy": 0.0}), ("on", {"ventricular_ectopy": 1.0})):
        cfg = load_config(tiny_config(data=data, train={**TINY["train"], "epochs": 1, "augment": {**aug, **extra}}))
        runs[name] = _weights(train(cfg, run_dir=tmp_path / name, data_dir=data_dir, show_progress=False,
                                    log=lambda m: None))
    assert all(torch.equal(runs["off"][k], runs["zero"][k]) for k in runs["off"])
    assert any(not torch.equal(runs["off"][k], runs["on"][k]) for k in runs["off"] if runs["off"][k].is_floating_point())


def test_ectopic_p_trains_and_is_refused_where_it_cannot_act(data_dir, tiny_config, tmp_path):
    """train.augment.ectopic_p feeds training (other weights); off, the recipe is bit-identical; without
    synthetic_ectopy, or for a two-lead model, it is a one-line config error."""
    from ecgkit.errors import ConfigError
    from ecgkit.train import train

    data = {**TINY["data"], "val": []}
    runs = {}
    for name, aug in (("off", {"synthetic_ectopy": 1.0}), ("false", {"synthetic_ectopy": 1.0, "ectopic_p": False}),
                      ("on", {"synthetic_ectopy": 1.0, "ectopic_p": True})):
        cfg = load_config(tiny_config(data=data, train={**TINY["train"], "epochs": 1, "augment": aug}))
        runs[name] = _weights(train(cfg, run_dir=tmp_path / name, data_dir=data_dir, show_progress=False,
                                    log=lambda m: None))
    assert all(torch.equal(runs["off"][k], runs["false"][k]) for k in runs["off"])
    assert any(not torch.equal(runs["off"][k], runs["on"][k]) for k in runs["off"] if runs["off"][k].is_floating_point())
    with pytest.raises(ConfigError, match="needs 'train.augment.synthetic_ectopy'"):
        load_config(tiny_config(train={**TINY["train"], "augment": {"ectopic_p": True}}))
    two = {**TINY["model"], "params": {**TINY["model"]["params"],
                                       "channels": ["beat", "beat_minus_record_median", "lead2"]}}
    cfg = load_config(tiny_config(data=data, model=two, train={**TINY["train"], "epochs": 1,
                                  "augment": {"synthetic_ectopy": 1.0, "ectopic_p": True}}))
    with pytest.raises(ConfigError, match="ectopic_p edit one lead only"):
        train(cfg, run_dir=tmp_path / "two", data_dir=data_dir, show_progress=False, log=lambda m: None)


def test_adapt_batchnorm_uses_the_records_own_statistics(data_dir, load_benchmark):
    """ensemble_cv --adapt-bn: BatchNorm statistics become those of the record's beats, on a copy."""
    from ecgkit.checkpoint import input_spec
    from ecgkit.datasets.mitdb import reference_beats
    from ecgkit.inference import prepare_record, record_inputs
    from ecgkit.io import read_annotations, read_record
    from ecgkit.registry import create

    mod = load_benchmark("ensemble_cv")
    torch.manual_seed(0)
    model = create("encoders", "transnet", **TINY["model"]["params"], seq_len=16).eval()
    spec = input_spec(model)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]  # the stem's: input = conv output
    before = {k: v.clone() for k, v in model.state_dict().items()}
    preps = {}
    for name in ("100", "119"):
        rec = read_record(data_dir / name)
        preps[name] = prepare_record(rec, reference_beats(*read_annotations(rec.path, "atr"))[0][:160], spec)
    a = mod.adapt_batchnorm(model, preps["100"], spec)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model itself is untouched
    # the stem BatchNorm's mean is the mean of its input over the record's 160 beats (10 sequences of 16)
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    X, rr = record_inputs(preps["100"], spec)
    with torch.no_grad():
        model(X[None], rr[None])
    hook.remove()
    a_bn = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
    assert torch.allclose(a_bn.running_mean, seen[0].mean((0, 2)), atol=1e-4)
    assert not torch.allclose(a_bn.running_var, bn.running_var, rtol=0.05)   # not the stored statistics
    b = mod.adapt_batchnorm(model, preps["119"], spec)  # another patient, other statistics
    b_bn = [m for m in b.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
    assert not torch.allclose(a_bn.running_var, b_bn.running_var, rtol=0.05)
    assert not a.training and not a_bn.training


def test_absolute_rr_is_the_one_input_that_sees_the_heart_rate():
    """transnet without absolute_rr reads RR as ratios only: the same rhythm at half the rate gives the same
    classes' logits; with it, the local rate is an input (and nothing else changes for a rhythm at 60 bpm)."""
    from ecgkit.registry import create

    torch.manual_seed(0)
    x, rr = torch.randn(2, 6, 2, 144), 0.5 + torch.rand(2, 6, 4)
    for absolute in (False, True):
        torch.manual_seed(1)
        m = create("encoders", "transnet", d_model=32, n_layers=1, block_channels=[16, 16], absolute_rr=absolute)
        m.eval()
        with torch.no_grad():
            a, b = m(x, rr), m(x, 2 * rr)
        assert torch.allclose(a, b, atol=1e-5) != absolute
    extra = m.ctx_embed.mlp[0].weight[:, -1]            # the rate's input column, last
    with torch.no_grad():
        one = rr.clone()
        one[..., 2] = 1.0                                 # local mean RR 1 s: log rate 0
        m.ctx_embed.mlp[0].weight[:, -1] = 0.0
        zeroed = m(x, one)
        m.ctx_embed.mlp[0].weight[:, -1] = extra
        assert torch.allclose(m(x, one), zeroed)


def test_record_rr_off_reads_no_record_mean():
    """transnet record_rr=False: the record mean RR (column 3) is not an input, so changing it changes no
    logit, while changing it does with the default (record_rr=True). A steady stretch of beats then looks
    the same whatever the rest of the record's rate; prematurity against the local rhythm still counts."""
    from ecgkit.registry import create

    torch.manual_seed(0)
    x, rr = torch.randn(2, 6, 2, 144), 0.5 + torch.rand(2, 6, 4)
    longer = rr.clone()
    longer[..., 3] *= 1.3                                 # the rest of the record slower (2:1 stretches)
    premature = rr.clone()
    premature[:, 3, 0] *= 0.6                             # beat 3 early against its local rhythm
    for record_rr in (True, False):
        torch.manual_seed(1)
        m = create("encoders", "transnet", d_model=32, n_layers=1, block_channels=[16, 16], record_rr=record_rr)
        m.eval()
        assert m.ctx_embed.mlp[0].in_features == (6 if record_rr else 3) + 5
        with torch.no_grad():
            a, b, c = m(x, rr), m(x, longer), m(x, premature)
        assert torch.allclose(a, b, atol=1e-6) != record_rr
        assert not torch.allclose(a, c, atol=1e-4)


def test_shape_head_loss_scores_n_s_v_by_the_token_alone():
    """transnet shape_head: weight x BCE(V vs N/S) of a head on the morphology token; F, Q, unlabelled not scored."""
    import torch.nn.functional as F

    from ecgkit.registry import create

    torch.manual_seed(0)
    m = create("encoders", "transnet", d_model=32, n_layers=1, block_channels=[16, 16], shape_head=0.5)
    x, rr = torch.randn(2, 6, 2, 144), 0.5 + torch.rand(2, 6, 4)
    y = torch.tensor([[0, 1, 2, 3, 4, -1], [2, 2, 0, 0, 1, 3]])  # N S V F Q unlabelled
    m.train()
    m(x, rr)
    loss = m.auxiliary_loss(y)
    keep = (y >= 0) & (y <= 2)
    want = 0.5 * F.binary_cross_entropy_with_logits(m._shape_logit[keep], (y[keep] == 2).float())
    assert torch.allclose(loss, want)
    y2 = y.clone()
    y2[y2 >= 3] = 0  # F / Q / unlabelled relabelled N: now scored, so the loss changes
    assert not torch.allclose(m.auxiliary_loss(y2), loss)
    m.zero_grad()
    loss.backward()
    assert m.tokenizer.proj.weight.grad.abs().sum() > 0   # it trains the tokenizer ...
    assert m.head.weight.grad is None                     # ... and nothing after the token
    m.eval()
    with torch.no_grad():
        out = m(x, rr)
    assert m.auxiliary_loss(y).item() == 0.0               # no auxiliary output at inference
    m0 = create("encoders", "transnet", d_model=32, n_layers=1, block_channels=[16, 16])
    m0.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("shape_head")})
    m0.eval()
    with torch.no_grad():
        assert torch.equal(m0(x, rr), out)                  # the head changes nothing the classifier computes


def test_shape_head_trains_and_is_off_at_zero(data_dir, tiny_config, tmp_path):
    """model.params.shape_head: 0 leaves training bit-identical; > 0 changes the weights through the training loop."""
    from ecgkit.train import train

    data = {**TINY["data"], "val": []}
    runs = {}
    for name, extra in (("off", {}), ("zero", {"shape_head": 0.0}), ("on", {"shape_head": 1.0})):
        model = {**TINY["model"], "params": {**TINY["model"]["params"], **extra}}
        cfg = load_config(tiny_config(data=data, model=model, train={**TINY["train"], "epochs": 1}))
        runs[name] = _weights(train(cfg, run_dir=tmp_path / name, data_dir=data_dir, show_progress=False,
                                    log=lambda m: None))
    assert runs["off"].keys() == runs["zero"].keys()
    assert all(torch.equal(runs["off"][k], runs["zero"][k]) for k in runs["off"])
    assert {k for k in runs["on"] if k.startswith("shape_head")} == {"shape_head.weight", "shape_head.bias"}
    assert any(not torch.equal(runs["off"][k], runs["on"][k]) for k in runs["off"] if runs["off"][k].is_floating_point())


def test_shape_head_weight_must_not_be_negative():
    from ecgkit.errors import ConfigError
    from ecgkit.registry import create

    with pytest.raises(ConfigError, match="shape_head"):
        create("encoders", "transnet", shape_head=-0.5)
    with pytest.raises(ConfigError, match="shape_head needs classes N, S and V"):
        create("encoders", "transnet", shape_head=0.5, classes=["N", "S", "F"], n_classes=3)


def test_class_weights_from_augmented_labels_count_synthetic_s_and_leave_training_draws(data_dir, tiny_config,
                                                                                          tmp_path):
    """class_weight_labels: augmented counts the synthetic S beats (lower S weight) from a stream of its own."""
    from ecgkit.checkpoint import input_spec
    from ecgkit.registry import create
    from ecgkit.datasets import resolve_records
    from ecgkit.train import class_weights, load_beats, train, weight_labels

    aug = {"synthetic_ectopy": 1.0}
    cfg = load_config(tiny_config(train={**TINY["train"], "augment": aug}))
    spec = input_spec(create("encoders", "transnet", **TINY["model"]["params"]))
    fit = load_beats(resolve_records(["101", "106"], data_dir), cfg, spec, 4)
    names = sorted(fit)
    y_rec = weight_labels(fit, names, cfg.train, spec, 4, cfg.seed)
    assert np.array_equal(y_rec, np.concatenate([fit[n]["y"] for n in names]))
    cfg.train.class_weight_labels = "augmented"
    y_aug = weight_labels(fit, names, cfg.train, spec, 4, cfg.seed)
    assert np.array_equal(y_aug, weight_labels(fit, names, cfg.train, spec, 4, cfg.seed))  # seeded
    assert (y_aug == 1).mean() > 5 * (y_rec == 1).mean()          # the synthetic ectopy's S beats are counted
    w_rec, w_aug = class_weights(y_rec, 5, 0.5, 10.0), class_weights(y_aug, 5, 0.5, 10.0)
    assert w_aug[1] < w_rec[1]
    # with every weight 1 (power 0) the two settings must train bit-identically: apart from the weights,
    # the count changes nothing in training (no draw from its streams, no edit of its beats)
    data = {**TINY["data"], "val": []}
    runs = {}
    for src in ("records", "augmented"):
        tr = {**TINY["train"], "epochs": 1, "augment": aug, "class_weight_power": 0.0, "class_weight_labels": src}
        c = load_config(tiny_config(data=data, train=tr))
        runs[src] = _weights(train(c, run_dir=tmp_path / src, data_dir=data_dir, show_progress=False,
                                   log=lambda m: None))
    assert all(torch.equal(runs["records"][k], runs["augmented"][k]) for k in runs["records"])


def test_class_weight_labels_is_validated(tiny_config):
    with pytest.raises(ConfigError, match="class_weight_labels"):
        load_config(tiny_config(train={**TINY["train"], "class_weight_labels": "synthetic"}))


def test_prev_rr_reads_the_step_from_the_interval_before():
    """transnet prev_rr=True: one more input, log(pre-RR / the previous beat's pre-RR), 0 for the first beat.

    A steady rhythm gives every beat a step of 0, so that input column cannot matter there; an abrupt
    premature beat gives it a negative step (and the beat after it a positive one), so it does.
    """
    from ecgkit.registry import create
    from ecgkit_transnet.model import ContextFeatures

    rr = torch.tensor([[[0.8, 0.8, 0.8, 0.8], [0.8, 0.5, 0.8, 0.8], [0.5, 1.1, 0.8, 0.8], [1.1, 0.8, 0.8, 0.8]]])
    step = ContextFeatures.step_feature(rr)[0, :, 0]
    torch.testing.assert_close(step, torch.log(torch.tensor([1.0, 1.0, 0.5 / 0.8, 1.1 / 0.5])))
    torch.manual_seed(0)
    x = torch.randn(1, 4, 2, 144)
    kw = dict(d_model=32, n_layers=1, block_channels=[16, 16])
    base = create("encoders", "transnet", **kw)
    m = create("encoders", "transnet", prev_rr=True, **kw)
    assert m.ctx_embed.mlp[0].in_features == base.ctx_embed.mlp[0].in_features + 1
    m.eval()
    steady = torch.full((1, 4, 4), 0.8)
    with torch.no_grad():
        a_steady, a_abrupt = m(x, steady), m(x, rr)
        m.ctx_embed.mlp[0].weight[:, -1] = 0.0            # the step's input column, last
        assert torch.allclose(m(x, steady), a_steady, atol=1e-6)
        assert not torch.allclose(m(x, rr), a_abrupt, atol=1e-4)


def test_rr_irregularity_separates_fibrillation_from_isolated_ectopy():
    """transnet rr_irregularity=True: the median |step| over ten beats is high in an irregular rhythm, stays at
    the sinus level when one beat in ten is premature (two large steps of ten), and adds one input."""
    from ecgkit.registry import create
    from ecgkit_transnet.model import ContextFeatures

    def feature(pre):
        pre = torch.tensor(pre, dtype=torch.float32)
        return ContextFeatures.irregularity_feature(pre[None, :, None].expand(1, -1, 4).contiguous())[0, :, 0]

    g = torch.Generator().manual_seed(0)
    sinus = [0.8] * 40
    ectopy = [0.8] * 40
    for i in range(5, 40, 10):
        ectopy[i], ectopy[i + 1] = 0.5, 1.1               # a PAC and its pause
    af = (0.7 * torch.exp(0.25 * torch.randn(40, generator=g))).tolist()
    s, e, a = feature(sinus), feature(ectopy), feature(af)
    assert torch.allclose(s, e)                            # isolated ectopy leaves the median at the sinus level
    assert (a[10:] > s[10:] + 1.5).all()                   # AF is far above it (log scale)
    kw = dict(d_model=32, n_layers=1, block_channels=[16, 16], prev_rr=True)
    assert (create("encoders", "transnet", rr_irregularity=True, **kw).ctx_embed.mlp[0].in_features
            == create("encoders", "transnet", **kw).ctx_embed.mlp[0].in_features + 1)
