"""Label-changing RR augmentations: the synthetic rhythms must stay self-consistent.

Built on RR features of a real record (100: sinus rhythm, N beats only), so every
assertion is about what the training loop would actually feed the model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgkit.datasets.mitdb import reference_beats
from ecgkit.io import read_annotations
from ecgkit.segment import rr_features
from ecgkit.train import (SINUS_ARRHYTHMIA_MAX_STEP, synthetic_af, synthetic_block, synthetic_ectopy, synthetic_s,
                          synthetic_sinus_arrhythmia)

T = 128


@pytest.fixture(scope="module")
def batch(data_dir):
    """8 sequences of 128 consecutive beats of record 100 (6 all-N, 2 holding A beats): (rr, y)."""
    s, sym = read_annotations(str(data_dir / "100"), "atr")
    samples, labels = reference_beats(s, sym)
    rr = torch.from_numpy(rr_features(samples, 360.0))
    y = torch.from_numpy(labels.astype(np.int64))
    starts = np.arange(0, len(y) - T, 32)
    n_only = np.array([bool((y[i:i + T] == 0).all()) for i in starts])
    pick = list(starts[n_only][::3][:6]) + list(starts[~n_only][:2])  # 6 N-only sequences, 2 with A beats
    return torch.stack([rr[i:i + T] for i in pick]), torch.stack([y[i:i + T] for i in pick])


def _consistent(rr: torch.Tensor):
    """post-RR of beat t is the pre-RR of beat t+1, and the local mean is the causal 10-beat mean."""
    pre, post, loc = rr[:, 0], rr[:, 1], rr[:, 2]
    assert torch.allclose(post[:-1], pre[1:], rtol=1e-5)
    ref = rr_features(np.concatenate([[0.0], np.cumsum(pre.numpy().astype(np.float64))]) * 360.0, 360.0)
    assert np.allclose(loc.numpy()[9:], ref[10:, 2], rtol=1e-4)  # past the first 10 beats (edge rule differs)


def test_synthetic_ectopy_relabels_premature_beats_and_keeps_rr_consistent(batch):
    rr, y = batch[0].clone(), batch[1].clone()
    y[1, 5] = 2  # a V beat: that sequence is not N-only and must be left alone
    before = rr.clone()
    g = torch.Generator().manual_seed(0)
    n_only = (y == 0).all(1)
    rr2, y2, sel = synthetic_ectopy(rr, y, g, p=1.0)
    assert not sel[1] and torch.equal(rr2[1], before[1])
    assert torch.equal(sel, n_only)  # with p=1 exactly the N-only sequences change
    changed = sel.nonzero()[:, 0].tolist()
    shares = []
    for b in changed:
        s = y2[b] == 1
        assert set(y2[b].unique().tolist()) <= {0, 1}
        assert s.any() and (~s).any()
        shares.append(float(s.float().mean()))
        pre = rr2[b, :, 0]
        # every ectopic beat comes earlier than every sinus beat (prematurity u <= 0.85, jitter 3 %)
        assert pre[s].max() < pre[~s].min()
        _consistent(rr2[b])
        # the record mean follows the sequence's new mean rate
        ratio = rr2[b, 0, 3] / before[b, 0, 3]
        assert torch.isclose(ratio, pre.mean() / before[b, :, 0].mean(), rtol=1e-4)
    assert max(shares) - min(shares) > 0.1  # the ectopic share varies between sequences


def test_synthetic_ectopy_is_seeded_and_off_at_zero(batch):
    a = synthetic_ectopy(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(3), p=1.0)
    b = synthetic_ectopy(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(3), p=1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    rr, y, sel = synthetic_ectopy(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(3), p=0.0)
    assert not sel.any() and torch.equal(rr, batch[0]) and torch.equal(y, batch[1])


def _rewrite_n_only(rewrite, batch, seed: int = 0):
    """Apply a label-keeping RR rewrite at p=1: it takes exactly the N-only sequences, keeps every label and
    leaves the other sequences as they were. Returns ``(before, after, sel)``."""
    rr, y = batch[0].clone(), batch[1].clone()
    before, y_before = rr.clone(), y.clone()
    after, sel = rewrite(rr, y, torch.Generator().manual_seed(seed), p=1.0)[:2]
    assert torch.equal(sel, (y_before == 0).all(1))          # with p=1 exactly the N-only sequences
    assert torch.equal(y, y_before)                          # every beat stays N
    assert torch.equal(after[~sel], before[~sel])
    return before, after, sel


def test_synthetic_block_alternates_1_to_1_and_2_to_1_stretches_and_keeps_labels(batch):
    before, rr2, sel = _rewrite_n_only(synthetic_block, batch)
    for b in sel.nonzero()[:, 0].tolist():
        pre = rr2[b, :, 0]
        m = float(before[b, :, 0].median())
        ratio = pre / m
        two = ratio > 1.5
        # every interval is the patient's sinus interval or twice it (3 % jitter)
        assert ((ratio - 1).abs() < 0.15).logical_or((ratio - 2).abs() < 0.3).all()
        # stretches, not single beats: every inner stretch holds at least 8 beats
        edges = (two[1:] != two[:-1]).nonzero()[:, 0]
        assert len(edges) >= 1 and (torch.diff(edges) >= 8).all()
        _consistent(rr2[b])
        assert torch.isclose(rr2[b, 0, 3] / before[b, 0, 3], pre.mean() / before[b, :, 0].mean(), rtol=1e-4)
    kinds = {bool((rr2[b, :, 0] / before[b, :, 0].median() > 1.5)[0]) for b in sel.nonzero()[:, 0].tolist()}
    assert kinds == {True, False}                            # either kind of stretch comes first


def test_synthetic_block_is_seeded_and_off_at_zero(batch):
    a = synthetic_block(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(3), p=1.0)
    b = synthetic_block(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(3), p=1.0)
    assert torch.equal(a[0], b[0])
    g = torch.Generator().manual_seed(3)
    rr, sel = synthetic_block(batch[0].clone(), batch[1].clone(), g, p=0.0)
    assert not sel.any() and torch.equal(rr, batch[0])


def test_synthetic_sinus_arrhythmia_swings_the_rate_gradually_and_keeps_labels(batch):
    """Beats of the fast phase come well before the usual interval, each only a little before its predecessor."""
    before, rr2, sel = _rewrite_n_only(synthetic_sinus_arrhythmia, batch)
    deepest = []
    for b in sel.nonzero()[:, 0].tolist():
        pre = rr2[b, :, 0]
        m = float(before[b, :, 0].median())
        step = (pre[1:] - pre[:-1]).abs() / m                # beat-to-beat change, 2 % jitter on each interval
        assert float(step.max()) < SINUS_ARRHYTHMIA_MAX_STEP + 0.12
        assert float(step.median()) < SINUS_ARRHYTHMIA_MAX_STEP
        deepest.append(float(pre.min()) / m)
        _consistent(rr2[b])
        assert torch.isclose(rr2[b, 0, 3] / before[b, 0, 3], pre.mean() / before[b, :, 0].mean(), rtol=1e-4)
    assert min(deepest) < 0.88 and max(deepest) < 0.99      # a real swing, in every sequence
    # the cap, over many draws at a steady 0.8 s: no sequence's typical step reaches SINUS_ARRHYTHMIA_MAX_STEP
    # (uncapped, the deep fast swings reach about 0.19), while the deepest still come 20 % early
    steady = torch.full((64, 128, 4), 0.8)
    swung, _ = synthetic_sinus_arrhythmia(steady, torch.zeros(64, 128, dtype=torch.long),
                                          torch.Generator().manual_seed(0), p=1.0)
    typical = ((swung[:, 1:, 0] - swung[:, :-1, 0]).abs() / 0.8).median(1).values
    assert float(typical.max()) < 0.1 and float(swung[:, :, 0].amin() / 0.8) < 0.8
    again = synthetic_sinus_arrhythmia(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(again[0], rr2)
    off, none = synthetic_sinus_arrhythmia(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(0), p=0.0)
    assert not none.any() and torch.equal(off, batch[0])


def test_synthetic_s_makes_single_premature_beats(batch):
    rr, y = synthetic_s(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(1), p=0.05)
    new = (y == 1) & (batch[1] == 0)
    assert new.sum() > 10
    b, t = new.nonzero(as_tuple=True)
    u = rr[b, t, 0] / batch[0][b, t, 0]
    assert ((u >= 0.55 - 1e-5) & (u <= 0.85 + 1e-5)).all()
    assert not (new[:, 1:] & new[:, :-1]).any()  # never two neighbours
    # the neighbours' intervals agree with the edited beat's
    assert torch.allclose(rr[b, t - 1, 1], rr[b, t, 0]) and torch.allclose(rr[b, t + 1, 0], rr[b, t, 1])
    # the time taken from the pre-RR is given to the post-RR: the next beat stays where it was
    assert torch.allclose(rr[b, t, 0] + rr[b, t, 1], batch[0][b, t, 0] + batch[0][b, t, 1], rtol=1e-5)


def test_synthetic_af_keeps_labels_and_makes_rhythm_irregular(batch):
    y = batch[1].clone()
    rr, sel = synthetic_af(batch[0].clone(), y, torch.Generator().manual_seed(2), p=1.0)
    assert torch.equal(sel, (batch[1] == 1).sum(1) == 0)  # with p=1 every S-free sequence, no other
    assert torch.equal(y, batch[1]) and torch.equal(rr[~sel], batch[0][~sel])  # labels kept, others untouched
    for b in sel.nonzero()[:, 0].tolist():
        _consistent(rr[b])
        cv = lambda x: float(x.std() / x.mean())  # noqa: E731
        assert cv(rr[b, :, 0]) > 2 * cv(batch[0][b, :, 0])


def test_synthetic_af_rate_speeds_up_the_fibrillation_and_is_off_at_zero(batch):
    g0, g1 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    a, sel = synthetic_af(batch[0].clone(), batch[1].clone(), g0, p=1.0)
    b, _ = synthetic_af(batch[0].clone(), batch[1].clone(), g1, p=1.0, rate=0.0)
    assert torch.equal(a, b) and torch.equal(g0.get_state(), g1.get_state())   # rate 0: the same draws
    fast, _ = synthetic_af(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(2), p=1.0, rate=0.5)
    for i in sel.nonzero()[:, 0].tolist():
        _consistent(fast[i])
        ratio = float(fast[i, :, 0].mean() / batch[0][i, :, 2].mean())
        assert 0.4 < ratio < 1.1                                  # 1 - 0.5 U(0, 1), with the AF spread
        assert torch.equal(fast[i, :, 3], batch[0][i, :, 3])      # the record mean is left as it was
    speed = [float(fast[i, :, 0].mean() / a[i, :, 0].mean()) for i in sel.nonzero()[:, 0].tolist()]
    assert np.mean(speed) < 0.9


@pytest.mark.parametrize("stat", ["mean", "median"])
def test_rewritten_rhythms_rescale_the_record_reference_by_the_models_statistic(batch, stat):
    """synthetic_ectopy / synthetic_block treat the sequence as the record: column 3 moves by the ratio of the new
    intervals' statistic to the old ones' (the mean, or the median for a model with record_rr_stat: median)."""
    f = torch.median if stat == "median" else torch.mean
    for fn in (synthetic_ectopy, synthetic_block):
        before = batch[0].clone()
        out = fn(before.clone(), batch[1].clone(), torch.Generator().manual_seed(2), 1.0, 10, stat)
        rr2, sel = out[0], out[-1]
        assert sel.any()
        for b in sel.nonzero()[:, 0].tolist():
            want = before[b, 0, 3] * f(rr2[b, :, 0]) / f(before[b, :, 0])
            assert torch.allclose(rr2[b, :, 3], want.expand(T), rtol=1e-5)
    # the two differ where the rhythm has a minority of long intervals (2:1 stretches)
    g = lambda s: synthetic_block(batch[0].clone(), batch[1].clone(), torch.Generator().manual_seed(2), 1.0, 10, s)[0]
    assert not torch.allclose(g("mean")[..., 3], g("median")[..., 3])


def test_prepare_record_takes_the_record_reference_the_spec_names(data_dir):
    """Record 231 (2:1 AV block in stretches): the median interval is the 1:1 one, the mean about 1.17 times it."""
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record

    rec = read_record(str(data_dir / "231"))
    s, sym = read_annotations(rec.path, "atr")
    samples, _ = reference_beats(s, sym)
    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    mean = prepare_record(rec, samples, spec)["rr"]
    median = prepare_record(rec, samples, {**spec, "record_rr_stat": "median"})["rr"]
    pre = np.diff(samples) / 360.0
    assert median[0, 3] == pytest.approx(np.median(np.concatenate([[pre[0]], pre])), rel=1e-6)
    assert mean[0, 3] == pytest.approx(np.concatenate([[pre[0]], pre]).mean(), rel=1e-6)
    assert 1.1 < mean[0, 3] / median[0, 3] < 1.25
    np.testing.assert_array_equal(mean[:, :3], median[:, :3])


def test_fibrillatory_p_removes_the_p_wave_only(data_dir):
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.train import fibrillatory_p

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    rec = read_record(str(data_dir / "100"))
    s, sym = read_annotations(rec.path, "atr")
    samples, _ = reference_beats(s, sym)
    d = prepare_record(rec, samples, spec, margin=4)
    W = torch.from_numpy(d["W"][None, 100:132].copy())  # (1, 32, L), R at 68
    med = torch.from_numpy(d["med"][None].copy())
    a, b = 68 - round(0.32 * 180), 68 - round(0.07 * 180)
    W2, med2 = fibrillatory_p(W.clone(), med.clone(), torch.Generator().manual_seed(0), 68, 180.0)
    # QRS, T wave and everything outside the P segment untouched
    assert torch.equal(W2[..., b:], W[..., b:]) and torch.equal(W2[..., :a], W[..., :a])
    # the median beat's P wave (record 100: sinus rhythm, a clear P wave) is gone: it is now nearly a line
    k = torch.linspace(0, 1, b - a)
    line = med[0, a] + (med[0, b - 1] - med[0, a]) * k
    assert (med[0, a:b] - line).abs().max() > 0.2
    assert (med2[0, a:b] - line).abs().max() < 0.5 * (med[0, a:b] - line).abs().max()
    # beats get an oscillation (f-waves) that differs from beat to beat
    resid = W2[0, :, a:b] - med2[0, a:b]
    assert resid.std(1).min() > 0.01 and not torch.allclose(resid[0], resid[1], atol=1e-3)


def test_ectopic_p_reshapes_the_p_wave_of_synthetic_s_beats_only(data_dir):
    """One focus per sequence: every S beat's P-segment deviation scaled by the same factor; N beats, QRS-T,
    sequences not selected and (unless S is the majority) the median beat untouched; seeded."""
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.train import ectopic_p

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    rec = read_record(str(data_dir / "100"))
    samples, _ = reference_beats(*read_annotations(rec.path, "atr"))
    d = prepare_record(rec, samples, spec, margin=4)
    W = torch.from_numpy(np.stack([d["W"][100:132], d["W"][200:232], d["W"][300:332]]))  # (3, 32, L), R at 68
    med = torch.from_numpy(np.stack([d["med"]] * 3))
    y = torch.zeros(3, 32, dtype=torch.long)
    y[0, ::4] = 1                       # S the minority (8 of 32)
    y[1, :24] = 1                       # S the majority (24 of 32)
    y[2, ::2] = 1                       # not selected
    sel = torch.tensor([True, True, False])
    a, b = 68 - round(0.32 * 180), 68 - round(0.07 * 180)
    W2, med2 = ectopic_p(W, med, y, sel, torch.Generator().manual_seed(0), 68, 180.0)
    W3, med3 = ectopic_p(W, med, y, sel, torch.Generator().manual_seed(0), 68, 180.0)
    assert torch.equal(W2, W3) and torch.equal(med2, med3)
    assert torch.equal(W2[..., :a], W[..., :a]) and torch.equal(W2[..., b:], W[..., b:])  # outside the P segment
    assert torch.equal(W2[y == 0], W[y == 0]) and torch.equal(W2[2], W[2])                # N beats, unselected
    assert torch.equal(med2[0], med[0]) and torch.equal(med2[2], med[2])                 # minority: median kept
    k = torch.linspace(0, 1, b - a)
    mid = slice(a + 8 - a, b - 8 - a)                                                    # inside the taper

    def factors(Wx, Wo):  # per beat, the deviation from the end-to-end line, new / old (least squares)
        line = lambda x: x[..., :1] + (x[..., -1:] - x[..., :1]) * k  # noqa: E731
        dn, do = (Wx[..., a:b] - line(Wx[..., a:b]))[..., mid], (Wo[..., a:b] - line(Wo[..., a:b]))[..., mid]
        return (dn * do).sum(-1) / (do * do).sum(-1)

    for s in (0, 1):
        f = factors(W2[s, y[s] == 1], W[s, y[s] == 1])
        assert -1.0 - 1e-4 <= f.min() and f.max() <= 0.5 + 1e-4 and float(f.max() - f.min()) < 1e-3  # one focus
    assert float(factors(W2[0, y[0] == 1], W[0, y[0] == 1])[0]) != pytest.approx(
        float(factors(W2[1, y[1] == 1], W[1, y[1] == 1])[0]), abs=1e-3)                # foci differ by sequence
    # the majority sequence's median beat gets that same P wave
    assert float(factors(med2[1:2], med[1:2])[0]) == pytest.approx(float(factors(W2[1, :1], W[1, :1])[0]), abs=1e-3)
    # the median beat of record 100 has a clear P wave, so the change is visible, not a rounding
    assert (med2[1, a:b] - med[1, a:b]).abs().max() > 0.1


def test_ventricular_shape_changes_only_v_beats(data_dir):
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.train import ventricular_shape

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    rec = read_record(str(data_dir / "119"))  # ventricular bigeminy: V beats among N beats
    s, sym = read_annotations(rec.path, "atr")
    samples, labels = reference_beats(s, sym)
    d = prepare_record(rec, samples, spec, margin=4)
    y = torch.from_numpy(labels.astype(np.int64))
    start = max(0, int(np.flatnonzero(labels == 2)[0]) - 5)
    W = torch.from_numpy(d["W"][None, start:start + 64].copy()).repeat(16, 1, 1)  # (16, 64, L)
    yy = y[None, start:start + 64].repeat(16, 1)
    assert (yy == 2).any() and (yy == 0).any()
    W2 = ventricular_shape(W, yy, torch.Generator().manual_seed(0), 0.5, 68)
    changed = (W2 != W).any(-1)                                  # (16, 64) beats whose window changed
    assert not changed[yy != 2].any()                             # N beats untouched
    seqs = changed.any(1)
    assert 0 < int(seqs.sum()) < 16                               # about half the sequences
    for b in seqs.nonzero()[:, 0].tolist():                       # in those, every V beat changed
        assert changed[b][yy[b] == 2].all()
    inverted = [b for b in seqs.nonzero()[:, 0].tolist()
                if float((W2[b, yy[b] == 2, 68] * W[b, yy[b] == 2, 68]).mean()) < 0]
    assert inverted and len(inverted) < int(seqs.sum())          # polarity flipped in some, not all
    assert torch.equal(ventricular_shape(W, yy, torch.Generator().manual_seed(0), 0.0, 68), W)


def test_ventricular_ectopy_gives_synthetic_ectopy_beats_a_donor_v_shape(data_dir, batch):
    """Premature beats of rewritten sequences become V with one real V window (record 119's) each;
    sinus beats, RR and the sequences synthetic_ectopy left alone do not change."""
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.train import ventricular_ectopy

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    rec = read_record(str(data_dir / "119"))
    s, sym = read_annotations(rec.path, "atr")
    samples, labels = reference_beats(s, sym)
    pool = torch.from_numpy(prepare_record(rec, samples, spec, margin=4)["W"][labels == 2][:50])
    rr, y = batch[0].clone(), batch[1].clone()
    rr2, y2, sel = synthetic_ectopy(rr, y, torch.Generator().manual_seed(0), p=1.0)
    W = torch.randn(len(y2), T, pool.shape[1])
    W_in, y_in = W.clone(), y2.clone()
    g = torch.Generator().manual_seed(5)
    W3, y3 = ventricular_ectopy(W, y2, sel, g, 0.5, pool)
    assert torch.equal(W, W_in) and torch.equal(y2, y_in)  # inputs not modified in place
    turned = (y3 == 2).any(1)
    assert 0 < int(turned.sum()) < int(sel.sum())          # about half of the rewritten sequences
    assert not turned[~sel].any()                          # never a sequence synthetic_ectopy left alone
    for b in range(len(y2)):
        ect = y2[b] == 1
        if turned[b]:
            assert torch.equal(y3[b][ect], torch.full((int(ect.sum()),), 2))
            donor = W3[b][ect]
            assert (donor == donor[0]).all() and (pool == donor[0]).all(1).any()  # one pool window, all beats
            assert torch.equal(W3[b][~ect], W[b][~ect]) and torch.equal(y3[b][~ect], y2[b][~ect])
        else:
            assert torch.equal(W3[b], W[b]) and torch.equal(y3[b], y2[b])
    state = g.get_state()
    W4, y4 = ventricular_ectopy(W, y2, sel, g, 0.0, pool)   # off at 0, drawing nothing
    assert torch.equal(W4, W) and torch.equal(y4, y2) and torch.equal(g.get_state(), state)


def test_motion_must_not_be_negative(tmp_path):
    from ecgkit.config import load_config
    from ecgkit.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text("train:\n  augment:\n    motion: -0.5\n")
    with pytest.raises(ConfigError, match="motion.*>= 0"):
        load_config(p)


def test_af_rate_must_be_below_one(tmp_path):
    from ecgkit.config import load_config
    from ecgkit.errors import ConfigError

    p = tmp_path / "c.yaml"
    for bad in (1.0, -0.2):
        p.write_text(f"train:\n  augment:\n    af_rate: {bad}\n")
        with pytest.raises(ConfigError, match="af_rate.*\\[0, 1\\)"):
            load_config(p)


@pytest.mark.parametrize("name", ["synthetic_s", "synthetic_ectopy", "ventricular_ectopy", "ventricular_shape",
                                  "synthetic_af", "synthetic_block", "sinus_arrhythmia"])
@pytest.mark.parametrize("value", [1.5, -0.1])
def test_augmentation_probabilities_must_be_probabilities(tmp_path, name, value):
    from ecgkit.config import load_config
    from ecgkit.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text(f"train:\n  augment:\n    {name}: {value}\n")
    with pytest.raises(ConfigError, match=f"{name}.*probability"):
        load_config(p)
    p.write_text(f"train:\n  augment:\n    {name}: 1.0\n")
    assert getattr(load_config(p).train.augment, name) == 1.0


def _superposed(template: np.ndarray, peaks: np.ndarray, n: int) -> np.ndarray:
    """A signal that is exactly the sum of one beat ``template`` (centred) placed at ``peaks``."""
    x, h = np.zeros(n), len(template) // 2
    for p in peaks:
        x[p - h:p - h + len(template)] += template
    return x


def test_neighbour_overlap_gives_the_windows_of_the_beat_moved_in_time(data_dir):
    """Known answer: windows of a signal built from record 100's own median beat, with beat 2 moved
    early (premature, then a pause), equal neighbour_overlap applied to the windows of the regular
    signal with the intervals changed; only the two pairs brought closer change, and only at their edges."""
    from ecgkit.inference import model_signal
    from ecgkit.io import read_record
    from ecgkit.segment import beat_windows
    from ecgkit.train import neighbour_overlap

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    rec = read_record(str(data_dir / "100"))
    s, sym = read_annotations(rec.path, "atr")
    samples, _ = reference_beats(s, sym)
    x = model_signal(rec, spec)
    pos = np.round(samples * 180.0 / 360.0).astype(int)[5:500]
    # the patient's beat, P wave to T wave, tapered to zero 0.7 s either side of R
    template = np.median(beat_windows(x, pos, 126, 127), axis=0) * np.hanning(253)
    b, a = 68, 84  # R at 68 of 152 samples, as the training windows with their 4-sample margin
    regular = np.array([400, 544, 688, 832, 976])                  # 0.8 s apart: no window overlaps another
    moved = np.array([400, 544, 544 + 70, 832, 976])                # beat 2 at 0.39 s, then a 1.21 s pause
    W_reg = torch.from_numpy(beat_windows(_superposed(template, regular, 1400), regular, b, a)[None])
    W_mov = beat_windows(_superposed(template, moved, 1400), moved, b, a)
    pre_reg = torch.from_numpy(np.diff(regular, prepend=256) / 180.0)[None]
    pre_mov = torch.from_numpy(np.diff(moved, prepend=256) / 180.0)[None]
    out = neighbour_overlap(W_reg, pre_reg, pre_mov, 180.0)[0].numpy()
    assert np.abs(W_mov - W_reg[0].numpy()).max() > 0.5          # the move shows in the windows
    np.testing.assert_allclose(out, W_mov, atol=0.02 * np.abs(W_mov).max())
    # beat 1 gains the early QRS at its end; beat 2 the previous T wave at its start; the pause adds nothing
    changed = np.abs(out - W_reg[0].numpy()) > 1e-6
    assert changed[1, 70:].any() and not changed[1, :70].any()
    assert changed[2, :82].any() and not changed[2, 82:].any()
    assert not changed[[0, 3, 4]].any()
    # intervals kept or lengthened change nothing
    assert torch.equal(neighbour_overlap(W_reg, pre_reg, pre_reg, 180.0), W_reg)
    assert torch.equal(neighbour_overlap(W_reg, pre_reg, 1.5 * pre_reg, 180.0), W_reg)


def test_neighbour_overlap_in_training_batches_changes_only_rewritten_sequences(data_dir, tmp_path):
    """Same draws with the key on or off (it draws nothing): windows differ exactly in the sequences
    whose RR series an augmentation rewrote, and off is the recipe as before."""
    import yaml

    from ecgkit.config import load_config
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.registry import create
    from ecgkit.segment import labelled_peaks
    from ecgkit.train import sample_batch, training_batch

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80, "classes": list("NSVFQ")}
    rec = read_record(str(data_dir / "100"))
    peaks, y = labelled_peaks(rec, create("segmenters", "reference"))
    fit = {"100": {**prepare_record(rec, peaks, spec, margin=4), "y": y}}
    quiet = {"amplitude": 1.0, "amplitude_beat": 0, "baseline": 0, "gaussian": 0, "emg": 0, "stretch": 0,
             "shift_samples": 4, "rr_jitter": 0, "synthetic_ectopy": 0.5}
    out = {}
    for on in (False, True):
        p = tmp_path / f"c{on}.yaml"
        p.write_text(yaml.safe_dump({"train": {"seq_len": 64, "batch_size": 8,
                                               "augment": {**quiet, "neighbour_overlap": on}}}))
        out[on] = training_batch(fit, ["100"], load_config(p).train, spec, 4, torch.Generator().manual_seed(1))
    (W0, _, rr0, y0, sh0, _), (W1, _, rr1, y1, sh1, _) = out[False], out[True]
    assert torch.equal(rr0, rr1) and torch.equal(y0, y1) and torch.equal(sh0, sh1)
    recorded = sample_batch(fit, ["100"], 64, 8, torch.Generator().manual_seed(1))  # the batch's first draws
    rewritten = (rr0 != recorded[2]).any(-1).any(-1)  # sequences whose RR series synthetic_ectopy rewrote
    differs = (W0 != W1).any(-1).any(-1)
    assert 0 < int(rewritten.sum()) < 8 and torch.equal(W0, recorded[0])
    assert torch.equal(differs, rewritten)
    # in a rewritten sequence every premature beat's window starts with its predecessor's T wave
    b = int(rewritten.nonzero()[0, 0])
    s = (y1[b] == 1).nonzero()[:, 0]
    s = s[s > 0]                                      # the first beat's predecessor is outside the sequence
    assert ((W1[b, s, :30] - W0[b, s, :30]).abs().amax(-1) > 0.05).all()


def test_synthetic_s_skips_the_sequences_synthetic_block_rewrote(data_dir, tmp_path):
    """In a training batch, a sequence put into 2:1 block keeps every beat N: synthetic_s leaves it alone."""
    import yaml

    from ecgkit.config import load_config
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.registry import create
    from ecgkit.segment import labelled_peaks
    from ecgkit.train import sample_batch, training_batch

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80, "classes": list("NSVFQ")}
    rec = read_record(str(data_dir / "100"))
    peaks, y = labelled_peaks(rec, create("segmenters", "reference"))
    fit = {"100": {**prepare_record(rec, peaks, spec, margin=4), "y": y}}
    n_only = (sample_batch(fit, ["100"], 64, 16, torch.Generator().manual_seed(1))[3] == 0).all(1)
    assert 0 < int(n_only.sum()) < 16
    gained = {}
    for block in (0.0, 1.0):
        p = tmp_path / f"c{block}.yaml"
        p.write_text(yaml.safe_dump({"train": {"seq_len": 64, "batch_size": 16, "augment": {
            "rr_jitter": 0, "synthetic_s": 0.3, "synthetic_block": block}}}))
        _, _, rr, y2, _, _ = training_batch(fit, ["100"], load_config(p).train, spec, 4, torch.Generator().manual_seed(1))
        gained[block] = (y2[n_only] == 1).any(1)
    assert gained[0.0].all()          # without the block, synthetic_s turns beats of every N-only sequence S
    assert not gained[1.0].any()      # with it (p = 1), every N-only sequence is in block and stays N


def test_training_batches_rescale_the_record_reference_the_spec_names(data_dir, tmp_path):
    """training_batch hands the model's record_rr_stat to the rhythm rewrites: same draws, the same pre/post/local
    columns, and in the rewritten sequences the record column moved by the median ratio, not the mean one."""
    import yaml

    from ecgkit.config import load_config
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.registry import create
    from ecgkit.segment import labelled_peaks
    from ecgkit.train import sample_batch, training_batch

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80, "classes": list("NSVFQ")}
    rec = read_record(str(data_dir / "100"))
    peaks, y = labelled_peaks(rec, create("segmenters", "reference"))
    fit = {"100": {**prepare_record(rec, peaks, spec, margin=4), "y": y}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"seq_len": 64, "batch_size": 8, "augment": {
        "rr_jitter": 0, "synthetic_ectopy": 1.0}}}))
    tc = load_config(p).train
    rr = {s: training_batch(fit, ["100"], tc, {**spec, "record_rr_stat": s}, 4, torch.Generator().manual_seed(1))[2]
          for s in ("mean", "median")}
    recorded = sample_batch(fit, ["100"], 64, 8, torch.Generator().manual_seed(1))[2]
    rewritten = (rr["mean"][..., 0] != recorded[..., 0]).any(-1)
    assert int(rewritten.sum()) > 0
    assert torch.equal(rr["mean"][..., :3], rr["median"][..., :3])
    for b in rewritten.nonzero()[:, 0].tolist():
        for s, f in (("mean", torch.mean), ("median", torch.median)):
            want = recorded[b, 0, 3] * f(rr[s][b, :, 0]) / f(recorded[b, :, 0])
            assert torch.allclose(rr[s][b, :, 3], want.expand(64), rtol=1e-5)
    assert not torch.allclose(rr["mean"][rewritten][..., 3], rr["median"][rewritten][..., 3])


def test_motion_noise_is_band_limited_in_one_burst_per_sequence_and_scaled_to_the_beat(data_dir):
    """Artefact of 0.7-8 Hz on one contiguous run of beats per hit sequence, sized by the median beat."""
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.registry import create
    from ecgkit.segment import labelled_peaks
    from ecgkit.train import MOTION_BAND_HZ, motion_noise

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    rec = read_record(str(data_dir / "100"))
    peaks, _ = labelled_peaks(rec, create("segmenters", "reference"))
    d = prepare_record(rec, peaks, spec)
    W = torch.from_numpy(d["W"][:64 * 32].reshape(32, 64, -1))           # 32 sequences of 64 beats
    med = torch.from_numpy(d["med"])[None].expand(32, -1).contiguous()
    out = motion_noise(W, med, torch.Generator().manual_seed(0), 0.5, 180.0)
    noise = out - W
    hit = noise.abs().amax(-1) > 0                                        # (32, 64) beats that got artefact
    hit_seq = hit.any(-1)
    assert 8 < int(hit_seq.sum()) < 24                                    # about half of the sequences
    for b in hit_seq.nonzero()[:, 0]:
        on = hit[b].nonzero()[:, 0]
        assert int(on[-1] - on[0]) + 1 == len(on)                         # one contiguous run
        assert 0.1 * 64 <= len(on) <= 0.6 * 64 + 1
    # the band: nearly all the artefact's power below 8 Hz, little under 0.7 Hz beyond the window's own leakage
    spec_pow = torch.fft.rfft(noise[hit], n=1024).abs().square().sum(0)
    f = torch.fft.rfftfreq(1024, 1 / 180.0)
    assert spec_pow[f > 2 * MOTION_BAND_HZ[1]].sum() < 0.02 * spec_pow.sum()
    # size: at most `strength` x the median beat's peak-to-peak in std, reaching a good part of it
    ptp = float(med[0].amax() - med[0].amin())
    std = noise[hit].std(-1)
    assert float(std.median()) < 0.5 * ptp and float(std.quantile(0.9)) > 0.15 * ptp
    # seeded, and nothing at strength 0
    assert torch.equal(out, motion_noise(W, med, torch.Generator().manual_seed(0), 0.5, 180.0))
    assert torch.equal(motion_noise(W, med, torch.Generator().manual_seed(0), 0.0, 180.0), W)


def test_motion_in_training_batches_leaves_every_other_draw_alone(data_dir, tmp_path):
    """`motion` draws last: labels, RR, shifts and the windows outside its bursts are the batch without it."""
    import yaml

    from ecgkit.config import load_config
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.registry import create
    from ecgkit.segment import labelled_peaks
    from ecgkit.train import training_batch

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80, "classes": list("NSVFQ")}
    rec = read_record(str(data_dir / "100"))
    peaks, y = labelled_peaks(rec, create("segmenters", "reference"))
    fit = {"100": {**prepare_record(rec, peaks, spec, margin=4), "y": y}}
    out = {}
    for m in (0.0, 0.5):
        p = tmp_path / f"m{m}.yaml"
        p.write_text(yaml.safe_dump({"train": {"seq_len": 64, "batch_size": 8,
                                               "augment": {"synthetic_ectopy": 0.3, "motion": m}}}))
        out[m] = training_batch(fit, ["100"], load_config(p).train, spec, 4, torch.Generator().manual_seed(2))
    (W0, med0, rr0, y0, sh0, _), (W1, med1, rr1, y1, sh1, _) = out[0.0], out[0.5]
    assert torch.equal(rr0, rr1) and torch.equal(y0, y1) and torch.equal(sh0, sh1) and torch.equal(med0, med1)
    changed = (W0 != W1).any(-1)                                          # (8, 64)
    assert changed.any() and not changed.all()
