"""A model that reads the record's second lead: reading, cutting, augmenting, training, refusing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import wfdb
import yaml

from ecgkit.config import AugmentConfig, load_config
from ecgkit.errors import ConfigError, RecordError
from ecgkit.inference import make_channels, predict_log_proba, prepare_record, second_lead, uses_second_lead
from ecgkit.io import Record, read_record
from ecgkit.registry import create
from ecgkit.segment import labelled_peaks

TWO = ["beat", "beat_minus_record_median", "lead2", "lead2_minus_record_median"]
SMALL = {"d_model": 32, "n_layers": 1, "block_channels": [16, 16]}


def _spec(channels=TWO):
    return create("encoders", "transnet", channels=channels, **SMALL).input_spec


def test_read_record_keeps_the_other_leads_exactly(data_dir):
    ref = wfdb.rdrecord(str(data_dir / "100"))  # MLII, V5
    rec = read_record(data_dir / "100")
    assert rec.lead == "MLII" and list(rec.others) == ["V5"]
    np.testing.assert_array_equal(rec.others["V5"], ref.p_signal[:, 1])
    other = read_record(data_dir / "100", lead="V5")
    assert other.lead == "V5" and list(other.others) == ["MLII"]
    np.testing.assert_array_equal(other.others["MLII"], ref.p_signal[:, 0])
    # record 114 stores MLII second: MLII is still the chosen lead, V5 the other
    r114 = read_record(data_dir / "114")
    assert r114.lead == "MLII" and list(r114.others) == ["V5"]
    np.testing.assert_array_equal(r114.others["V5"], wfdb.rdrecord(str(data_dir / "114"), channels=[0]).p_signal[:, 0])


def test_other_leads_are_cleaned_like_the_first_and_empty_ones_left_out(tmp_path):
    # digital samples in uV; -32768 is format 16's "invalid sample" (wfdb reads it as NaN); lead III has no valid one
    d = np.array([[0, 1000, -32768], [1000, -32768, -32768], [2000, 3000, -32768], [3000, 4000, -32768]])
    wfdb.wrsamp("tiny", fs=250, units=["uV", "uV", "uV"], sig_name=["I", "II", "III"], d_signal=d,
                adc_gain=[1.0, 1.0, 1.0], baseline=[0, 0, 0], fmt=["16", "16", "16"], write_dir=str(tmp_path))
    rec = read_record(tmp_path / "tiny")
    assert rec.lead == "I" and list(rec.others) == ["II"]  # III has no valid sample
    np.testing.assert_allclose(rec.others["II"], [1.0, 2.0, 3.0, 4.0], atol=1e-3)  # mV, NaN interpolated
    assert second_lead(rec)[0] == "II"
    with pytest.raises(RecordError, match="only I"):
        second_lead(Record(np.zeros(10), 250.0, "I", "one", ""))


def test_prepare_record_cuts_the_second_lead_like_the_first(data_dir):
    rec = read_record(data_dir / "100")
    peaks, _ = labelled_peaks(rec, create("segmenters", "reference"))
    one, two = _spec(["beat", "beat_minus_record_median"]), _spec()
    assert not uses_second_lead(one) and uses_second_lead(two)
    p1, p2 = prepare_record(rec, peaks, one, margin=4), prepare_record(rec, peaks, two, margin=4)
    assert "W2" not in p1
    for k in ("W", "med", "rr"):
        np.testing.assert_array_equal(p1[k], p2[k])  # the first lead is untouched
    v5 = prepare_record(read_record(data_dir / "100", lead="V5"), peaks, one, margin=4)
    np.testing.assert_array_equal(p2["W2"], v5["W"])  # the second lead: V5, prepared exactly as a first lead
    np.testing.assert_array_equal(p2["med2"], v5["med"])
    assert not np.allclose(p2["W2"], p2["W"])


def test_make_channels_crops_both_leads_with_the_same_shift():
    g = torch.Generator().manual_seed(0)
    B, T, m, S = 2, 5, 3, 10
    W, W2 = torch.randn(B, T, S + 2 * m, generator=g), torch.randn(B, T, S + 2 * m, generator=g)
    med, med2 = torch.randn(B, S + 2 * m, generator=g), torch.randn(B, S + 2 * m, generator=g)
    shift = torch.randint(0, 2 * m + 1, (B, T), generator=g)
    x = make_channels(W, med, TWO, m, S, shift, lead2=(W2, med2))
    assert x.shape == (B, T, 4, S)
    b, t = 1, 3
    s = int(shift[b, t])
    torch.testing.assert_close(x[b, t, 0], W[b, t, s:s + S])
    torch.testing.assert_close(x[b, t, 2], W2[b, t, s:s + S])
    torch.testing.assert_close(x[b, t, 3], W2[b, t, s:s + S] - med2[b, m:m + S])
    with pytest.raises(ValueError, match="second lead"):
        make_channels(W, med, TWO, m, S, shift)


def test_augment_gives_the_second_lead_the_same_stretch_and_shift_but_its_own_noise():
    from ecgkit.train import augment

    g0 = torch.Generator().manual_seed(0)
    B, T, L, m = 3, 6, 40, 4
    W, med, rr = torch.randn(B, T, L, generator=g0), torch.randn(B, L, generator=g0), torch.rand(B, T, 4, generator=g0) + 0.5
    full = AugmentConfig(stretch=0.12, shift_samples=4)
    # the first lead's draws are unchanged by a second lead (they come first)
    a = augment(W, med, rr, torch.Generator().manual_seed(1), full, m, 16)
    b = augment(W, med, rr, torch.Generator().manual_seed(1), full, m, 16, lead2=(W.clone(), med.clone()))
    for u, v in zip(a, b[:4]):
        torch.testing.assert_close(u, v)
    assert not torch.allclose(b[4][0], b[0])  # own gain and noise
    # warp and shift only: an identical second lead comes out identical
    geo = AugmentConfig(amplitude=1.0, amplitude_beat=0, baseline=0, gaussian=0, emg=0, stretch=0.12,
                        shift_samples=4, rr_jitter=0)
    W1, med1, _, _, (W2, med2) = augment(W, med, rr, torch.Generator().manual_seed(2), geo, m, 16,
                                         lead2=(W.clone(), med.clone()))
    torch.testing.assert_close(W2, W1)
    torch.testing.assert_close(med2, med1)
    assert not torch.allclose(W1, W)


def test_fibrillatory_p_reaches_the_second_lead(data_dir, tmp_path):
    from ecgkit.train import training_batch

    spec = _spec()
    rec = read_record(data_dir / "100")
    peaks, y = labelled_peaks(rec, create("segmenters", "reference"))
    fit = {"100": {**prepare_record(rec, peaks, spec, margin=4), "y": y}}
    quiet = {"amplitude": 1.0, "amplitude_beat": 0, "baseline": 0, "gaussian": 0, "emg": 0, "shift_samples": 4,
             "rr_jitter": 0, "synthetic_af": 1.0}
    out = {}
    for fib in (False, True):
        p = tmp_path / f"c{fib}.yaml"
        p.write_text(yaml.safe_dump({"model": {"name": "transnet"},
                                     "train": {"seq_len": 32, "batch_size": 4,
                                               "augment": {**quiet, "af_fibrillatory_p": fib}}}))
        tc = load_config(p).train
        out[fib] = training_batch(fit, ["100"], tc, spec, 4, torch.Generator().manual_seed(0))
    W2_plain, W2_fib = out[False][5][0], out[True][5][0]
    r = 4 + spec["before_samples"]
    p_wave = slice(r - round(0.30 * spec["fs_hz"]), r - round(0.10 * spec["fs_hz"]))
    after_r = slice(r + 10, r + 40)
    torch.testing.assert_close(W2_fib[..., after_r], W2_plain[..., after_r])  # only the P segment changes
    assert (W2_fib[..., p_wave] - W2_plain[..., p_wave]).abs().amax() > 0.05


def test_two_lead_model_trains_evaluates_and_refuses_what_it_cannot_do(data_dir, tmp_path):
    from ecgkit.evaluate import evaluate
    from ecgkit.train import train

    cfg = {"seed": 3, "run_dir": str(tmp_path / "run"),
           "data": {"train": ["101", "106", "118"], "val": [], "test": ["100"]},
           "model": {"name": "transnet", "params": {**SMALL, "channels": TWO}},
           "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "seq_len": 16, "threads": 1}}
    p = tmp_path / "two.yaml"
    p.write_text(yaml.safe_dump(cfg))
    best = train(load_config(p), data_dir=data_dir, show_progress=False, log=lambda m: None)
    from ecgkit.checkpoint import load_model

    model, ck = load_model(str(best))
    assert ck["input_spec"]["channels"] == TWO
    rep = evaluate(str(best), ["100"], data_dir, "reference", None, tmp_path / "eval")
    assert rep["n_beats"] == 2273 and (tmp_path / "eval" / "report.json").is_file()
    # the model reads the second lead: its output moves when only that lead does
    rec = read_record(data_dir / "100")
    peaks, _ = labelled_peaks(rec, create("segmenters", "reference"))
    rec_flip = Record(rec.signal, rec.fs, rec.lead, rec.name, rec.path, others={"V5": -rec.others["V5"]})
    lp = predict_log_proba(model, prepare_record(rec, peaks[:300], ck["input_spec"]), ck["input_spec"])
    lp_flip = predict_log_proba(model, prepare_record(rec_flip, peaks[:300], ck["input_spec"]), ck["input_spec"])
    assert not np.allclose(lp, lp_flip)
    # augmentations that edit one lead only are refused before any loading
    cfg["train"]["augment"] = {"synthetic_ectopy": 0.3, "ventricular_ectopy": 0.3}
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="one lead only"):
        train(load_config(p), data_dir=data_dir, show_progress=False, log=lambda m: None)


def test_annotating_a_one_lead_record_with_a_two_lead_model_is_a_one_line_error(data_dir, tmp_path):
    from click.testing import CliRunner

    from ecgkit.checkpoint import save_checkpoint
    from ecgkit.cli import cli

    model = create("encoders", "transnet", channels=TWO, **SMALL)
    ck = save_checkpoint(tmp_path / "two.pt", model, encoder="transnet", params={**SMALL, "channels": TWO})
    x = read_record(data_dir / "100").signal[:360 * 20]
    wfdb.wrsamp("one", fs=360, units=["mV"], sig_name=["MLII"], p_signal=x[:, None], fmt=["16"],
                write_dir=str(tmp_path))
    out = tmp_path / "ann"
    res = CliRunner().invoke(cli, ["annotate", str(tmp_path / "one"), "--model", str(ck), "--out", str(out)])
    assert res.exit_code != 0
    assert "second lead" in res.output and len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output
    assert not out.exists() or not list(out.glob("one.*"))


def test_transnet_computes_its_shape_scalars_on_each_leads_pair():
    one = create("encoders", "transnet", **SMALL)
    two = create("encoders", "transnet", channels=TWO, **SMALL)
    assert one.ctx_embed.pairs == [(0, 1)] and one.ctx_embed.mlp[0].in_features == 6 + 5
    assert two.ctx_embed.pairs == [(0, 1), (2, 3)] and two.ctx_embed.mlp[0].in_features == 6 + 2 * 5
    x = torch.randn(2, 8, 4, 144, generator=torch.Generator().manual_seed(0))
    swapped = x[:, :, [2, 3, 0, 1]]  # the lead-2 scalars of x are the lead-1 scalars of the swapped input
    torch.testing.assert_close(two.ctx_embed.morph_features(x, 2, 3), two.ctx_embed.morph_features(swapped, 0, 1))
    assert not torch.allclose(two.ctx_embed.morph_features(x, 2, 3), two.ctx_embed.morph_features(x, 0, 1))


@pytest.mark.parametrize("command", ["train", "run"])
def test_an_unknown_input_channel_is_a_one_line_config_error(data_dir, tmp_path, command):
    from click.testing import CliRunner

    from ecgkit.cli import cli

    cfg = {"seed": 0, "run_dir": str(tmp_path / "run"), "stages": ["train"],
           "data": {"train": ["101", "106"], "val": [], "test": ["100"]},
           "model": {"name": "transnet", "params": {**SMALL, "channels": ["beat", "lead3"]}},
           "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "seq_len": 8, "threads": 1}}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    args = ["train", "--config", str(p)] if command == "train" else ["run", str(p)]
    res = CliRunner().invoke(cli, args + ["--data", str(data_dir)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "unknown input channel 'lead3'" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "best.pt").exists()
