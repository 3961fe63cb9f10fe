"""Windows cut at the next beat (``model.params.cut_next_s``) and the blocked P waves of 2:1 AV block.

A wide window that stops before the next QRS shows the next P wave; in 2:1 block it shows a P
wave with no QRS after it. The model does the cut from the post-RR it is given, so training must
make the stored windows agree with every rewritten interval (``hide_next_beat``); the DS1 block
check can draw the blocked P waves (``rhythm_stress.py --block --blocked-p``). Built on real
records of the local MIT-BIH copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgkit.errors import ConfigError
from ecgkit.registry import create
from ecgkit.train import P_ONSET_S, hide_next_beat, synthetic_block

FS, BEFORE, AFTER, CUT = 180.0, 64, 160, 0.10
WIDE = {"before": BEFORE, "after": AFTER, "cut_next_s": CUT}


@pytest.fixture(scope="module")
def record_100(data_dir):
    """Record 100 (sinus rhythm) prepared with a wide window and margin 4: (prep dict, labels)."""
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.segment import labelled_peaks

    model = create("encoders", "transnet", **WIDE)
    rec = read_record(str(data_dir / "100"))
    peaks, y = labelled_peaks(rec, create("segmenters", "reference"))
    return prepare_record(rec, peaks, model.input_spec, margin=4), y, model


def test_the_factory_names_the_cut_in_the_contract_and_refuses_bad_values():
    assert "cut_next_s" not in create("encoders", "transnet").input_spec  # off: the shipped contract is unchanged
    assert create("encoders", "transnet", **WIDE).input_spec["cut_next_s"] == CUT
    for bad in (-0.1, AFTER / FS):
        with pytest.raises(ConfigError, match="cut_next_s"):
            create("encoders", "transnet", before=BEFORE, after=AFTER, cut_next_s=bad)


def test_the_model_never_sees_past_the_cut_and_sees_everything_before_it(record_100):
    prep, _, model = record_100
    model.eval()
    W = torch.from_numpy(prep["W"][100:164, 4:-4])[None, :, None].repeat(1, 1, 2, 1)  # (1, 64, 2, S)
    rr = torch.from_numpy(prep["rr"][100:164])[None]
    cut = BEFORE + torch.round((rr[0, :, 1] - CUT) * FS).long()
    assert ((cut > BEFORE) & (cut < W.shape[-1])).all()  # record 100's intervals (~0.8 s) fall inside 0.89 s
    held = model.cut_next(W, rr)
    for t in (0, 17, 63):
        c = int(cut[t])
        assert torch.equal(held[0, t, :, :c], W[0, t, :, :c])
        assert (held[0, t, :, c:] == W[0, t, :, c - 1:c]).all()
    with torch.no_grad():
        ref = model(W, rr)
        after = W.clone()
        for t in range(64):
            after[0, t, :, int(cut[t]):] += 5.0        # the next beat's QRS, however large, is not seen
        assert torch.allclose(model(after, rr), ref, atol=1e-5)
        before = W.clone()
        before[0, 17, :, int(cut[17]) - 5] += 5.0      # a sample just before the cut is
        assert not torch.allclose(model(before, rr), ref, atol=1e-3)
    off = create("encoders", "transnet", before=BEFORE, after=AFTER)
    assert torch.equal(off.cut_next(W, rr), W)


def test_stored_windows_agree_with_the_cut_at_the_recorded_intervals(record_100):
    """Unchanged intervals: the training-side hold is exactly the model's own cut (idempotent together)."""
    prep, _, model = record_100
    W = torch.from_numpy(prep["W"][:128, 4:-4])[None]               # (1, T, S), R at BEFORE
    post = torch.from_numpy(prep["rr"][:128, 1])[None]
    hidden = hide_next_beat(W, post, post, BEFORE, FS, CUT)
    rr = torch.from_numpy(prep["rr"][:128])[None]
    assert torch.equal(hidden[:, :, None], model.cut_next(W[:, :, None], rr))


def _at(post, before_r):
    """Window index ``before_r`` seconds before the next R, rounded as ecgkit does (float32 seconds)."""
    return BEFORE + int(torch.round((post - before_r) * FS))


def _p_segment(W, post, t):
    a = _at(post, P_ONSET_S)
    return W[t, a:_at(post, CUT)], a


