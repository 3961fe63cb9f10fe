"""Beat marks re-centred on the model signal's own peak before the windows are cut (``recentre_samples``).

An inference-time step of the model's input contract, adopted by a DS1 rule
(examples/ablations/recentring.md): two segmenters that mark one beat a sample or two apart
must hand the model the same window.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgkit.errors import ConfigError
from ecgkit.inference import RECENTRE_SAMPLES, check_channels, model_signal, prepare_record, recentre_beats
from ecgkit.io import read_annotations, read_record
from ecgkit.registry import create

SPEC = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80, "channels": ["beat"],
        "classes": ["N", "S", "V", "F", "Q"]}


@pytest.fixture(scope="module")
def ecv():
    spec = importlib.util.spec_from_file_location(
        "ensemble_cv", Path(__file__).parents[1] / "benchmarks" / "ensemble_cv.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_marks_move_to_the_largest_magnitude_within_the_radius():
    x = np.zeros(100)
    x[20], x[50], x[53], x[90] = 1.0, -2.0, 1.5, 0.5      # an inverted peak at 50 outweighs an upright one
    pos = np.array([19, 22, 48, 52, 55, 97])
    np.testing.assert_array_equal(recentre_beats(x, pos, 2), [20, 20, 50, 50, 53, 97])
    np.testing.assert_array_equal(recentre_beats(x, pos, 3), [20, 20, 50, 50, 53, 97])
    np.testing.assert_array_equal(recentre_beats(x, pos, 0), pos)          # off
    np.testing.assert_array_equal(recentre_beats(x, np.array([0, 99]), 3), [0, 99])   # inside the signal
    flat = np.zeros(10)
    np.testing.assert_array_equal(recentre_beats(flat, np.array([5]), 2), [5])        # nothing larger: stays
    two = np.array([0, 1.0, 0, 0, 0, 1.0, 0])
    np.testing.assert_array_equal(recentre_beats(two, np.array([3]), 2), [1])         # a tie: the earlier one
    assert recentre_beats(x, np.array([], np.int64), 2).size == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_the_contract_key_is_a_count(bad):
    with pytest.raises(ConfigError, match=RECENTRE_SAMPLES):
        check_channels({**SPEC, RECENTRE_SAMPLES: bad})
    check_channels({**SPEC, RECENTRE_SAMPLES: 2})


def test_both_segmenters_give_a_real_beat_the_same_window(data_dir):
    """Record 208 (many V beats): reference and Pan-Tompkins marks of the same beats mostly fall on
    different model samples; re-centred, most of them get one window."""
    rec = read_record(data_dir / "208")
    from ecgkit.evaluate import match_to_reference
    from ecgkit.segment import detect_beats

    ref = detect_beats(create("segmenters", "reference"), rec)
    pt = detect_beats(create("segmenters", "pan-tompkins"), rec)
    best = match_to_reference(ref, pt, np.arange(pt.size), int(0.15 * rec.fs))[0]
    a, b = ref[best >= 0], pt[best[best >= 0]]
    x = model_signal(rec, SPEC)
    on = {**SPEC, RECENTRE_SAMPLES: 2}
    same = {}
    for name, spec in (("off", SPEC), ("on", on)):
        pa, pb = prepare_record(rec, a, spec, signal=x), prepare_record(rec, b, spec, signal=x)
        same[name] = (pa["W"] == pb["W"]).all(1).mean()
    assert same["off"] < 0.7 and same["on"] > 0.85, same     # measured: 59 % and 89 %
    # each window is centred on the largest |x| within 2 samples of its mark
    W = prepare_record(rec, a, on, signal=x)["W"]
    pos = np.round(a * SPEC["fs_hz"] / rec.fs).astype(np.int64)
    near = np.abs(x[pos[:, None] + np.arange(-2, 3)]).max(1)
    np.testing.assert_allclose(np.abs(W[:, SPEC["before_samples"]]), near, rtol=1e-6)
    # the RR features are those of the moved marks
    moved = recentre_beats(x, pos, 2) * (rec.fs / SPEC["fs_hz"])
    np.testing.assert_array_equal(prepare_record(rec, a, on, signal=x)["rr"],
                                  prepare_record(rec, moved, SPEC, signal=x)["rr"])
    # recentre=False (training) cuts at the marks as given, whatever the contract says
    np.testing.assert_array_equal(prepare_record(rec, a, on, signal=x, recentre=False)["W"],
                                  prepare_record(rec, a, SPEC, signal=x)["W"])


def test_annotate_keeps_the_segmenters_marks(data_dir, tmp_path, mitdb_record):
    """Re-centring moves the model's windows, not the beats the annotation file reports."""
    from ecgkit.annotate import annotate_record
    from ecgkit.segment import detect_beats

    path = mitdb_record("100")
    rec = read_record(path)
    model = create("encoders", "transnet", stem_channels=8, block_channels=[8, 8], d_model=16, n_heads=2,
                   n_layers=1, seq_len=16).eval()
    model.input_spec[RECENTRE_SAMPLES] = 2
    detector = create("segmenters", "pan-tompkins")
    samples, symbols, _ = annotate_record(model, model.input_spec, rec, detector)
    np.testing.assert_array_equal(samples, detect_beats(detector, rec))
    assert len(symbols) == len(samples)


