"""Preprocessing: band-pass filtering, per-record z-scoring and resampling.

Built-in preprocessors, registered through ``register_preprocessors``. Each factory
returns ``apply(signal, fs) -> (signal, fs)`` (the hook contract). The filters are
scipy's: a Butterworth band-pass as second-order sections applied forward and
backward (zero phase), and polyphase resampling.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
from scipy import signal as sps

from . import hookimpl
from .errors import ConfigError

Step = Callable[[np.ndarray, float], tuple[np.ndarray, float]]


def _number(what: str, v, minimum: float = 0.0, strict: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (v <= minimum if strict else v < minimum):
        raise ConfigError(f"{what} must be a number {'>' if strict else '>='} {minimum:g}, got {v!r}")
    return float(v)


def bandpass_sos(fs: float, low_hz: float = 0.5, high_hz: float = 35.0, order: int = 2) -> np.ndarray:
    """Second-order sections of a Butterworth band-pass (``order`` per edge)."""
    nyq = fs / 2.0
    if not 0 < low_hz < high_hz:
        raise ConfigError(f"bandpass: need 0 < low_hz < high_hz, got {low_hz}, {high_hz}")
    high = min(high_hz, 0.95 * nyq)  # a 100 Hz record cannot keep 35 Hz at its Nyquist edge
    if low_hz >= high:
        raise ConfigError(f"bandpass: low_hz {low_hz} is above the usable band of a {fs} Hz signal")
    return sps.butter(order, [low_hz, high], btype="bandpass", fs=fs, output="sos")


def bandpass(low_hz: float = 0.5, high_hz: float = 35.0, order: int = 2) -> Step:
    """Butterworth band-pass, zero-phase (default 0.5-35 Hz)."""
    low_hz, high_hz = _number("bandpass: low_hz", low_hz), _number("bandpass: high_hz", high_hz)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ConfigError(f"bandpass: order must be an integer >= 1, got {order!r}")

    def apply(signal: np.ndarray, fs: float):
        x = np.asarray(signal, dtype=np.float64)
        sos = bandpass_sos(fs, low_hz, high_hz, order)
        # sosfiltfilt needs a few filter lengths of signal; shorter records are padded less
        padlen = min(3 * (2 * len(sos) + 1), max(len(x) - 1, 0))
        if len(x) < 2:
            return x.copy(), fs
        return sps.sosfiltfilt(sos, x, padlen=padlen), fs

    return apply


def zscore(eps: float = 1e-8) -> Step:
    """Subtract the record mean and divide by its standard deviation (per record)."""
    eps = _number("zscore: eps", eps, strict=False)

    def apply(signal: np.ndarray, fs: float):
        x = np.asarray(signal, dtype=np.float64)
        if x.size == 0:
            return x.copy(), fs
        sd = x.std()
        return (x - x.mean()) / (sd if sd > eps else 1.0), fs

    return apply


def resample(fs_hz: float = 360.0) -> Step:
    """Polyphase resampling to ``fs_hz`` (scipy ``resample_poly``)."""
    fs_hz = _number("resample: fs_hz", fs_hz)

    def apply(signal: np.ndarray, fs: float):
        x = np.asarray(signal, dtype=np.float64)
        if abs(fs - fs_hz) < 1e-9 or x.size == 0:
            return x.copy(), float(fs_hz)
        if not 1e-3 <= fs_hz / fs <= 1e3:
            raise ConfigError(f"resample: {fs} Hz -> {fs_hz} Hz is beyond a factor of 1000")
        # exact for decimal rates (360.2 Hz): an approximate ratio drifts away from the beat positions
        ratio = Fraction(str(float(fs_hz))) / Fraction(str(float(fs)))
        if max(ratio.numerator, ratio.denominator) > 100_000:
            ratio = ratio.limit_denominator(100_000)
        return sps.resample_poly(x, ratio.numerator, ratio.denominator), float(fs_hz)

    return apply


@hookimpl
def register_preprocessors():
    return {"bandpass": bandpass, "zscore": zscore, "resample": resample}


def build_chain(steps: Sequence[dict | str]) -> list[Step]:
    """Build preprocessors from ``["bandpass", {"name": "resample", "fs_hz": 180}]``-style specs."""
    from .registry import create

    chain = []
    for spec in steps:
        if isinstance(spec, str):
            spec = {"name": spec}
        spec = dict(spec)
        name = spec.pop("name", None)
        if not name:
            raise ConfigError(f"preprocessor spec {spec} has no 'name'")
        chain.append(create("preprocessors", name, **spec))
    return chain


def run_chain(signal: np.ndarray, fs: float, chain: Sequence[Step]) -> tuple[np.ndarray, float]:
    """Apply preprocessors in order."""
    for step in chain:
        signal, fs = step(signal, fs)
    return signal, fs


#: The default chain: the product's standard cleaning (neurokit2's ``ecg_clean`` analogue).
DEFAULT_CHAIN = ("bandpass", "zscore")


def ecg_clean(signal: np.ndarray, fs: float, low_hz: float = 0.5, high_hz: float = 35.0) -> np.ndarray:
    """Band-pass 0.5-35 Hz (zero-phase Butterworth) then z-score: the standard cleaning."""
    x, _ = bandpass(low_hz, high_hz)(signal, fs)
    x, _ = zscore()(x, fs)
    return x


def parse_step(text: str) -> dict:
    """Parse ``'resample:fs_hz=180'`` or ``'bandpass:low_hz=1,high_hz=40'`` into a spec dict."""
    name, _, rest = text.partition(":")
    spec: dict = {"name": name.strip()}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"preprocessor step {text!r}: expected key=value, got {part!r}")
        try:
            spec[key.strip()] = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            spec[key.strip()] = value.strip()
    return spec


def preprocess_records(records, chain, out_dir):
    """Apply ``chain`` to each record; write ``<out_dir>/<record>.npz`` with ``signal`` and ``fs``."""
    import os
    import tempfile
    from pathlib import Path

    from .progress import progress_bar

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as tmp, progress_bar() as bar:
        task = bar.add_task("preprocessing", total=len(records) if hasattr(records, "__len__") else None)
        staged = []
        for rec in records:  # stage every file; an error or Ctrl-C here leaves nothing in out_dir
            x, fs = run_chain(rec.signal, rec.fs, chain)
            with open(Path(tmp, f"{rec.name}.npz"), "wb") as f:
                np.savez(f, signal=x.astype(np.float32), fs=np.float64(fs), lead=np.array(rec.lead))
            staged.append(rec.name)
            bar.update(task, advance=1, description=f"preprocessing {rec.name}")
        for name in staged:
            os.chmod(Path(tmp, f"{name}.npz"), 0o644)
            os.replace(Path(tmp, f"{name}.npz"), out_dir / f"{name}.npz")
            written.append(out_dir / f"{name}.npz")
    return written
