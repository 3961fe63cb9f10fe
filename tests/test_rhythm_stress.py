"""benchmarks/rhythm_stress.py: records rebuilt from their own beats in a new rhythm.

The check's conclusions rest on the construction being faithful: rebuilt in its own order and
timing a record must come back unchanged, a moved beat must keep its recorded samples, and
the rhythms must have the intervals and class shares they are described with.
"""

from __future__ import annotations


import numpy as np
import pytest

from ecgkit.datasets.mitdb import AAMI_CLASSES, reference_beats
from ecgkit.io import read_annotations, read_record


@pytest.fixture(scope="module")
def rs(load_benchmark):
    return load_benchmark("rhythm_stress")


@pytest.fixture(scope="module")
def ecv(load_benchmark):
    """benchmarks/ensemble_cv.py as a module (its --tta and --record-prior probes)."""
    return load_benchmark("ensemble_cv")


@pytest.fixture(scope="module")
def rec209(data_dir):
    rec = read_record(data_dir / "209")
    peaks, cls = reference_beats(*read_annotations(rec.path, "atr"))
    return rec, peaks, np.array(AAMI_CLASSES)[cls]


def _two_leads(rec, seconds=120):
    n = int(seconds * rec.fs)
    return np.stack([rec.signal[:n]] + [v[:n] for v in rec.others.values()], 1)


def test_identity_rebuild_is_the_signal(rs, rec209):
    rec, peaks, _ = rec209
    x = _two_leads(rec)
    p = peaks[peaks < len(x)]
    y = rs.resequence(x, p, np.arange(p.size), p, len(x), fade=4)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-12)


def test_moved_beat_keeps_its_samples_and_gaps_are_straight(rs, rec209):
    rec, peaks, _ = rec209
    x = _two_leads(rec)
    p = peaks[peaks < len(x)]
    k = 50
    out = p.copy()
    out[k:] += 120                       # beat k and all after it come 1/3 s later: a pause before k
    y = rs.resequence(x, p, np.arange(p.size), out, len(x) + 120, fade=0)
    pre_src = p[k] - p[k - 1]
    cut = p[k - 1] + int(np.floor(rs.SPLIT * pre_src))   # their recorded boundary
    back = p[k] - cut                                    # 40 % of the recorded interval
    assert abs(back - 0.4 * pre_src) <= 1
    # beat k keeps its recorded samples from its recorded boundary on
    np.testing.assert_array_equal(y[out[k] - back:out[k] + 30], x[p[k] - back:p[k] + 30])
    # beat k-1, unmoved, keeps its samples up to the recorded boundary
    np.testing.assert_array_equal(y[p[k - 1]:cut], x[p[k - 1]:cut])
    # between them, a straight line from its last sample to beat k's first, and no NaN
    gap = y[cut - 1:out[k] - back + 1]
    assert len(gap) > 100
    assert np.isfinite(y).all()
    np.testing.assert_allclose(np.diff(gap, 2, axis=0), 0, atol=1e-9)


@pytest.mark.parametrize("kind, share", [("sparse", (0.06, 0.12)), ("majority", (0.72, 0.84))])
def test_rhythms_have_their_described_intervals(rs, rec209, kind, share):
    rec, peaks, labels = rec209
    order, out, y = rs.compose(peaks, labels, rec.fs, kind, 1800, np.random.default_rng(1))
    assert len(y) == 1800 and (np.diff(out) > 0).all()
    assert set(y) == {"N", "S"}
    np.testing.assert_array_equal(y, labels[order])
    assert share[0] < np.mean(y == "S") < share[1]
    pre_src = np.diff(peaks, prepend=peaks[0])
    pre_out = np.diff(out, prepend=out[0])
    s = np.flatnonzero(y == "S")[1:]
    ratio = pre_out[s] / pre_src[order[s]]  # every S beat at its own recorded coupling interval, 3 % jitter
    assert np.median(np.abs(ratio - 1)) < 0.03 and np.abs(ratio - 1).max() < 0.2
    n = np.flatnonzero(y == "N")[1:]
    if kind == "majority":
        # each N beat ends a run of S beats after a pause of 2.5 x the last S beat's coupling interval
        assert (y[n - 1] == "S").all()
        pause = pre_out[n] / pre_src[order[n - 1]]
        assert 2.0 < pause.min() and pause.max() < 3.1 and abs(np.median(pause) - 2.5) < 0.1
    else:
        # sinus beats at the record's own N-N interval, S beats isolated
        rr_n = np.median(pre_src[(labels == "N")])
        assert abs(np.median(pre_out[n]) / rr_n - 1) < 0.05
        assert not ((y[1:] == "S") & (y[:-1] == "S")).any()