def test_a_grown_interval_moves_the_next_p_wave_and_a_blocked_one_keeps_it_too(record_100):
    prep, _, _ = record_100
    W = torch.from_numpy(prep["W"][200:210, 4:-4])                  # (10, S)
    post = torch.from_numpy(prep["rr"][200:210, 1])
    S = W.shape[-1]
    grown = post.clone()
    grown[3] = post[3] + 0.25                                        # past the P segment: the P wave moves
    grown[5] = post[5] * 2                                           # 2:1: same, but the recorded P stays
    grown[7] = post[7] * 0.8                                         # shrunk: held from the recorded cut only
    keep = torch.zeros(1, 10, dtype=torch.bool)
    keep[0, 5] = True
    out = hide_next_beat(W[None], post[None], grown[None], BEFORE, FS, CUT, keep_p=keep)[0]
    p_old, a_old = _p_segment(W, post[3], 3)
    a_new = _at(grown[3], P_ONSET_S)
    moved = out[3, a_new:a_new + len(p_old)]                         # as much of it as the window holds
    assert len(moved) > 10 and torch.equal(moved, p_old[:len(moved)])  # the recorded P segment, at the new place
    assert (out[3, a_old:a_new] == W[3, a_old - 1]).all()            # where it was: the baseline before it
    assert torch.equal(out[3, :a_old], W[3, :a_old])
    kept, a5 = _p_segment(out, post[5], 5)
    assert torch.equal(kept, _p_segment(W, post[5], 5)[0])           # the blocked P wave stays in place
    c5 = a5 + kept.shape[0]
    a5_new = _at(grown[5], P_ONSET_S)
    assert a5_new >= S and (out[5, c5:] == W[5, c5 - 1]).all()       # the conducted one lies beyond the window
    c7 = _at(post[7], CUT)
    assert torch.equal(out[7, :c7], W[7, :c7]) and (out[7, c7:] == W[7, c7 - 1]).all()
    no_p = torch.ones(1, 10, dtype=torch.bool)                       # AF: the next P wave goes everywhere
    af = hide_next_beat(W[None], post[None], post[None], BEFORE, FS, CUT, no_p=no_p)[0]
    a0 = _at(post[0], P_ONSET_S)
    assert torch.equal(af[0, :a0], W[0, :a0]) and (af[0, a0:] == W[0, a0 - 1]).all()


def test_synthetic_block_marks_exactly_its_doubled_intervals(record_100):
    prep, y, _ = record_100
    rr = torch.from_numpy(np.stack([prep["rr"][i:i + 128] for i in (0, 300, 600, 900)]))
    labels = torch.zeros(4, 128, dtype=torch.long)
    out, sel, two = synthetic_block(rr.clone(), labels, torch.Generator().manual_seed(0), 1.0, doubled=True)
    assert sel.all() and two.any() and (~two).any()
    m = rr[:, :, 0].median(1).values[:, None]
    ratio = out[:, :, 1] / m                                         # post-RR against the patient's rate
    assert (ratio[two] > 1.8).all() and (ratio[~two] < 1.2).all()
    same, _ = synthetic_block(rr.clone(), labels, torch.Generator().manual_seed(0), 1.0)  # the old two-value form
    assert torch.equal(same, out)


def test_training_batches_hide_the_next_beat_where_the_rhythm_moved_it(record_100, tmp_path):
    import yaml

    from ecgkit.config import load_config
    from ecgkit.train import sample_batch, training_batch

    prep, y, model = record_100
    spec = model.input_spec
    fit = {"100": {**prep, "y": y}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"seq_len": 64, "batch_size": 8, "augment": {
        "amplitude": 1.0, "amplitude_beat": 0, "baseline": 0, "gaussian": 0, "emg": 0, "stretch": 0,
        "rr_jitter": 0.03, "synthetic_block": 1.0}}}))
    tc = load_config(p).train
    W, _, rr, _, _, _ = training_batch(fit, ["100"], tc, spec, 4, torch.Generator().manual_seed(1))
    rec = sample_batch(fit, ["100"], 64, 8, torch.Generator().manual_seed(1))
    r = 4 + BEFORE
    # with a cut, no sequence-wide rate scale: against the plain batch (same draws) post-RR differs by one
    # factor per sequence, the scale the plain batch applied
    W_plain, _, rr_plain, _, _, _ = training_batch(fit, ["100"], tc, {k: v for k, v in spec.items()
                                                                       if k != "cut_next_s"}, 4,
                                                   torch.Generator().manual_seed(1))
    ratio = rr[..., 1] / rr_plain[..., 1]
    assert not torch.allclose(ratio, torch.ones_like(ratio))         # the plain batch was rescaled ...
    assert torch.allclose(ratio / ratio[:, :1], torch.ones_like(ratio))  # ... by one factor per sequence
    assert torch.equal(W_plain, rec[0])                               # without a cut the windows stay as stored
    # every stored window is held from its recorded cut on: the next QRS never shows where the rhythm moved it
    c_old = (r + torch.round((rec[2][..., 1] - CUT) * FS)).long()
    inside = c_old < W.shape[-1]
    c_old = c_old.clamp(max=W.shape[-1])
    held = W.gather(2, (c_old - 1)[..., None])
    flat = ((W == held) | (torch.arange(W.shape[-1]) < c_old[..., None])).all(-1)
    doubled = rr[..., 1] > 1.8 * rec[2][..., 1]                       # 2:1 intervals: their P waves are blocked
    assert inside.float().mean() > 0.5 and (doubled & inside).any() and (~doubled & inside).any()
    assert flat.all()                                                 # (their conducted P lies past the window)
    before_cut = torch.arange(W.shape[-1]) < c_old[..., None]
    assert torch.equal(W[before_cut], rec[0][before_cut])            # up to it, as recorded (in a 2:1
                                                                      # interval: the blocked P wave stays)