def test_training_writes_the_key_and_keeps_the_weights(data_dir, tmp_path):
    """``model.recentre_samples`` reaches best.pt's contract; with no validation patients the weights are those
    of training without it (the training windows are cut at the labelled marks either way)."""
    import yaml

    from ecgkit.checkpoint import read_checkpoint
    from ecgkit.config import load_config
    from ecgkit.train import train

    cfg = {"seed": 1, "data": {"train": ["101", "119"], "val": [], "test": ["100"]},
           "model": {"name": "transnet", "params": {"d_model": 16, "n_layers": 1, "block_channels": [8, 8]}},
           "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "seq_len": 16, "threads": 1}}
    p = tmp_path / "cfg.yaml"
    for r, out in ((2, "with"), (0, "without")):
        cfg["model"]["recentre_samples"], cfg["run_dir"] = r, str(tmp_path / out)
        p.write_text(yaml.safe_dump(cfg))
        train(load_config(p), data_dir=data_dir, log=lambda *_: None, show_progress=False)
    a, b = (read_checkpoint(tmp_path / d / "best.pt") for d in ("with", "without"))
    assert a["input_spec"][RECENTRE_SAMPLES] == 2 and RECENTRE_SAMPLES not in b["input_spec"]
    assert all(torch.equal(a["state_dict"][n], b["state_dict"][n]) for n in a["state_dict"])
    cfg["model"]["recentre_samples"] = -1
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="model.recentre_samples"):
        load_config(p)


def test_benchmark_sets_the_key_and_compares_calls(ecv, tmp_path, capsys):
    model = create("encoders", "transnet", stem_channels=8, block_channels=[8, 8], d_model=16, n_heads=2,
                   n_layers=1, seq_len=16)
    loaded = (model, model.input_spec, {})
    _, spec, _ = ecv.with_record_rr_stat(loaded, None, recentre=2)
    assert spec[RECENTRE_SAMPLES] == 2 and RECENTRE_SAMPLES not in model.input_spec
    with pytest.raises(SystemExit, match=RECENTRE_SAMPLES):
        ecv.with_record_rr_stat(loaded, None, recentre=-1)
    y = np.array([0, 0, 1, 2, 0, 1])
    recs = np.array(["101", "101", "101", "106", "106", "106"])
    ecv.save_calls(tmp_path / "a.npz", y, recs, np.array([0, 1, 1, 2, 0, 1]))
    ecv.save_calls(tmp_path / "b.npz", y, recs, np.array([0, 0, 1, 1, -2, 2]))
    line = ecv.compare_calls(tmp_path / "a.npz", tmp_path / "b.npz")
    # beat 4 is missed in b (-2): not counted; beats 1, 3 and 5 change class
    assert line.startswith("3 of 5 beats") and "to S in B: 1" in line and "from S in A: 2" in line
    assert "106 2, 101 1" in line
    ecv.main(["--compare", str(tmp_path / "a.npz"), str(tmp_path / "a.npz")])
    assert capsys.readouterr().out.startswith("0 of 6 beats")
    ecv.save_calls(tmp_path / "c.npz", y[:5], recs[:5], y[:5])
    with pytest.raises(SystemExit, match="different reference beats"):
        ecv.compare_calls(tmp_path / "a.npz", tmp_path / "c.npz")
    with pytest.raises(SystemExit, match="without runs"):
        ecv.main(["runs/x", "--compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    with pytest.raises(SystemExit, match="give the runs"):
        ecv.main([])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz"]   # no temp files left
