"""An example third-party ecgkit plugin.

The ``ecgkit`` entry point of this distribution names this module; ecgkit calls the
functions below that are marked ``@ecgkit.hookimpl`` and named after its hooks
(``ecgkit/hookspecs.py``). It registers:

* one segmenter, ``slope-peaks``: the squared slope of the band-passed signal,
  smoothed over 100 ms, with peaks picked by scipy at an adaptive height and a 250 ms
  refractory period, each refined to the largest |amplitude| nearby. Simple, and
  honest about it: use ``pan-tompkins`` for real work;
* one explainer, ``occlusion``: occlusion sensitivity of a beat's window
  (:mod:`ecgkit_example_plugin.occlusion`).
"""

import numpy as np
from scipy import signal as sps

import ecgkit

from .occlusion import occlusion


def slope_peaks(refractory_s: float = 0.25):
    """Squared-slope energy peaks (an example third-party segmenter)."""

    def detect(signal, fs):
        x = np.asarray(signal, dtype=np.float64)
        if x.size < int(fs):  # under a second: too short to set a threshold
            return np.zeros(0, dtype=np.int64)
        sos = sps.butter(2, [5.0, min(15.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
        y = sps.sosfiltfilt(sos, x)
        energy = np.convolve(np.diff(y, prepend=y[0]) ** 2, np.ones(int(0.1 * fs)) / int(0.1 * fs), "same")
        if not energy.any():
            return np.zeros(0, dtype=np.int64)
        height = 0.3 * np.percentile(energy, 99)
        peaks, _ = sps.find_peaks(energy, height=height, distance=max(1, int(refractory_s * fs)))
        half = int(0.08 * fs)
        refined = [p - half + int(np.argmax(np.abs(y[max(p - half, 0):p + half]))) if p >= half else
                   int(np.argmax(np.abs(y[:p + half]))) for p in peaks]
        return np.unique(np.asarray(refined, dtype=np.int64))

    return detect


@ecgkit.hookimpl
def register_segmenters():
    return {"slope-peaks": slope_peaks}


@ecgkit.hookimpl
def register_explainers():
    return {"occlusion": occlusion}