def test_training_batches_remove_the_next_p_wave_in_synthetic_af(record_100, tmp_path):
    import yaml

    from ecgkit.config import load_config
    from ecgkit.train import sample_batch, training_batch

    prep, y, model = record_100
    fit = {"100": {**prep, "y": y}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"seq_len": 64, "batch_size": 8, "augment": {
        "amplitude": 1.0, "amplitude_beat": 0, "baseline": 0, "gaussian": 0, "emg": 0, "stretch": 0,
        "rr_jitter": 0, "synthetic_af": 1.0, "af_fibrillatory_p": False}}}))
    W, _, rr, _, _, _ = training_batch(fit, ["100"], load_config(p).train, model.input_spec, 4,
                                       torch.Generator().manual_seed(1))
    rec = sample_batch(fit, ["100"], 64, 8, torch.Generator().manual_seed(1))
    af = (rr[..., 1] != rec[2][..., 1]).any(-1)                       # the sequences put into AF
    assert af.any()
    r = 4 + BEFORE
    a_old = r + torch.round((rec[2][..., 1] - P_ONSET_S) * FS).long()
    c_old = r + torch.round((rec[2][..., 1] - CUT) * FS).long()
    start = torch.minimum(a_old.clamp(min=r + round(0.2 * FS)), c_old).clamp(max=W.shape[-1])[af]
    j = torch.arange(W.shape[-1])
    Wa = W[af]
    held = Wa.gather(2, (start - 1)[..., None])
    assert ((Wa == held) | (j < start[..., None])).all()             # from the recorded P onset on: flat
    assert torch.equal(Wa[j < start[..., None]], rec[0][af][j < start[..., None]])


def test_the_block_check_draws_each_blocked_p_wave_half_way(data_dir):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import rhythm_stress as rs

    from ecgkit.io import read_annotations, read_record

    path = str(data_dir / "115")
    peaks, cls = rs.reference_beats(*read_annotations(path, "atr"))
    labels = np.array(rs.AAMI_CLASSES)[cls]
    rec = read_record(path)
    x = rs.source_signal(rec)
    plain, pk, blocked = rs.block_record(rec, peaks, labels, 300, np.random.default_rng(0), x)
    drawn, pk2, blocked2 = rs.block_record(rec, peaks, labels, 300, np.random.default_rng(0), x, blocked_p=True)
    assert np.array_equal(pk, pk2) and np.array_equal(blocked, blocked2) and drawn.name == plain.name
    added = drawn.signal - plain.signal
    a, b = round(rs.P_FROM_S * rec.fs), round(rs.P_TO_S * rec.fs)
    i = int(np.flatnonzero(blocked[1:])[3]) + 1
    t0 = int(pk[i]) - a - round((pk[i] - pk[i - 1]) / 2)
    wave = added[t0:t0 + a - b]
    own_p = plain.signal[pk[i] - a:pk[i] - b]                       # the conducted beat's P segment
    assert np.corrcoef(wave, own_p - np.linspace(own_p[0], own_p[-1], a - b))[0, 1] > 0.95
    assert np.ptp(wave) > 0.05                                        # a visible wave (mV)
    untouched = np.ones(len(added), bool)
    for k in np.flatnonzero(blocked[1:]) + 1:
        s = int(pk[k]) - a - round((pk[k] - pk[k - 1]) / 2)
        untouched[max(s, 0):s + a - b] = False
    assert np.all(added[untouched] == 0) and np.all(np.isfinite(drawn.signal))
    lead2 = next(iter(drawn.others))                                  # the second lead gets its own P waves
    added2 = drawn.others[lead2] - plain.others[lead2]
    assert np.all(added2[untouched] == 0) and np.ptp(added2[t0:t0 + a - b]) > 0
