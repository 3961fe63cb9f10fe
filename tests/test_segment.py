"""Segmentation: RR features, beat windows, label matching, segmenters and beats.npz."""

from __future__ import annotations

import os

import numpy as np
import pytest
import wfdb

from ecgkit.errors import DataError, RecordError
from ecgkit.io import Record, read_record
from ecgkit.registry import create
from ecgkit.segment import (RR_FEATURES, BeatSet, beat_windows, detect_beats, labelled_peaks, match_labels,
                            median_beat_channel, rr_features, segment_records)

PRE, POST, LOCAL, REC = range(4)


# --- RR features ---------------------------------------------------------------------------

def test_rr_feature_columns():
    assert RR_FEATURES == ("pre_rr", "post_rr", "local_mean_rr", "record_mean_rr")


def test_rr_features_on_hand_made_peaks():
    # fs 100 Hz: RR intervals 1.0, 0.5, 1.5, 1.0 s
    peaks = np.array([0, 100, 150, 300, 400])
    rr = rr_features(peaks, 100.0, local_beats=2)
    assert rr.shape == (5, 4) and rr.dtype == np.float32
    np.testing.assert_allclose(rr[:, PRE], [1.0, 1.0, 0.5, 1.5, 1.0])  # first beat takes its post-RR
    np.testing.assert_allclose(rr[:, POST], [1.0, 0.5, 1.5, 1.0, 1.0])  # last beat takes its pre-RR
    # local mean: the 2 most recent pre-RR, the beat's own included (fewer at the start)
    np.testing.assert_allclose(rr[:, LOCAL], [1.0, 1.0, 0.75, 1.0, 1.25])
    # record mean RR: 1.0 s (mean of the intervals, and of the pre-RR column)
    np.testing.assert_allclose(rr[:, REC], 1.0)


def test_rr_features_scale_with_fs_and_default_window():
    peaks = np.array([0, 360, 540, 1080, 1440])
    rr = rr_features(peaks, 360.0)  # local_beats=10 covers the whole record: running mean of pre-RR
    np.testing.assert_allclose(rr[:, PRE], [1.0, 1.0, 0.5, 1.5, 1.0])
    np.testing.assert_allclose(rr[:, LOCAL], np.cumsum(rr[:, PRE]) / np.arange(1, 6), rtol=1e-6)


def test_rr_local_mean_is_causal():
    rng = np.random.default_rng(3)
    peaks = np.cumsum(rng.integers(200, 400, size=40))
    base = rr_features(peaks, 360.0, local_beats=5)
    changed = peaks.copy()
    changed[25:] += 90  # a long pause before beat 25
    other = rr_features(changed, 360.0, local_beats=5)
    np.testing.assert_array_equal(other[:25, LOCAL], base[:25, LOCAL])
    assert not np.allclose(other[25:30, LOCAL], base[25:30, LOCAL])
    np.testing.assert_allclose(other[30:, LOCAL], base[30:, LOCAL], rtol=1e-6)  # window has moved on
    for i in range(4, 40):
        assert base[i, LOCAL] == pytest.approx(base[i - 4:i + 1, PRE].mean(), rel=1e-5)


def test_rr_record_mean_is_one_value_per_record():
    peaks = np.array([0, 300, 650, 900, 1300, 1500])
    rr = rr_features(peaks, 100.0)
    assert np.all(rr[:, REC] == rr[0, REC])
    assert rr[0, REC] == pytest.approx(rr[:, PRE].mean(), rel=1e-6)


def test_rr_record_median_is_the_usual_interval():
    """record_stat="median": a 2:1 stretch (6 of 21 intervals twice as long) lengthens the mean 1.29 times and
    leaves the median at the 1:1 interval; every other column is the same as with the mean."""
    iv = np.array([1.0] * 14 + [2.0] * 6)                 # s: 1:1 conduction, then 2:1 block
    peaks = np.round(np.concatenate([[0.0], np.cumsum(iv)]) * 100).astype(np.int64)
    mean, median = rr_features(peaks, 100.0), rr_features(peaks, 100.0, record_stat="median")
    np.testing.assert_allclose(mean[:, REC], 27 / 21, rtol=1e-6)  # pre-RR: 15 x 1 s (the first beat's own) + 6 x 2 s
    np.testing.assert_allclose(median[:, REC], 1.0)
    np.testing.assert_array_equal(median[:, :REC], mean[:, :REC])
    with pytest.raises(ValueError, match="record_stat"):
        rr_features(peaks, 100.0, record_stat="mode")


def test_rr_features_zero_and_one_beat():
    assert rr_features(np.array([], dtype=np.int64), 360.0).shape == (0, 4)
    np.testing.assert_array_equal(rr_features(np.array([500]), 360.0), np.ones((1, 4), np.float32))
    two = rr_features(np.array([0, 180]), 360.0)
    np.testing.assert_allclose(two, 0.5)


