"""Pan-Tompkins QRS detector.

J. Pan and W. J. Tompkins, "A Real-Time QRS Detection Algorithm",
IEEE Trans. Biomed. Eng. 32(3):230-236, 1985.

The stages, in the order of the paper (and of this file):

1. Band-pass filter, 5-15 Hz (the paper's cascaded integer low- and high-pass filters,
   here a zero-phase Butterworth so that every stage stays aligned with the input).
2. Derivative (the paper's five-point derivative), which gives the QRS slope.
3. Squaring, point by point.
4. Moving-window integration over 150 ms.
5. Fiducial marks: the peaks of the integrated signal, at least 200 ms apart; each is
   paired with the largest band-passed peak (|amplitude|) and the steepest slope near it.
6. Adaptive thresholds, one pair on the integrated signal (SPKI, NPKI -> THRESHOLD I1, I2)
   and one on the filtered signal (SPKF, NPKF -> THRESHOLD F1, F2), learnt on the first
   2 s (learning phase 1) and then updated on every signal or noise peak; a beat must
   exceed both first thresholds. For an irregular rhythm both first thresholds are halved.
7. 200 ms refractory period after each QRS.
8. T-wave discrimination: a peak less than 360 ms after a QRS whose maximal slope is below
   half that of the preceding QRS is a T wave (a noise peak).
9. RR averages (RR AVERAGE1 over the last 8 beats, RR AVERAGE2 over the last 8 beats within
   the RR LOW/HIGH LIMITs, 92 % and 116 % of RR AVERAGE2) and search-back: when no QRS is
   found for the RR MISSED LIMIT (166 % of RR AVERAGE2), the highest peak between the
   second thresholds in that interval is taken as a QRS.
10. The R peak is located at the largest |amplitude| of the band-passed signal near
    each detection.

Every time constant is in seconds, so the detector works at any sampling rate
(tested from 128 to 1000 Hz).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import numpy as np
from scipy import signal as sps

__all__ = ["PanTompkinsParams", "pan_tompkins"]


@dataclass(frozen=True)
class PanTompkinsParams:
    """Parameters of :func:`pan_tompkins` (times in seconds)."""

    low_hz: float = 5.0  #: band-pass lower edge
    high_hz: float = 15.0  #: band-pass upper edge
    filter_order: int = 2  #: Butterworth order per band edge (applied forward and backward)
    integration_s: float = 0.150  #: moving-window integration width
    refractory_s: float = 0.200  #: no second QRS within this time of a QRS
    twave_s: float = 0.360  #: peaks closer than this to a QRS are checked for a T wave
    twave_slope_ratio: float = 0.5  #: a T wave has less than this fraction of the QRS slope
    qrs_halfwidth_s: float = 0.100  #: R peak and slope are searched this far around a mark
    learning_s: float = 2.0  #: learning phase 1: thresholds initialised on this much signal
    signal_weight: float = 0.125  #: SPK/NPK running-estimate weight of a new peak
    searchback_weight: float = 0.25  #: SPK weight of a peak found by search-back
    threshold_fraction: float = 0.25  #: THRESHOLD1 = NPK + fraction * (SPK - NPK)
    second_threshold_ratio: float = 0.5  #: THRESHOLD2 = ratio * THRESHOLD1
    rr_low: float = 0.92  #: RR LOW LIMIT, fraction of RR AVERAGE2
    rr_high: float = 1.16  #: RR HIGH LIMIT
    rr_missed: float = 1.66  #: RR MISSED LIMIT
    initial_rr_s: float = 1.0  #: RR average assumed before the first two beats
    retro: bool = True
    max_decays: int = 0
    spk_cap: float = 0.0
    irregular_mode: str = "paper"
    retro_ratio: float = 0.5
    retro_mwi: float = 0.0


# ---------------------------------------------------------------------------------------
# input checks


def _as_signal(signal) -> np.ndarray:
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1:
        x = np.squeeze(x)
        if x.ndim != 1:
            raise ValueError(f"pan_tompkins expects a 1-D signal, got shape {np.shape(signal)}")
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"pan_tompkins: signal has {bad} non-finite sample(s) (NaN or inf); "
                         "interpolate or remove them first")
    return x


def _params(overrides: dict) -> PanTompkinsParams:
    known = {f.name for f in fields(PanTompkinsParams)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"pan_tompkins: unknown parameter(s) {sorted(unknown)}; "
                        f"expected some of {sorted(known)}")
    return PanTompkinsParams(**overrides)


def _samples(seconds: float, fs: float) -> int:
    return max(int(round(seconds * fs)), 1)


# ---------------------------------------------------------------------------------------
# 1. band-pass filter


def bandpass(x: np.ndarray, fs: float, p: PanTompkinsParams) -> np.ndarray:
    """Zero-phase Butterworth band-pass (``low_hz``-``high_hz``)."""
    high = min(p.high_hz, 0.45 * fs)
    sos = sps.butter(p.filter_order, [p.low_hz, high], btype="bandpass", fs=fs, output="sos")
    padlen = min(3 * (2 * len(sos) + 1), len(x) - 1)
    return sps.sosfiltfilt(sos, x, padlen=padlen)


# ---------------------------------------------------------------------------------------
# 2. derivative


def derivative(x: np.ndarray, fs: float) -> np.ndarray:
    """Five-point derivative, y(n) = fs/8 (-x(n-2) - 2x(n-1) + 2x(n+1) + x(n+2)), centred."""
    kernel = np.array([1.0, 2.0, 0.0, -2.0, -1.0]) * (fs / 8.0)  # reversed for np.convolve
    return np.convolve(x, kernel, mode="same")


# ---------------------------------------------------------------------------------------
# 3. squaring and 4. moving-window integration


def integrate(x: np.ndarray, fs: float, p: PanTompkinsParams) -> np.ndarray:
    """Square, then average over a centred ``integration_s`` window."""
    width = _samples(p.integration_s, fs)
    return np.convolve(x * x, np.full(width, 1.0 / width), mode="same")


# ---------------------------------------------------------------------------------------
# 5. fiducial marks


def fiducial_marks(mwi: np.ndarray, filtered: np.ndarray, slope: np.ndarray, fs: float,
                   p: PanTompkinsParams):
    """Peaks of the integrated signal with their filtered-signal peak and maximal slope.

    Returns ``(marks, peak_i, r_index, peak_f, max_slope)`` arrays, one entry per mark.
    """
    marks, _ = sps.find_peaks(mwi, distance=_samples(p.refractory_s, fs))
    half = _samples(p.qrs_halfwidth_s, fs)
    offsets = np.arange(-half, half + 1)
    win = np.clip(marks[:, None] + offsets[None, :], 0, len(mwi) - 1)
    abs_f = np.abs(filtered)[win]
    r_index = win[np.arange(len(marks)), np.argmax(abs_f, axis=1)]
    return marks, mwi[marks], r_index, abs_f.max(axis=1, initial=0.0), \
        np.abs(slope)[win].max(axis=1, initial=0.0)


# ---------------------------------------------------------------------------------------
# 6.-9. thresholds, refractory period, T-wave discrimination, RR averages and search-back


class _Level:
    """A running signal/noise peak estimate pair and its two thresholds."""

    def __init__(self, spk: float, npk: float, p: PanTompkinsParams):
        self.spk, self.npk, self.p = spk, npk, p

    def signal(self, peak: float, weight: float) -> None:
        if self.p.spk_cap > 0:
            peak = min(peak, self.p.spk_cap * self.spk)
        self.spk = weight * peak + (1.0 - weight) * self.spk

    def noise(self, peak: float) -> None:
        w = self.p.signal_weight
        self.npk = w * peak + (1.0 - w) * self.npk

    def threshold1(self) -> float:
        return self.npk + self.p.threshold_fraction * (self.spk - self.npk)

    def threshold2(self) -> float:
        return self.p.second_threshold_ratio * self.threshold1()


class _RR:
    """RR AVERAGE1 (last 8 RR) and RR AVERAGE2 (last 8 RR within the limits)."""

    def __init__(self, initial: float, p: PanTompkinsParams):
        self.p = p
        self.recent = deque(maxlen=8)
        self.selected = deque(maxlen=8)
        self.average1 = self.average2 = initial
        self.irregular = False

    def add(self, rr: float) -> None:
        p = self.p
        low, high = p.rr_low * self.average2, p.rr_high * self.average2
        self.recent.append(rr)
        self.average1 = sum(self.recent) / len(self.recent)
        in_limits = low < rr < high
        if in_limits or len(self.selected) == 0:
            self.selected.append(rr)
            self.average2 = sum(self.selected) / len(self.selected)
        m = self.p.irregular_mode
        self.irregular = (not in_limits) if m == "paper" else (rr >= high if m == "long" else False)
        regular = all(p.rr_low * self.average2 < r < p.rr_high * self.average2
                      for r in self.recent)
        if regular:
            self.average2 = self.average1
        if m == "paper8":
            self.irregular = not regular

    def missed_limit(self) -> float:
        return self.p.rr_missed * self.average2


def _decide(marks, peak_i, peak_f, max_slope, x_len, fs, mwi, filtered, p):
    """Classify each fiducial mark as QRS or noise. Returns the indices of QRS marks."""
    refractory = _samples(p.refractory_s, fs)
    twave = _samples(p.twave_s, fs)
    learn = min(_samples(p.learning_s, fs), x_len)
    # learning phase 1: signal and noise levels from the first seconds of each signal
    level_i = _Level(0.25 * float(mwi[:learn].max()), 0.5 * float(mwi[:learn].mean()), p)
    abs_f = np.abs(filtered[:learn])
    level_f = _Level(0.25 * float(abs_f.max()), 0.5 * float(abs_f.mean()), p)
    rr = _RR(p.initial_rr_s * fs, p)

    qrs: list[int] = []  # indices into marks
    last = -1  # index of the last QRS mark
    last_slope = 0.0
    undo = None  # state before the last QRS was accepted

    def snapshot():
        return (level_i.spk, level_i.npk, level_f.spk, level_f.npk, deque(rr.recent),
                deque(rr.selected), rr.average1, rr.average2, rr.irregular, last, last_slope)

    def restore(s):
        nonlocal last, last_slope
        (level_i.spk, level_i.npk, level_f.spk, level_f.npk, rr.recent, rr.selected,
         rr.average1, rr.average2, rr.irregular, last, last_slope) = s

    def is_twave(k: int) -> bool:
        return (last >= 0 and marks[k] - marks[last] < twave
                and max_slope[k] < p.twave_slope_ratio * last_slope)

    def accept(k: int, weight: float) -> None:
        nonlocal last, last_slope, undo
        if (p.retro and last >= 0 and marks[k] - marks[last] < twave
                and (last_slope < p.retro_ratio * max_slope[k]
                     or (p.retro_mwi > 0 and peak_i[last] < p.retro_mwi * peak_i[k]))):
            # the previous "QRS" has less than half this one's slope: it was a P or T wave
            prev = last
            restore(undo)
            qrs.pop()
            level_i.noise(peak_i[prev])
            level_f.noise(peak_f[prev])
        undo = snapshot()
        level_i.signal(peak_i[k], weight)
        level_f.signal(peak_f[k], weight)
        if last >= 0:
            rr.add(float(marks[k] - marks[last]))
        qrs.append(k)
        last, last_slope = k, max_slope[k]

    for k in range(len(marks)):
        t = marks[k]
        # search-back: no QRS for RR MISSED LIMIT -> best peak above the second thresholds
        ref_t = marks[last] if last >= 0 else 0
        decays = 0
        while t - ref_t > rr.missed_limit():
            lo = last + 1
            best, best_val = -1, 0.0
            th_i2, th_f2 = level_i.threshold2(), level_f.threshold2()
            for j in range(lo, k):
                if (marks[j] - ref_t >= refractory and peak_i[j] > th_i2
                        and peak_f[j] > th_f2 and peak_i[j] > best_val and not is_twave(j)):
                    best, best_val = j, peak_i[j]
            if best < 0:
                if decays >= p.max_decays:
                    break
                # nothing above the second thresholds: the signal levels are stale
                decays += 1
                level_i.spk *= 0.5
                level_f.spk *= 0.5
                continue
            accept(best, p.searchback_weight)
            ref_t = marks[last]
        if last >= 0 and t - marks[last] < refractory:
            continue
        th_i1, th_f1 = level_i.threshold1(), level_f.threshold1()
        if rr.irregular:
            th_i1, th_f1 = 0.5 * th_i1, 0.5 * th_f1
        if peak_i[k] > th_i1 and peak_f[k] > th_f1 and not is_twave(k):
            accept(k, p.signal_weight)
        else:
            level_i.noise(peak_i[k])
            level_f.noise(peak_f[k])
    return np.asarray(qrs, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# the detector


def pan_tompkins(signal: np.ndarray, fs: float, **params) -> np.ndarray:
    """R-peak sample indices (int64, sorted, unique) of a single-lead ECG.

    ``signal`` is a 1-D array (mV) sampled at ``fs`` Hz; ``params`` override the fields
    of :class:`PanTompkinsParams`. Non-finite samples raise ``ValueError``; a signal too
    short for the filters, or without any QRS-like activity, gives an empty array.
    """
    x = _as_signal(signal)
    fs = float(fs)
    if not np.isfinite(fs) or fs <= 0:
        raise ValueError(f"pan_tompkins: fs must be a positive number, got {fs}")
    p = _params(params)
    empty = np.zeros(0, dtype=np.int64)
    if len(x) <= max(_samples(p.integration_s, fs), 12):
        return empty
    filtered = bandpass(x - np.median(x), fs, p)  # 1.
    slope = derivative(filtered, fs)  # 2.
    mwi = integrate(slope, fs, p)  # 3. + 4.
    scale = float(np.max(mwi))
    if not scale > 0 or not np.isfinite(scale):
        return empty  # flat line
    marks, peak_i, r_index, peak_f, max_slope = fiducial_marks(mwi, filtered, slope, fs, p)  # 5.
    if len(marks) == 0:
        return empty
    chosen = _decide(marks, peak_i, peak_f, max_slope, len(x), fs, mwi, filtered, p)  # 6.-9.
    return np.unique(r_index[chosen]).astype(np.int64)  # 10.
