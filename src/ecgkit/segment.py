"""Segmentation: beat detection, beat windows and RR features.

Built-in segmenters (registered through ``register_segmenters``):

* ``pan-tompkins`` -- ecgkit's implementation of Pan & Tompkins (1985),
  see :mod:`ecgkit.detectors.pan_tompkins`;
* ``xqrs`` -- wfdb's XQRS detector (``wfdb.processing.XQRS``);
* ``reference`` -- the record's own reference beat annotations (``.atr``).

Contract: ``factory(**params)`` returns ``detect(signal, fs) -> np.ndarray[int]``
of R-peak sample indices; ``signal`` is 1-D, in mV, at ``fs`` Hz.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from . import hookimpl
from .datasets.mitdb import BEAT_SYMBOLS, reference_beats
from .errors import RecordError
from .io import Record, read_annotations


def pan_tompkins(**params):
    """Pan & Tompkins 1985 QRS detector (ecgkit's own implementation)."""
    from .detectors.pan_tompkins import pan_tompkins as _pt

    def detect(signal, fs):
        return _pt(np.asarray(signal, dtype=np.float64), float(fs), **params)

    return detect


def xqrs(**params):
    """wfdb's XQRS detector (wfdb.processing.XQRS, default configuration)."""
    from wfdb import processing

    def detect(signal, fs):
        x = np.asarray(signal, dtype=np.float64)
        if x.size < int(2 * fs):  # XQRS needs a learning period; shorter input holds no beats it can find
            return np.zeros(0, dtype=np.int64)
        q = processing.XQRS(sig=x, fs=float(fs), **params)
        q.detect(verbose=False)
        return np.asarray(q.qrs_inds, dtype=np.int64)

    return detect


def reference(extension: str = "atr"):
    """Reference beat annotations of the record (.atr): the literature's protocol."""

    def detect(signal, fs, *, record: Record | None = None):
        if record is None:
            raise RecordError("the 'reference' segmenter needs a record with annotation files")
        samples, symbols = read_annotations(record.path, extension)
        keep = np.array([s in BEAT_SYMBOLS for s in symbols], dtype=bool)
        peaks = samples[keep] if samples.size else samples
        if abs(fs - record.fs) > 1e-9:
            peaks = np.round(peaks * fs / record.fs).astype(np.int64)
        return peaks

    return detect


@hookimpl
def register_segmenters():
    return {"pan-tompkins": pan_tompkins, "xqrs": xqrs, "reference": reference}


def detect_beats(detector, record: Record) -> np.ndarray:
    """Run a segmenter's ``detect`` on a record's signal (passing the record if it accepts one)."""
    try:
        accepts_record = "record" in inspect.signature(detector).parameters
    except (TypeError, ValueError):
        accepts_record = False
    if accepts_record:
        peaks = detector(record.signal, record.fs, record=record)
    else:
        peaks = detector(record.signal, record.fs)
    peaks = np.unique(np.asarray(peaks, dtype=np.int64))
    return peaks[(peaks >= 0) & (peaks < len(record.signal))]


# --- RR features ---------------------------------------------------------------------------

#: Column order of the RR feature matrix (all in seconds).
RR_FEATURES = ("pre_rr", "post_rr", "local_mean_rr", "record_mean_rr")


#: How the record-level RR reference (column 3) is taken from the record's pre-RR intervals.
#: ``"atrial"``: the mean sinus cycle, each interval divided by the P waves in it (see :func:`blocked_p_waves`).
RECORD_RR_STATS = ("mean", "median", "atrial")

#: How the local RR reference (column 2) is taken from the ``local_beats`` most recent pre-RR intervals:
#: ``"mean"``, their mean; ``"atrial"``, the mean of each divided by its P waves (see :func:`blocked_p_waves`),
#: so after 2:1 AV block the first 1:1 beats are compared with the sinus cycle, not with the doubled intervals.
LOCAL_RR_STATS = ("mean", "atrial")

#: How the pre- and post-RR columns (0 and 1) are given: ``"raw"``, seconds as measured; ``"atrial"``, each
#: interval divided by its P waves (see :func:`blocked_p_waves`), so a 2:1 interval of AV block reads as
#: the one sinus cycle it is, not as a pause after an ectopic beat.
INTERVAL_RR_STATS = ("raw", "atrial")

#: The P segment of a beat, seconds before its R: from ``P_SEGMENT_S[0]`` to ``P_SEGMENT_S[1]``
#: (the P wave and the PR segment).
P_SEGMENT_S = (0.32, 0.07)


def _detrend(S: np.ndarray) -> np.ndarray:
    """Remove each row's mean and least-squares slope (..., L)."""
    n = S.shape[-1]
    t = np.arange(n) - (n - 1) / 2
    S = S - S.mean(-1, keepdims=True)
    return S - (S * t).sum(-1, keepdims=True) / (t * t).sum() * t


def _unit(S: np.ndarray) -> np.ndarray:
    return S / np.maximum(np.linalg.norm(S, axis=-1, keepdims=True), 1e-9)


#: The two P-wave templates :func:`blocked_p_waves` takes from each record, seconds before R: the P
#: segment (P wave and PR segment) and the P wave alone (shorter, so it still fits after a T wave).
BLOCKED_P_TEMPLATES_S = ((0.32, 0.07), (0.25, 0.07))

#: QTc (Bazett) that places the end of the T wave after R: ``QTC_S * sqrt(median interval)``.
QTC_S = 0.42

#: Consecutive intervals with a blocked P wave that :func:`~ecgkit.inference.prepare_record` requires when the
#: pre- and post-RR are given in sinus cycles (``interval_rr_stat: atrial``) and the input contract names no
#: ``blocked_p_min_run`` of its own.
ATRIAL_INTERVAL_MIN_RUN = 2


def blocked_p_waves(x: np.ndarray, pos: np.ndarray, fs: float, min_corr: float = 0.8,
                    min_quality: float = 0.5, min_run: int = 1) -> np.ndarray:
    """Non-conducted P waves in the interval before each beat: ``(n_beats,)`` int, 0 for the first beat.

    A sinus P wave that no QRS follows (second-degree AV block; in 2:1 block every other one) has
    the shape of the conducted ones, so the record is its own template. Two are taken
    (:data:`BLOCKED_P_TEMPLATES_S`): the median of the beats' P segments, and the median of their P
    waves alone, each with its mean and slope removed. A template the beats' own P stretches do not
    agree with (median correlation under ``min_quality``: atrial fibrillation, noise, no visible P
    wave) counts nothing. Each interval is searched from the end of the earlier beat's T wave
    (``QTC_S * sqrt(median interval)`` after its R, Bazett's QT at the record's rate) to 0.30 s
    before the later beat's own P stretch. A stretch counts when it correlates with the template
    at ``min_corr`` or more, at 0.5-2 times its amplitude. The ``k`` found at least 0.30 s apart
    count only if they sit where a regular atrial rhythm puts them: at ``j / (k + 1)`` of the
    interval, within a fifth of that spacing. Blocked P waves march through at the sinus rate; a
    T, U or noise wave does not. An interval's count is the larger of the two templates' counts.
    ``min_run`` > 1 keeps a count only in a run of at least that many consecutive intervals with one:
    2:1 block repeats, while the pause after an ectopic run that happens to hold a P-like wave is alone.

    ``x``: one lead at ``fs`` (band-passed); ``pos``: R positions in samples of ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    pos = np.asarray(pos, dtype=np.int64)
    n = np.zeros(pos.size, dtype=np.int64)
    if pos.size < 2:
        return n
    lo = round(QTC_S * np.sqrt(np.median(np.diff(pos)) / fs) * fs)
    for seg in BLOCKED_P_TEMPLATES_S:
        n = np.maximum(n, _blocked_p_one_template(x, pos, fs, seg, lo, min_corr, min_quality))
    return _in_runs(n, min_run) if min_run > 1 else n


def _in_runs(n: np.ndarray, min_run: int) -> np.ndarray:
    """``n`` with every count outside a run of ``min_run`` or more consecutive nonzero counts set to 0."""
    c = np.r_[False, n > 0, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(c))                     # run starts and ends (exclusive), alternating
    keep = np.zeros(n.size, dtype=bool)
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a >= min_run:
            keep[a:b] = True
    return np.where(keep, n, 0)


def _blocked_p_one_template(x, pos, fs, seg, lo, min_corr, min_quality) -> np.ndarray:
    """:func:`blocked_p_waves` with one template, ``seg`` seconds before R; the search starts ``lo`` samples after R."""
    n = np.zeros(pos.size, dtype=np.int64)
    a0, a1 = round(seg[0] * fs), round(seg[1] * fs)
    width = a0 - a1
    inside = pos[(pos - a0 >= 0) & (pos - a1 <= x.size)]
    if inside.size < 2:
        return n
    P = _detrend(np.stack([x[p - a0:p - a1] for p in inside]))
    template = _detrend(np.median(P, axis=0)[None])[0]
    if not np.any(template):
        return n
    unit = template / np.linalg.norm(template)
    if np.median(_unit(P) @ unit) < min_quality:
        return n
    t_std = template.std()
    hi, sep = a0 + round(0.30 * fs), round(0.30 * fs)
    for i in range(1, pos.size):
        a, b = int(pos[i - 1]), int(pos[i])
        starts = np.arange(max(a + lo, 0), min(b - hi, x.size - width) + 1)
        if starts.size == 0:
            continue
        S = _detrend(x[starts[:, None] + np.arange(width)[None, :]])
        c = _unit(S) @ unit
        amp = S.std(-1) / t_std
        ok = (c >= min_corr) & (amp >= 0.5) & (amp <= 2.0)
        peak = ok & (c >= np.r_[-np.inf, c[:-1]]) & (c >= np.r_[c[1:], -np.inf])
        found: list[int] = []
        for j in sorted(np.flatnonzero(peak), key=lambda j: -c[j]):
            if all(abs(j - k) >= sep for k in found):
                found.append(int(j))
        if not found:
            continue
        k = len(found)
        spacing = (b - a) / (k + 1)
        r_equiv = np.sort(starts[found] + a0)  # where the blocked P wave's own R would have been
        if np.all(np.abs(r_equiv - (a + spacing * np.arange(1, k + 1))) <= 0.2 * spacing):
            n[i] = k
    return n


def rr_features(peaks: np.ndarray, fs: float, local_beats: int = 10, record_stat: str = "mean",
                blocked_p: np.ndarray | None = None, local_stat: str = "mean",
                interval_stat: str = "raw") -> np.ndarray:
    """RR features in seconds, ``(n_beats, 4)``: pre-RR, post-RR, local mean RR, record mean RR.

    * pre-RR: time from the previous beat (the first beat takes its post-RR);
    * post-RR: time to the next beat (the last beat takes its pre-RR);
    * local mean RR: mean of the ``local_beats`` most recent pre-RR intervals, the
      beat's own included (fewer at the start of the record); causal, so a premature
      beat is compared with the rhythm that led up to it;
    * record mean RR: mean of all pre-RR intervals of the record; with ``record_stat="median"``
      their median (the usual interval: long pauses, 2:1 AV block or a minority of ectopic runs
      do not move it); with ``record_stat="atrial"`` the mean sinus cycle: each interval divided by
      its P waves, ``1 + blocked_p`` (:func:`blocked_p_waves`), so the long intervals of 2:1 AV
      block count as the two sinus cycles they are and a steady 1:1 stretch between them is not
      premature; where no P wave is blocked it equals the mean.

    ``local_stat="atrial"`` counts the local mean in sinus cycles the same way (each of the
    ``local_beats`` intervals divided by ``1 + blocked_p``): when 1:1 conduction returns after
    2:1 AV block, its first beats are then not premature against the doubled intervals before
    them. Where no P wave is blocked it equals the plain local mean.

    ``interval_stat="atrial"`` gives pre- and post-RR in sinus cycles too: each interval divided
    by ``1 +`` the blocked P waves in it (the post-RR of a beat by those of the next beat's
    interval). All four columns are then the atrial rhythm: a 2:1 interval is one cycle, so the beat
    before it does not look like an ectopic beat before its pause.

    A record with a single beat gets 1 s everywhere (no rhythm information).
    """
    if record_stat not in RECORD_RR_STATS:
        raise ValueError(f"record_stat must be one of {RECORD_RR_STATS}, got {record_stat!r}")
    if local_stat not in LOCAL_RR_STATS:
        raise ValueError(f"local_stat must be one of {LOCAL_RR_STATS}, got {local_stat!r}")
    if interval_stat not in INTERVAL_RR_STATS:
        raise ValueError(f"interval_stat must be one of {INTERVAL_RR_STATS}, got {interval_stat!r}")
    if "atrial" in (record_stat, local_stat, interval_stat) and (blocked_p is None or len(blocked_p) != len(peaks)):
        raise ValueError("record_stat, local_stat or interval_stat 'atrial' needs blocked_p, the blocked P waves before "
                         "each beat (ecgkit.segment.blocked_p_waves)")
    peaks = np.asarray(peaks, dtype=np.float64)
    n = peaks.size
    if n == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if n == 1:
        return np.ones((1, 4), dtype=np.float32)
    d = np.diff(peaks) / fs
    pre = np.concatenate([[d[0]], d])
    post = np.concatenate([d, [d[-1]]])
    cycles = pre / (1 + np.asarray(blocked_p, dtype=np.float64)) if blocked_p is not None else pre
    c = np.concatenate([[0.0], np.cumsum(cycles if local_stat == "atrial" else pre)])
    hi = np.arange(1, n + 1)
    lo = np.maximum(hi - local_beats, 0)
    local = (c[hi] - c[lo]) / (hi - lo)
    if record_stat == "median":
        rec = np.full(n, np.median(pre))
    elif record_stat == "atrial":
        rec = np.full(n, cycles.mean())
    else:
        rec = np.full(n, pre.mean())
    if interval_stat == "atrial":
        dc = d / (1 + np.asarray(blocked_p, dtype=np.float64)[1:])  # interval j ends at beat j + 1
        pre, post = np.concatenate([[dc[0]], dc]), np.concatenate([dc, [dc[-1]]])
    return np.stack([pre, post, local, rec], axis=1).astype(np.float32)


# --- beat windows --------------------------------------------------------------------------

def beat_windows(signal: np.ndarray, peaks: np.ndarray, before: int, after: int) -> np.ndarray:
    """Windows ``signal[p - before : p + after]`` for every peak, zero-padded at the edges.

    Returns ``(n_beats, before + after)`` float32.
    """
    x = np.asarray(signal, dtype=np.float32)
    peaks = np.asarray(peaks, dtype=np.int64)
    padded = np.concatenate([np.zeros(before, np.float32), x, np.zeros(after, np.float32)])
    idx = peaks[:, None] + np.arange(before + after)[None, :]  # index into padded
    return padded[idx] if peaks.size else np.zeros((0, before + after), np.float32)


def median_beat_channel(windows: np.ndarray) -> np.ndarray:
    """Each beat minus the record's median beat: shape relative to the patient's dominant beat."""
    if len(windows) == 0:
        return windows.copy()
    return (windows - np.median(windows, axis=0, keepdims=True)).astype(np.float32)


@dataclass
class BeatSet:
    """Beats of one or more records, ready for a model.

    ``windows`` (n, channels, samples) float32; ``rr`` (n, 4) seconds; ``labels`` (n,)
    AAMI class index or -1 when unknown; ``records`` (n,) record names; ``samples`` (n,)
    beat positions in the record's own sampling rate.
    """

    windows: np.ndarray
    rr: np.ndarray
    labels: np.ndarray
    records: np.ndarray
    samples: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, path) -> None:
        import json

        from .io import atomic_write

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, windows=self.windows, rr=self.rr, labels=self.labels,
                                    records=self.records.astype("U16"), samples=self.samples,
                                    meta=np.array(json.dumps(self.meta)))

        atomic_write(path, write)

    @classmethod
    def load(cls, path) -> "BeatSet":
        import json

        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["windows"], z["rr"], z["labels"], z["records"], z["samples"],
                           json.loads(str(z["meta"])))
        except (OSError, KeyError, ValueError) as exc:
            from .errors import DataError

            raise DataError(f"{path}: not an ecgkit beat dataset ({exc})") from None

    @classmethod
    def concat(cls, sets: list["BeatSet"]) -> "BeatSet":
        if not sets:
            raise ValueError("no beat sets to concatenate")
        return cls(*(np.concatenate([getattr(s, a) for s in sets]) for a in
                     ("windows", "rr", "labels", "records", "samples")), dict(sets[0].meta))


def match_labels(peaks: np.ndarray, ref_samples: np.ndarray, ref_labels: np.ndarray,
                 tolerance: int) -> np.ndarray:
    """Label detected peaks with the class of the nearest reference beat within ``tolerance``; -1 if none."""
    out = np.full(peaks.size, -1, dtype=np.int64)
    if ref_samples.size == 0 or peaks.size == 0:
        return out
    j = np.clip(np.searchsorted(ref_samples, peaks), 1, ref_samples.size - 1)
    left, right = ref_samples[j - 1], ref_samples[j]
    nearest = np.where(np.abs(peaks - left) <= np.abs(peaks - right), j - 1, j)
    if ref_samples.size == 1:
        nearest = np.zeros_like(peaks)
    ok = np.abs(peaks - ref_samples[nearest]) <= tolerance
    out[ok] = ref_labels[nearest[ok]]
    return out


def record_beats(record: Record, peaks: np.ndarray, chain, fs_model: float, before: int, after: int,
                 channels=("beat",), local_beats: int = 10, labels: np.ndarray | None = None) -> BeatSet:
    """Turn one record and its beat positions into a :class:`BeatSet` at the model's rate."""
    from .preprocess import run_chain

    x, fs = run_chain(record.signal, record.fs, chain)
    if abs(fs - fs_model) > 1e-6:
        raise RecordError(f"preprocessing produced {fs} Hz but the model expects {fs_model} Hz; "
                          f"add a resample step")
    pos = np.round(peaks * fs_model / record.fs).astype(np.int64)
    w = beat_windows(x, pos, before, after)
    chans = []
    for c in channels:
        if c == "beat":
            chans.append(w)
        elif c == "beat_minus_record_median":
            chans.append(median_beat_channel(w))
        else:
            raise RecordError(f"unknown input channel {c!r}")
    windows = np.stack(chans, axis=1) if len(w) else np.zeros((0, len(chans), before + after), np.float32)
    rr = rr_features(peaks, record.fs, local_beats)
    if labels is None:
        labels = np.full(peaks.size, -1, dtype=np.int64)
    return BeatSet(windows, rr, labels, np.full(peaks.size, record.name, dtype="U16"), peaks.astype(np.int64))


def labelled_peaks(record: Record, detector, tolerance_s: float = 0.15):
    """Detected peaks of ``record`` and their AAMI labels from the reference annotations.

    Each peak takes the class of the nearest AAMI-classed reference beat within
    ``tolerance_s`` (with the ``reference`` segmenter the match is exact); peaks with no
    such beat, and every peak of a record without ``.atr``, get label -1.
    """
    peaks = detect_beats(detector, record)
    try:
        ref_s, ref_sym = read_annotations(record.path, "atr")
    except RecordError:
        return peaks, np.full(peaks.size, -1, dtype=np.int64)
    ref_samples, ref_labels = reference_beats(ref_s, ref_sym)
    return peaks, match_labels(peaks, ref_samples, ref_labels, int(round(tolerance_s * record.fs)))



def segment_records(records, segmenter: str, out_dir, ext: str = "qrs", *, windows: bool = False,
                    fs_hz: float = 360.0, before_s: float = 0.25, after_s: float = 0.45,
                    chain=None) -> str:
    """Detect beats in each record and write ``<out_dir>/<record>.<ext>`` (every beat ``N``).

    With ``windows`` also write ``<out_dir>/beats.npz``: beat windows (band-passed,
    z-scored, resampled to ``fs_hz``), RR features, AAMI labels (-1 where the record
    has no reference annotation) and record ids, as a :class:`BeatSet`.
    """
    from pathlib import Path

    from .io import write_annotations
    from .preprocess import build_chain
    from .progress import progress_bar
    from .registry import create

    if windows and (before_s < 0 or after_s < 0 or before_s + after_s <= 0):
        from .errors import ConfigError

        raise ConfigError(f"beat window: --before ({before_s} s) and --after ({after_s} s) must be >= 0, "
                          f"and not both 0")
    detector = create("segmenters", segmenter)
    out_dir = Path(out_dir)
    if chain is None:
        chain = build_chain(["bandpass", {"name": "resample", "fs_hz": fs_hz}, "zscore"])
    before, after = int(round(before_s * fs_hz)), int(round(after_s * fs_hz))
    sets, n_beats, n_records = [], 0, 0
    with progress_bar() as bar:
        task = bar.add_task(f"segmenting ({segmenter})", total=len(records) if hasattr(records, "__len__") else None)
        for rec in records:
            if windows:
                peaks, labels = labelled_peaks(rec, detector)
            else:
                peaks = detect_beats(detector, rec)
            if peaks.size == 0:
                import warnings

                warnings.warn(f"record {rec.name}: no beats detected", stacklevel=2)
            write_annotations(out_dir, rec.name, ext, peaks, ["N"] * peaks.size, rec.fs)
            if windows:
                sets.append(record_beats(rec, peaks, chain, fs_hz, before, after, labels=labels))
            n_beats += peaks.size
            n_records += 1
            bar.update(task, advance=1, description=f"segmenting {rec.name}")
    if windows and sets:
        bs = BeatSet.concat(sets)
        bs.meta = {"fs_hz": fs_hz, "before_samples": before, "after_samples": after,
                   "channels": ["beat"], "segmenter": segmenter, "rr_features": list(RR_FEATURES)}
        bs.save(out_dir / "beats.npz")
    return f"{n_beats} beats in {n_records} record(s) -> {out_dir}"