# --- windows -------------------------------------------------------------------------------

def test_beat_windows_exact_slices_and_zero_padding():
    x = np.arange(1, 21, dtype=np.float64)  # 1..20, so padding zeros are distinguishable
    w = beat_windows(x, np.array([0, 5, 19]), before=3, after=4)
    assert w.shape == (3, 7) and w.dtype == np.float32
    np.testing.assert_array_equal(w[0], [0, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(w[1], x[2:9])
    np.testing.assert_array_equal(w[2], [17, 18, 19, 20, 0, 0, 0])
    assert beat_windows(x, np.array([], dtype=np.int64), 3, 4).shape == (0, 7)


def test_median_beat_channel():
    w = np.array([[1, 2], [3, 4], [5, 10]], dtype=np.float32)
    np.testing.assert_array_equal(median_beat_channel(w), [[-2, -2], [0, 0], [2, 6]])
    assert median_beat_channel(np.zeros((0, 2), np.float32)).shape == (0, 2)


# --- label matching ------------------------------------------------------------------------

def test_match_labels_tolerance():
    ref = np.array([100, 200, 300])
    labels = np.array([0, 2, 1])
    peaks = np.array([95, 111, 189, 190, 205, 250, 310, 311, 400])
    got = match_labels(peaks, ref, labels, tolerance=10)
    np.testing.assert_array_equal(got, [0, -1, -1, 2, 2, -1, 1, -1, -1])
    assert match_labels(np.array([150]), ref, labels, tolerance=50)[0] in (0, 2)  # a tie: either neighbour


def test_match_labels_edge_cases():
    assert match_labels(np.array([1, 2]), np.array([], np.int64), np.array([], np.int64), 5).tolist() == [-1, -1]
    assert match_labels(np.array([], np.int64), np.array([5]), np.array([3]), 5).size == 0
    np.testing.assert_array_equal(match_labels(np.array([0, 7, 30]), np.array([5]), np.array([3]), 5), [3, 3, -1])


# --- segmenters ----------------------------------------------------------------------------

def test_detect_beats_sorts_dedups_and_clips():
    rec = Record(signal=np.zeros(100), fs=100.0, lead="I", name="x", path="/nonexistent/x")
    assert detect_beats(lambda s, fs: [50, -3, 5, 50, 2, 100, 1000], rec).tolist() == [2, 5, 50]
    seen = {}

    def with_record(signal, fs, *, record=None):
        seen["record"] = record
        return [1]

    detect_beats(with_record, rec)
    assert seen["record"] is rec


def test_reference_segmenter_equals_the_atr_beats(data_dir, beat_samples):
    rec = read_record(data_dir / "100")
    peaks = detect_beats(create("segmenters", "reference"), rec)
    ref = beat_samples(data_dir / "100")
    assert ref.size == 2273
    np.testing.assert_array_equal(peaks, ref)


def test_reference_segmenter_rescales_to_another_rate(data_dir, beat_samples):
    rec = read_record(data_dir / "100")
    peaks = create("segmenters", "reference")(rec.signal, 180.0, record=rec)
    np.testing.assert_array_equal(peaks, np.round(beat_samples(data_dir / "100") / 2).astype(np.int64))


def test_reference_segmenter_needs_a_record():
    with pytest.raises(RecordError, match="needs a record"):
        create("segmenters", "reference")(np.zeros(10), 360.0)


def test_xqrs_finds_the_beats_of_record_100(data_dir, beat_samples, matched_fraction):
    n = 5 * 60 * 360
    full = read_record(data_dir / "100")
    rec = Record(signal=full.signal[:n], fs=full.fs, lead=full.lead, name="100", path=full.path)
    peaks = detect_beats(create("segmenters", "xqrs"), rec)
    ref = beat_samples(data_dir / "100")
    ref = ref[ref < n]
    tol = int(0.15 * 360)
    assert matched_fraction(peaks, ref, tol) > 0.99  # sensitivity
    assert matched_fraction(ref, peaks, tol) > 0.99  # positive predictivity


def test_xqrs_on_too_short_input_returns_no_beats():
    assert create("segmenters", "xqrs")(np.zeros(100), 360.0).size == 0


def test_labelled_peaks_on_a_record_without_annotations(mitdb_record):
    path = mitdb_record("100", extensions=("hea", "dat"))
    rec = read_record(path)
    rec.signal = rec.signal[:20 * 360]
    peaks, labels = labelled_peaks(rec, create("segmenters", "xqrs"))
    assert peaks.size > 15
    assert np.all(labels == -1)


# --- segment_records and BeatSet -----------------------------------------------------------

def sliced(path, seconds):
    rec = read_record(path)
    rec.signal = rec.signal[: int(seconds * rec.fs)]
    return rec


def test_segment_records_writes_annotations_and_beats_npz(data_dir, tmp_path, beat_samples):
    records = [sliced(data_dir / "100", 60), sliced(data_dir / "119", 60)]
    out = tmp_path / "out"
    summary = segment_records(records, "reference", out, windows=True, fs_hz=180.0)
    assert sorted(os.listdir(out)) == ["100.qrs", "119.qrs", "beats.npz"]
    assert "2 record(s)" in summary

    bs = BeatSet.load(out / "beats.npz")
    before, after = 45, 81  # 0.25 s and 0.45 s at 180 Hz
    n = len(bs)
    assert bs.windows.shape == (n, 1, before + after) and bs.windows.dtype == np.float32
    assert bs.rr.shape == (n, 4) and bs.labels.shape == (n,) and bs.records.shape == (n,)
    assert bs.samples.shape == (n,)
    assert bs.meta["fs_hz"] == 180.0 and bs.meta["before_samples"] == before
    assert bs.meta["after_samples"] == after and bs.meta["segmenter"] == "reference"
    assert bs.meta["rr_features"] == list(RR_FEATURES)

    for name in ("100", "119"):
        ref = beat_samples(data_dir / name)
        ref = ref[ref < 60 * 360]
        mine = bs.records == name
        np.testing.assert_array_equal(bs.samples[mine], ref)
        np.testing.assert_array_equal(wfdb.rdann(str(out / name), "qrs").sample, ref)
        np.testing.assert_allclose(bs.rr[mine], rr_features(ref, 360.0), rtol=1e-6)
    assert set(bs.records.tolist()) == {"100", "119"}
    ann = wfdb.rdann(str(data_dir / "119"), "atr", sampto=60 * 360)
    n_v = sum(s == "V" for s in ann.symbol)
    assert n_v > 0 and int((bs.labels[bs.records == "119"] == 2).sum()) == n_v
    assert set(bs.labels[bs.records == "100"].tolist()) <= {0, 1}
    assert np.all(bs.labels >= 0)
    # the window is centred on the R peak of a z-scored signal: a large deflection at index `before`
    assert np.median(np.abs(bs.windows[:, 0, before])) > 1.5
    assert np.all(np.isfinite(bs.windows))


def test_segment_records_labels_minus_one_without_annotations(mitdb_record, tmp_path):
    path = mitdb_record("100", extensions=("hea", "dat"))
    out = tmp_path / "out"
    segment_records([sliced(path, 30)], "xqrs", out, windows=True)
    bs = BeatSet.load(out / "beats.npz")
    assert len(bs) > 25 and np.all(bs.labels == -1)
    assert bs.windows.shape[1:] == (1, 90 + 162)


def test_segment_records_without_windows_writes_only_annotations(data_dir, tmp_path):
    out = tmp_path / "out"
    segment_records([sliced(data_dir / "100", 20)], "reference", out, ext="ref")
    assert os.listdir(out) == ["100.ref"]


def test_segment_records_with_no_beats_warns_and_writes_an_empty_file(tmp_path):
    rec = Record(signal=np.zeros(720), fs=360.0, lead="I", name="flat", path=str(tmp_path / "flat"))
    with pytest.warns(UserWarning, match="no beats detected"):
        segment_records([rec], "xqrs", tmp_path / "out")
    assert wfdb.rdann(str(tmp_path / "out" / "flat"), "qrs").sample.size == 0


def test_beatset_save_load_concat(tmp_path):
    a = BeatSet(np.ones((2, 1, 4), np.float32), np.ones((2, 4), np.float32), np.array([0, 2]),
                np.array(["100", "100"]), np.array([10, 20]), {"fs_hz": 360.0})
    b = BeatSet(np.zeros((1, 1, 4), np.float32), np.zeros((1, 4), np.float32), np.array([-1]),
                np.array(["x"]), np.array([5]))
    c = BeatSet.concat([a, b])
    assert len(c) == 3 and c.records.tolist() == ["100", "100", "x"] and c.meta == {"fs_hz": 360.0}
    c.save(tmp_path / "b.npz")
    d = BeatSet.load(tmp_path / "b.npz")
    for attr in ("windows", "rr", "labels", "records", "samples"):
        np.testing.assert_array_equal(getattr(d, attr), getattr(c, attr))
    assert d.meta == c.meta
    with pytest.raises(ValueError):
        BeatSet.concat([])


def test_beatset_load_rejects_other_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match="not an ecgkit beat dataset"):
        BeatSet.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError):
        BeatSet.load(tmp_path / "other.npz")
    with pytest.raises(DataError):
        BeatSet.load(tmp_path / "missing.npz")
