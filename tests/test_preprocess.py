"""Preprocessing: the band-pass response, zero phase, z-scoring, resampling and chain specs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import signal as sps

from ecgkit.errors import ConfigError, RegistryError
from ecgkit.preprocess import (DEFAULT_CHAIN, bandpass, bandpass_sos, build_chain, ecg_clean, parse_step,
                               preprocess_records, resample, run_chain, zscore)


def sine(freq, fs, seconds, phase=0.0):
    t = np.arange(int(round(seconds * fs))) / fs
    return np.sin(2 * np.pi * freq * t + phase)


def middle(x):
    """The central half, away from filter edge transients."""
    return x[len(x) // 4: 3 * len(x) // 4]


def db(ratio):
    return 20 * np.log10(ratio)


# --- band-pass -----------------------------------------------------------------------------

def test_bandpass_sos_frequency_response_at_360_hz():
    sos = bandpass_sos(360)
    freqs = [0.05, 0.5, 5.0, 10.0, 20.0, 35.0, 60.0]
    _, h = sps.sosfreqz(sos, worN=freqs, fs=360)
    gain = dict(zip(freqs, db(np.abs(h))))
    assert gain[0.5] == pytest.approx(-3.01, abs=0.1)  # Butterworth: -3 dB at the edges (one pass)
    assert gain[35.0] == pytest.approx(-3.01, abs=0.1)
    for f in (5.0, 10.0, 20.0):
        assert gain[f] == pytest.approx(0.0, abs=0.5), f
    assert gain[0.05] < -30
    assert gain[60.0] < -9
    assert sos.shape == (2, 6)  # order 2 per edge: a 4th-order band-pass


def test_bandpass_sos_custom_band_and_bad_band():
    _, h = sps.sosfreqz(bandpass_sos(500, 1.0, 40.0), worN=[1.0, 40.0], fs=500)
    np.testing.assert_allclose(db(np.abs(h)), [-3.01, -3.01], atol=0.1)
    with pytest.raises(ConfigError):
        bandpass_sos(360, 40.0, 1.0)
    with pytest.raises(ConfigError):
        bandpass_sos(360, 0.0, 35.0)
    with pytest.raises(ConfigError, match="above the usable band"):
        bandpass_sos(20, 12.0, 35.0)


def test_applied_bandpass_passes_10_hz_and_rejects_baseline_and_mains():
    fs = 360
    apply = bandpass()
    y10, fs_out = apply(sine(10, fs, 60), fs)
    assert fs_out == fs
    assert np.max(np.abs(middle(y10))) == pytest.approx(1.0, abs=0.02)
    for f in (0.05, 60.0):
        y, _ = apply(sine(f, fs, 120), fs)
        assert db(np.max(np.abs(middle(y)))) < -20, f"{f} Hz not attenuated by 20 dB"


def test_applied_bandpass_is_zero_phase():
    fs = 360
    x = sine(10, fs, 20, phase=0.3)
    y, _ = bandpass()(x, fs)
    # a shift of a single sample at 10 Hz would leave an error of ~0.17
    assert np.max(np.abs(middle(y) - middle(x))) < 0.01
    lags = np.arange(-20, 21)
    m = middle(np.arange(len(x)))
    corr = [np.dot(x[m], y[m + k]) for k in lags]
    assert lags[int(np.argmax(corr))] == 0


@pytest.mark.parametrize("fs", [100, 128, 250, 360, 500, 1000])
def test_bandpass_works_from_100_to_1000_hz(fs):
    x = sine(10, fs, 30) + 2.0 * sine(0.05, fs, 30)  # 10 Hz beat-like content on a baseline wander
    y, fs_out = bandpass()(x, fs)
    assert fs_out == fs and y.shape == x.shape and np.all(np.isfinite(y))
    np.testing.assert_allclose(middle(y), middle(sine(10, fs, 30)), atol=0.05)


@pytest.mark.parametrize("n", [0, 1, 2, 10])
@pytest.mark.parametrize("step", [bandpass(), zscore(), resample(128)])
def test_short_signals_do_not_raise(n, step):
    x = np.linspace(-1, 1, n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        y, fs = step(x, 360.0)
    assert np.all(np.isfinite(y))
    assert fs in (360.0, 128.0)
    if fs == 360.0:
        assert y.shape == (n,)


def test_bandpass_does_not_modify_its_input():
    x = sine(10, 360, 5)
    keep = x.copy()
    bandpass()(x, 360)
    np.testing.assert_array_equal(x, keep)


# --- z-score -------------------------------------------------------------------------------

def test_zscore_gives_mean_0_std_1():
    rng = np.random.default_rng(0)
    x = 3.0 + 0.2 * rng.standard_normal(5000)
    y, fs = zscore()(x, 250.0)
    assert fs == 250.0
    assert y.mean() == pytest.approx(0.0, abs=1e-12)
    assert y.std() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(y, (x - x.mean()) / x.std())


def test_zscore_flat_line_does_not_divide_by_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = zscore()(np.full(100, 4.2), 360.0)
    np.testing.assert_array_equal(y, np.zeros(100))


# --- resampling ----------------------------------------------------------------------------

def dominant_frequency(x, fs):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / fs)[int(np.argmax(spec))]


def test_resample_360_to_128_and_on():
    x = sine(7.0, 360, 45)  # 16200 samples
    y, fs = resample(128)(x, 360.0)
    assert fs == 128.0 and len(y) == 45 * 128
    assert dominant_frequency(y, fs) == pytest.approx(7.0, abs=0.05)
    z, fs2 = resample(250)(y, fs)
    assert fs2 == 250.0 and len(z) == 45 * 250
    assert dominant_frequency(z, fs2) == pytest.approx(7.0, abs=0.05)
    back, fs3 = resample(360)(z, fs2)
    assert fs3 == 360.0 and len(back) == len(x)
    np.testing.assert_allclose(middle(back), middle(x), atol=0.02)


def test_resample_same_rate_is_a_copy():
    x = sine(3, 360, 2)
    y, fs = resample(360)(x, 360.0)
    assert fs == 360.0 and y is not x
    np.testing.assert_array_equal(y, x)


def test_resample_rejects_a_bad_rate():
    with pytest.raises(ConfigError):
        resample(0)
    with pytest.raises(ConfigError):
        resample(-5)


# --- chains --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, spec", [
    ("bandpass", {"name": "bandpass"}),
    ("resample:fs_hz=180", {"name": "resample", "fs_hz": 180}),
    ("bandpass:low_hz=1,high_hz=40.5", {"name": "bandpass", "low_hz": 1, "high_hz": 40.5}),
    (" bandpass : low_hz = 0.5 , order=3 ", {"name": "bandpass", "low_hz": 0.5, "order": 3}),
    ("zscore:eps=1e-6", {"name": "zscore", "eps": 1e-6}),
    ("x:mode=fast", {"name": "x", "mode": "fast"}),
])
def test_parse_step(text, spec):
    got = parse_step(text)
    assert got == spec
    for k, v in spec.items():
        assert type(got[k]) is type(v), k


def test_parse_step_without_equals_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_step("resample:180")


def test_build_chain_and_run_chain():
    chain = build_chain(["bandpass", {"name": "resample", "fs_hz": 180}, parse_step("zscore")])
    assert len(chain) == 3
    y, fs = run_chain(sine(10, 360, 10) + 5.0, 360.0, chain)
    assert fs == 180.0 and len(y) == 1800
    assert y.mean() == pytest.approx(0.0, abs=1e-9) and y.std() == pytest.approx(1.0)


def test_build_chain_unknown_name_is_a_registry_error():
    with pytest.raises(RegistryError, match="'notch'.*bandpass"):
        build_chain(["bandpass", "notch"])
    with pytest.raises(RegistryError, match="bad parameters"):
        build_chain([{"name": "resample", "rate": 100}])
    with pytest.raises(ConfigError, match="no 'name'"):
        build_chain([{"fs_hz": 100}])


def test_default_chain_and_ecg_clean_agree():
    assert DEFAULT_CHAIN == ("bandpass", "zscore")
    x = sine(10, 360, 10) + sine(0.1, 360, 10)
    y, _ = run_chain(x, 360.0, build_chain(list(DEFAULT_CHAIN)))
    np.testing.assert_allclose(ecg_clean(x, 360.0), y)


def test_preprocess_records_writes_npz(tmp_path):
    from ecgkit.io import Record

    rec = Record(signal=sine(10, 360, 10), fs=360.0, lead="MLII", name="rec1", path=str(tmp_path / "rec1"))
    chain = build_chain(["bandpass", {"name": "resample", "fs_hz": 180}])
    paths = preprocess_records([rec], chain, tmp_path / "o")
    assert paths == [tmp_path / "o" / "rec1.npz"]
    with np.load(paths[0]) as z:
        assert float(z["fs"]) == 180.0 and z["signal"].shape == (1800,) and z["signal"].dtype == np.float32
        assert str(z["lead"]) == "MLII"