def test_rebuilt_record_is_classified_like_the_record(rs, rec209):
    """The construction itself (band-pass before, the models' band-pass again) must not move classes."""
    from ecgkit.inference import predict_log_proba, prepare_record
    from ecgkit.models import load_any_model

    import dataclasses

    rec, peaks, labels = rec209
    n = int(360 * rec.fs)   # six minutes keep the test short
    rec = dataclasses.replace(rec, signal=rec.signal[:n], others={k: v[:n] for k, v in rec.others.items()})
    peaks, labels = peaks[peaks < n], labels[peaks < n]
    model, spec, _ = load_any_model("transnet")
    a = predict_log_proba(model, prepare_record(rec, peaks, spec), spec).argmax(1)
    b = predict_log_proba(model, prepare_record(rs.rebuilt(rec, peaks), peaks, spec), spec).argmax(1)
    assert np.mean(a == b) > 0.995
    rec2, p2, y2 = rs.synthetic_record(rec, peaks, labels, "majority", 600,
                                       np.random.default_rng(0))
    assert set(rec2.others) == set(rec.others) and len(rec2.signal) == len(next(iter(rec2.others.values())))
    assert p2[-1] < len(rec2.signal) and len(y2) == 600


def test_block_rhythm_alternates_conduction_stretches_of_n_beats(rs, rec209):
    rec, peaks, labels = rec209
    order, out, y, blocked = rs.compose_block(peaks, labels, rec.fs, 1800, np.random.default_rng(1))
    assert len(y) == 1800 and (np.diff(out) > 0).all() and set(y) == {"N"}
    np.testing.assert_array_equal(y, labels[order])
    pre_src = np.diff(peaks, prepend=peaks[0] - (peaks[1] - peaks[0]))
    clean = (labels[order - 1] == "N") & (labels[(order + 1) % len(labels)] == "N")
    assert clean.all()                                   # only beats with N neighbours both sides
    rr_n = np.median(pre_src[order])
    ratio = np.diff(out) / rr_n                          # the interval before beats 1..
    b = blocked[1:]
    assert np.abs(ratio[~b] - 1).max() < 0.2 and np.abs(ratio[b] - 2).max() < 0.4
    assert abs(np.median(ratio[b]) - 2) < 0.05 and abs(np.median(ratio[~b]) - 1) < 0.05
    edges = np.flatnonzero(b[1:] != b[:-1])
    assert len(edges) >= 10 and np.diff(edges).min() >= 20   # stretches of 20 beats or more
    assert 0.25 < b.mean() < 0.6


