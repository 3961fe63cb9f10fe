"""Pan-Tompkins QRS detector.

J. Pan and W. J. Tompkins, "A Real-Time QRS Detection Algorithm",
IEEE Trans. Biomed. Eng. 32(3):230-236, 1985.

The stages, in the order of the paper and of this file:

1. Band-pass filter, 5-15 Hz. The paper cascades integer low- and high-pass filters
   designed for 200 Hz; here a Butterworth band-pass run forward and backward (zero
   phase), so that every later stage stays aligned in time with the input.
2. Derivative: the paper's five-point derivative, which brings out the QRS slopes.
3. Squaring, point by point.
4. Moving-window integration over 150 ms (centred, again to keep the alignment).
5. Fiducial marks: the peaks of the integrated signal, at least 200 ms apart. Each mark
   carries its integrated-signal peak (PEAKI), the largest |amplitude| of the filtered
   signal near it (PEAKF) and the steepest slope near it.
6. Adaptive thresholds: running signal and noise peak levels on the integrated signal
   (SPKI, NPKI -> THRESHOLD I1, I2) and on the filtered signal (SPKF, NPKF -> THRESHOLD
   F1, F2), set in learning phase 1 (the first 2 s) and updated on every peak. A QRS
   must exceed both first thresholds. For an irregular heart rate both first thresholds
   are halved.
7. Refractory period: no QRS within 200 ms of another.
8. T-wave discrimination: a peak within 360 ms of the previous QRS whose maximal slope
   is less than half that of that QRS is a T wave (a noise peak).
9. RR-interval averages and search-back: RR AVERAGE1 over the last 8 beats, RR AVERAGE2
   over the last 8 RR intervals within the RR LOW/HIGH LIMITs (92 % / 116 % of RR
   AVERAGE2); the rate is regular when the last 8 RR intervals all lie within the limits
   (then RR AVERAGE2 = RR AVERAGE1). When no QRS is found for the RR MISSED LIMIT (166 %
   of RR AVERAGE2), the highest peak between the second thresholds in that interval is
   taken as a QRS (SPK updated with weight 0.25 instead of 0.125).
10. R-peak location: the largest |amplitude| of the band-passed signal within 100 ms of
    each detected mark.
11. Fiducial refinement (not in the paper): each R peak moves to the largest |amplitude| of
    the signal band-passed at 8-20 Hz (second order, zero phase) within 11 ms of it. Against
    the MIT-BIH reference marks of DS1 this puts 88.6 % of the beats at the annotators' own
    sample instead of 71.0 % (97.6 % within one sample instead of 94.7 %), so a classifier
    trained on windows cut at the reference marks sees nearly the same windows end to end
    (examples/ablations/pan_tompkins_fiducial.md). ``refine_s=0`` switches it off.

Two refinements, both in the spirit of the paper's T-wave rule, are applied in stages 6-8
(each can be switched off through the parameters):

* the halving of the first thresholds for an irregular rate is not applied within 360 ms
  of the last QRS (it is meant to recover beats missed in long RR intervals, and
  otherwise lets T waves through once the rate is irregular);
* P-wave discrimination: when a QRS is found within 300 ms after the previous one and
  that previous one has the gentler maximal slope, the previous one is taken back as a
  noise peak (a tall P wave, typically, detected just before its QRS).

Every time constant is given in seconds, so the detector works at any sampling rate
(tested from 128 to 1000 Hz).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import numpy as np
from scipy import signal as sps
from scipy.ndimage import uniform_filter1d

__all__ = ["PanTompkinsParams", "pan_tompkins"]


@dataclass(frozen=True)
class PanTompkinsParams:
    """Parameters of :func:`pan_tompkins`; times in seconds, the paper's values where it
    gives them."""

    low_hz: float = 5.0  #: band-pass lower edge
    high_hz: float = 15.0  #: band-pass upper edge
    filter_order: int = 1  #: Butterworth order per band edge (run forward and backward)
    integration_s: float = 0.150  #: moving-window integration width
    learning_s: float = 2.0  #: learning phase 1: thresholds initialised on this much signal
    qrs_halfwidth_s: float = 0.100  #: PEAKF, slope and R peak are searched this far around a mark
    signal_weight: float = 0.125  #: weight of a new peak in SPK / NPK
    searchback_weight: float = 0.25  #: weight of a search-back peak in SPK
    threshold_fraction: float = 0.25  #: THRESHOLD1 = NPK + fraction * (SPK - NPK)
    second_threshold_ratio: float = 0.5  #: THRESHOLD2 = ratio * THRESHOLD1
    irregular_ratio: float = 0.5  #: THRESHOLD1 factor for an irregular rate
    refractory_s: float = 0.200  #: no QRS within this time of the previous one
    twave_s: float = 0.360  #: T-wave discrimination window
    twave_slope_ratio: float = 0.5  #: a T wave has less than this fraction of the QRS slope
    rr_low: float = 0.92  #: RR LOW LIMIT, fraction of RR AVERAGE2
    rr_high: float = 1.16  #: RR HIGH LIMIT
    rr_missed: float = 1.66  #: RR MISSED LIMIT
    rr_beats: int = 8  #: beats in the RR averages
    initial_rr_s: float = 1.0  #: RR average assumed until learning phase 2 (two beats) ends
    irregular_after_twave: bool = True  #: halve THRESHOLD1 only after the T-wave window
    pwave_s: float = 0.300  #: P-wave discrimination window (0 switches the rule off)
    refine_s: float = 0.011  #: 11. fiducial refinement: marks move this far at most (0 switches it off)
    refine_low_hz: float = 8.0  #: 11. band-pass of the refinement, lower edge
    refine_high_hz: float = 20.0  #: 11. upper edge
    refine_order: int = 2  #: 11. Butterworth order per band edge (run forward and backward)


# ---------------------------------------------------------------------------------------
# input checks


def _as_signal(signal) -> np.ndarray:
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1:
        if sum(n > 1 for n in x.shape) > 1:
            raise ValueError(f"pan_tompkins: expected a 1-D signal, got shape {x.shape}")
        x = x.reshape(-1)  # a scalar, a column or a row
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"pan_tompkins: the signal has {bad} non-finite sample(s) (NaN or "
                         "inf); interpolate or drop them before detection")
    return x


def _params(overrides: dict) -> PanTompkinsParams:
    known = {f.name for f in fields(PanTompkinsParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"pan_tompkins: unknown parameter(s) {unknown}; "
                        f"known: {sorted(known)}")
    return PanTompkinsParams(**overrides)


def _samples(seconds: float, fs: float) -> int:
    """A duration in samples, at least one."""
    return max(int(round(seconds * fs)), 1)


# ---------------------------------------------------------------------------------------
# 1. band-pass filter


def bandpass(x: np.ndarray, fs: float, p: PanTompkinsParams) -> np.ndarray:
    """Zero-phase Butterworth band-pass, ``low_hz``-``high_hz`` (kept below Nyquist)."""
    high = min(p.high_hz, 0.45 * fs)
    low = min(p.low_hz, 0.5 * high)
    sos = sps.butter(p.filter_order, [low, high], btype="bandpass", fs=fs, output="sos")
    padlen = min(3 * (2 * len(sos) + 1), len(x) - 1)
    return sps.sosfiltfilt(sos, x, padlen=padlen)


# ---------------------------------------------------------------------------------------
# 2. derivative


def derivative(x: np.ndarray, fs: float) -> np.ndarray:
    """Five-point derivative y(n) = fs/8 [-x(n-2) - 2x(n-1) + 2x(n+1) + x(n+2)], centred."""
    kernel = np.array([1.0, 2.0, 0.0, -2.0, -1.0]) * (fs / 8.0)  # np.convolve flips it
    return np.convolve(x, kernel, mode="same")


# ---------------------------------------------------------------------------------------
# 3. squaring


def square(x: np.ndarray) -> np.ndarray:
    return x * x


# ---------------------------------------------------------------------------------------
# 4. moving-window integration


def integrate(x: np.ndarray, fs: float, p: PanTompkinsParams) -> np.ndarray:
    """Mean over a centred window of ``integration_s``."""
    return uniform_filter1d(x, _samples(p.integration_s, fs), mode="constant")


# ---------------------------------------------------------------------------------------
# 5. fiducial marks


@dataclass
class _Marks:
    """Fiducial marks (peaks of the integrated signal) and what is measured around each."""

    at: np.ndarray  #: sample index of the integrated-signal peak
    peak_i: np.ndarray  #: PEAKI, the integrated-signal peak
    peak_f: np.ndarray  #: PEAKF, max |filtered| within qrs_halfwidth_s
    slope: np.ndarray  #: max |derivative| within qrs_halfwidth_s
    r_peak: np.ndarray  #: sample index of PEAKF (the R-peak location)


def fiducial_marks(mwi: np.ndarray, filtered: np.ndarray, slope: np.ndarray, fs: float,
                   p: PanTompkinsParams) -> _Marks:
    at, _ = sps.find_peaks(mwi, distance=_samples(p.refractory_s, fs))
    half = _samples(p.qrs_halfwidth_s, fs)
    window = np.clip(at[:, None] + np.arange(-half, half + 1)[None, :], 0, len(mwi) - 1)
    abs_f = np.abs(filtered)[window]
    r_peak = window[np.arange(len(at)), np.argmax(abs_f, axis=1)] if len(at) else at
    return _Marks(at=at, peak_i=mwi[at], peak_f=abs_f.max(axis=1, initial=0.0),
                  slope=np.abs(slope)[window].max(axis=1, initial=0.0), r_peak=r_peak)


# ---------------------------------------------------------------------------------------
# 6. adaptive thresholds


class _Levels:
    """Running signal and noise peak levels (SPK, NPK) of one signal and its thresholds."""

    def __init__(self, spk: float, npk: float, p: PanTompkinsParams):
        self.spk, self.npk, self.p = spk, npk, p

    def signal_peak(self, peak: float, weight: float) -> None:
        self.spk = weight * peak + (1.0 - weight) * self.spk

    def noise_peak(self, peak: float) -> None:
        w = self.p.signal_weight
        self.npk = w * peak + (1.0 - w) * self.npk

    def threshold1(self) -> float:
        return self.npk + self.p.threshold_fraction * (self.spk - self.npk)

    def threshold2(self) -> float:
        return self.p.second_threshold_ratio * self.threshold1()


# ---------------------------------------------------------------------------------------
# 9. (used by 6.-8.) RR-interval averages


class _RRAverages:
    """RR AVERAGE1, RR AVERAGE2, their limits and the regular / irregular verdict."""

    def __init__(self, initial: float, p: PanTompkinsParams):
        self.p = p
        self.recent: deque = deque(maxlen=p.rr_beats)  # for RR AVERAGE1
        self.selected: deque = deque(maxlen=p.rr_beats)  # within the limits, RR AVERAGE2
        self.average1 = self.average2 = initial
        self.irregular = False

    def _within(self, rr: float) -> bool:
        return self.p.rr_low * self.average2 < rr < self.p.rr_high * self.average2

    def add(self, rr: float) -> None:
        self.recent.append(rr)
        self.average1 = sum(self.recent) / len(self.recent)
        if self._within(rr) or not self.selected:  # the first RR starts learning phase 2
            self.selected.append(rr)
            self.average2 = sum(self.selected) / len(self.selected)
        self.irregular = not all(self._within(r) for r in self.recent)
        if not self.irregular:
            self.average2 = self.average1

    def missed_limit(self) -> float:
        return self.p.rr_missed * self.average2

    def copy(self) -> "_RRAverages":
        other = _RRAverages(self.average1, self.p)
        other.recent, other.selected = deque(self.recent, self.p.rr_beats), \
            deque(self.selected, self.p.rr_beats)
        other.average1, other.average2, other.irregular = \
            self.average1, self.average2, self.irregular
        return other


# ---------------------------------------------------------------------------------------
# 6.-9. the decision on each fiducial mark


class _Decision:
    """Walks the fiducial marks in time order and keeps the QRS complexes."""

    def __init__(self, marks: _Marks, mwi: np.ndarray, filtered: np.ndarray, fs: float,
                 p: PanTompkinsParams):
        self.m, self.p = marks, p
        self.refractory = _samples(p.refractory_s, fs)
        self.twave = _samples(p.twave_s, fs)
        self.pwave = int(round(p.pwave_s * fs))
        # learning phase 1: levels from the first seconds of the integrated and filtered signals
        learn = min(_samples(p.learning_s, fs), len(mwi))
        abs_f = np.abs(filtered[:learn])
        self.level_i = _Levels(0.25 * float(mwi[:learn].max()), 0.5 * float(mwi[:learn].mean()), p)
        self.level_f = _Levels(0.25 * float(abs_f.max()), 0.5 * float(abs_f.mean()), p)
        self.rr = _RRAverages(p.initial_rr_s * fs, p)  # learning phase 2 ends with two beats
        self.qrs: list[int] = []  # indices of the marks taken as QRS complexes
        self._undo = None  # the state before the last QRS was accepted (P-wave rule)

    # -- state ---------------------------------------------------------------------------

    @property
    def last(self) -> int:
        return self.qrs[-1] if self.qrs else -1

    def _state(self):
        return (self.level_i.spk, self.level_i.npk, self.level_f.spk, self.level_f.npk,
                self.rr.copy())

    def _restore(self, state) -> None:
        self.level_i.spk, self.level_i.npk, self.level_f.spk, self.level_f.npk, self.rr = state

    def since_last(self, k: int) -> float:
        return self.m.at[k] - self.m.at[self.last] if self.qrs else np.inf

    # -- 8. T-wave discrimination ----------------------------------------------------------

    def is_t_wave(self, k: int) -> bool:
        return (self.since_last(k) < self.twave
                and self.m.slope[k] < self.p.twave_slope_ratio * self.m.slope[self.last])

    # -- classification ------------------------------------------------------------------

    def noise(self, k: int) -> None:
        self.level_i.noise_peak(self.m.peak_i[k])
        self.level_f.noise_peak(self.m.peak_f[k])

    def accept(self, k: int, weight: float) -> None:
        m = self.m
        if (self.qrs and self.since_last(k) < self.pwave
                and m.slope[self.last] < m.slope[k]):
            # P-wave discrimination: the previous "QRS" was a gentler wave just before this one
            self._restore(self._undo)
            self.noise(self.qrs.pop())
        self._undo = self._state()
        self.level_i.signal_peak(m.peak_i[k], weight)
        self.level_f.signal_peak(m.peak_f[k], weight)
        if self.qrs:
            self.rr.add(float(m.at[k] - m.at[self.last]))
        self.qrs.append(k)

    # -- 9. search-back ------------------------------------------------------------------

    def search_back(self, k: int) -> None:
        """While the RR MISSED LIMIT has passed before mark k, recover the best missed peak."""
        m = self.m
        while True:
            start = m.at[self.last] if self.qrs else 0
            if m.at[k] - start <= self.rr.missed_limit():
                return
            th_i2, th_f2 = self.level_i.threshold2(), self.level_f.threshold2()
            best, best_peak = -1, 0.0
            for j in range(self.last + 1, k):
                if (m.at[j] - start >= self.refractory and m.peak_i[j] > th_i2
                        and m.peak_f[j] > th_f2 and m.peak_i[j] > best_peak
                        and not self.is_t_wave(j)):
                    best, best_peak = j, m.peak_i[j]
            if best < 0:
                return
            self.accept(best, self.p.searchback_weight)

    # -- the walk ------------------------------------------------------------------------

    def run(self) -> np.ndarray:
        m, p = self.m, self.p
        for k in range(len(m.at)):
            self.search_back(k)
            since = self.since_last(k)
            if since < self.refractory:  # 7. refractory period
                continue
            th_i1, th_f1 = self.level_i.threshold1(), self.level_f.threshold1()
            if self.rr.irregular and (since >= self.twave or not p.irregular_after_twave):
                th_i1 *= p.irregular_ratio
                th_f1 *= p.irregular_ratio
            if m.peak_i[k] > th_i1 and m.peak_f[k] > th_f1 and not self.is_t_wave(k):
                self.accept(k, p.signal_weight)
            else:
                self.noise(k)
        return np.asarray(self.qrs, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# 11. fiducial refinement


def refine_peaks(x: np.ndarray, peaks: np.ndarray, fs: float, p: PanTompkinsParams) -> np.ndarray:
    """Each of ``peaks`` moved to the largest |amplitude| of ``x`` band-passed at ``refine_low_hz``-
    ``refine_high_hz`` within ``refine_s`` of it (sorted, unique; ``refine_s=0``: as given)."""
    peaks = np.asarray(peaks, dtype=np.int64)
    if p.refine_s <= 0 or peaks.size == 0:
        return peaks
    r = _samples(p.refine_s, fs)
    band = PanTompkinsParams(low_hz=p.refine_low_hz, high_hz=p.refine_high_hz, filter_order=p.refine_order)
    f = np.abs(bandpass(x, fs, band))
    window = np.clip(peaks[:, None] + np.arange(-r, r + 1)[None, :], 0, len(x) - 1)
    return np.unique(window[np.arange(peaks.size), np.argmax(f[window], axis=1)])


# ---------------------------------------------------------------------------------------
# the detector (10. R-peak location and 11. its refinement at the end)


def pan_tompkins(signal: np.ndarray, fs: float, **params) -> np.ndarray:
    """R-peak sample indices (int64, sorted, unique) of a single-lead ECG.

    ``signal`` is a 1-D array (mV) sampled at ``fs`` Hz; ``params`` override fields of
    :class:`PanTompkinsParams`. Non-finite samples raise ``ValueError``. A signal too
    short for the filters, or without any QRS-like activity (a flat line), gives an
    empty array.
    """
    x = _as_signal(signal)
    fs = float(fs)
    if not (np.isfinite(fs) and fs > 0):
        raise ValueError(f"pan_tompkins: fs must be a positive finite number, got {fs}")
    p = _params(params)
    empty = np.zeros(0, dtype=np.int64)
    if len(x) <= max(_samples(p.integration_s, fs), 12):
        return empty
    # the detector is scale-invariant: work in units of the largest excursion (no overflow)
    scale = float(np.max(np.abs(x)))
    if scale > 0.0:
        x = x / scale
    x = x - np.median(x)
    if not np.any(x):
        return empty  # a flat line
    filtered = bandpass(x, fs, p)  # 1.
    slope = derivative(filtered, fs)  # 2.
    mwi = integrate(square(slope), fs, p)  # 3. and 4.
    if not float(mwi.max()) > 0.0:
        return empty  # a flat line
    marks = fiducial_marks(mwi, filtered, slope, fs, p)  # 5.
    if len(marks.at) == 0:
        return empty
    chosen = _Decision(marks, mwi, filtered, fs, p).run()  # 6.-9.
    return refine_peaks(x, np.unique(marks.r_peak[chosen]), fs, p)  # 10. and 11.