def test_test_time_variants_average_shifted_and_scaled_inputs(ecv, rec209):
    """ensemble_cv's --tta: one variant is the plain prediction; three are the mean of the three inputs' log-probs."""
    import dataclasses

    from ecgkit.inference import predict_log_proba, prepare_record
    from ecgkit.models import load_any_model

    assert ecv.tta_variants(None) == [(0, 1.0)]
    assert ecv.tta_variants("shift:3") == [(-3, 1.0), (0, 1.0), (3, 1.0)]
    assert ecv.tta_variants("gain:1.25") == [(0, 0.8), (0, 1.0), (0, 1.25)]
    for bad in ("shift:0", "shift:1.5", "gain:0.9", "crop:3", "shift:x"):
        with pytest.raises(SystemExit, match="--tta must be"):
            ecv.tta_variants(bad)
    rec, peaks, _ = rec209
    n = int(120 * rec.fs)
    rec = dataclasses.replace(rec, signal=rec.signal[:n], others={k: v[:n] for k, v in rec.others.items()})
    peaks = peaks[(peaks > 60) & (peaks < n - 60)]
    model, spec, _ = load_any_model("transnet")
    # the networks' own output: the benchmarks apply the contract's record-level step to the ensemble's mean
    plain = predict_log_proba(model, prepare_record(rec, peaks, spec), spec, postprocess=False)
    np.testing.assert_array_equal(ecv.tta_log_proba(model, rec, peaks, spec), plain)
    step = rec.fs / spec["fs_hz"]
    parts = [predict_log_proba(model, prepare_record(rec, peaks + s * step, spec), spec, postprocess=False)
             for s in (-3, 0, 3)]
    shifted = ecv.tta_log_proba(model, rec, peaks, spec, ecv.tta_variants("shift:3"))
    np.testing.assert_allclose(shifted, np.mean(parts, 0), rtol=1e-6)
    assert not np.allclose(parts[0], parts[1])                      # the shift does change the input
    scaled = ecv.tta_log_proba(model, rec, peaks, spec, [(0, 2.0)])
    prep = prepare_record(rec, peaks, spec)
    doubled = {**prep, "W": prep["W"] * 2, "med": prep["med"] * 2}
    np.testing.assert_allclose(scaled, predict_log_proba(model, doubled, spec, postprocess=False), rtol=1e-6)
    assert (np.mean(np.argmax(shifted, 1) == np.argmax(plain, 1))) > 0.95


def test_record_prior_em_recovers_a_known_class_mix(ecv):
    """ensemble_cv's --record-prior: on calibrated posteriors, EM finds the record's own class mix.

    Two Gaussian classes (means -1 and +1, unit variance) whose exact posteriors under an equal
    prior are known; the record holds 10 % of class 1. Full EM must recover about 0.10, MAP-EM
    with as many pseudo-beats as beats must land half way in log-odds terms (between 0.10 and
    0.5), a held class must keep its source prior, and missed beats (NaN rows) stay NaN.
    """
    rng = np.random.default_rng(0)
    n = 20000
    y = (rng.random(n) < 0.1).astype(int)
    x = np.where(y == 1, 1.0, -1.0) + rng.normal(size=n)
    lp = np.stack([-np.logaddexp(0, 2 * x), -np.logaddexp(0, -2 * x)], 1)  # exact log-posteriors, equal prior
    src = np.log([0.5, 0.5])
    out, pi = ecv.record_prior_em(lp, src)
    assert abs(pi[1] - y.mean()) < 0.01
    assert (out.argmax(1) == y).mean() > (lp.argmax(1) == y).mean() + 0.02   # the adjusted decision is better
    np.testing.assert_allclose(np.exp(out).sum(1), 1, rtol=1e-9)
    _, shrunk = ecv.record_prior_em(lp, src, pseudo=n)
    assert pi[1] + 0.1 < shrunk[1] < 0.45
    lp3 = np.concatenate([lp + np.log(0.99), np.full((n, 1), np.log(0.01))], 1)    # a third class, 1 % everywhere
    src3 = np.log([0.499, 0.499, 0.002])
    _, free = ecv.record_prior_em(lp3, src3)
    _, held = ecv.record_prior_em(lp3, src3, min_src=0.005)
    assert free[2] > 0.01                       # unheld, EM pulls the rare class far above its source prior
    assert held[2] == pytest.approx(0.002) and abs(held[1] - y.mean()) < 0.01
    lp[:5] = np.nan
    out, _ = ecv.record_prior_em(lp, src)
    assert np.isnan(out[:5]).all() and not np.isnan(out[5:]).any()
