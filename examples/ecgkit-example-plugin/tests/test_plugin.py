"""Tests of the example plugin, run from this directory: ``python -m pytest tests``.

They register the plugin module explicitly on a fresh plugin manager, so they pass
whether or not the package is installed; ``test_listed_when_installed`` checks the
entry point itself and is skipped when the package is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
import pytest
import torch

import ecgkit_example_plugin
from ecgkit.errors import ConfigError, RegistryError
from ecgkit.plugins import make_plugin_manager
from ecgkit.registry import collect, create


@pytest.fixture
def pm():
    """ecgkit's built-ins plus this plugin, and nothing else that happens to be installed."""
    return make_plugin_manager(entry_points=False, extra=[ecgkit_example_plugin])


def synthetic_ecg(fs: float = 360.0, seconds: float = 10.0, rr_s: float = 0.8):
    """Narrow Gaussian 'R waves' every ``rr_s`` seconds on a slow baseline, in mV."""
    t = np.arange(int(fs * seconds)) / fs
    beats = np.arange(0.5, seconds - 0.5, rr_s)
    x = 0.1 * np.sin(2 * np.pi * 0.3 * t)
    for b in beats:
        x += 1.2 * np.exp(-0.5 * ((t - b) / 0.012) ** 2)
    return x, (beats * fs).round().astype(int)


def test_components_are_registered(pm):
    assert collect("segmenters", pm)["slope-peaks"].plugin == "ecgkit_example_plugin"
    assert collect("explainers", pm)["occlusion"].description.startswith("Occlusion sensitivity")


def test_segmenter_contract(pm):
    fs = 360.0
    x, truth = synthetic_ecg(fs)
    peaks = create("segmenters", "slope-peaks", pm)(x, fs)
    assert peaks.dtype.kind == "i" and np.all(np.diff(peaks) > 0)  # int, sorted ascending
    assert len(peaks) == len(truth)
    assert np.abs(peaks - truth).max() <= int(0.05 * fs)


class Toy(torch.nn.Module):
    """Logit of class 1 = mean of samples 40-59 of channel 0 of each beat; class 0 = its negative."""

    input_spec = {"fs_hz": 360.0}

    def forward(self, windows, rr, pad_mask=None):
        score = windows[:, :, 0, 40:60].mean(-1)
        return torch.stack([-score, score], -1)


def test_explainer_contract_and_locality(pm):
    explain = create("explainers", "occlusion", pm, model=Toy())
    windows = torch.ones(1, 3, 2, 100)   # (1, T, C, S)
    rr = torch.full((1, 3, 4), 0.8)      # (1, T, 4)
    att = explain(windows, rr, 1, 1)
    assert isinstance(att, np.ndarray) and att.shape == tuple(windows[0, 1].shape) == (2, 100)
    assert att[0, 40:60].min() > 0            # zeroing the samples the logit reads lowers it
    assert np.allclose(att[0, :20], 0) and np.allclose(att[0, 80:], 0)
    assert np.allclose(att[1], 0)             # the model never reads channel 1
    assert np.allclose(explain(windows, rr, 1, 0)[0, 40:60], -att[0, 40:60])


def test_explainer_rejects_bad_parameters(pm):
    with pytest.raises(ConfigError):
        create("explainers", "occlusion", pm, model=Toy(), patch_ms=0)
    with pytest.raises(RegistryError):  # unknown parameter: caught by ecgkit before the factory runs
        create("explainers", "occlusion", pm, model=Toy(), width=3)


def test_listed_when_installed():
    try:
        distribution("ecgkit-example-plugin")
    except PackageNotFoundError:
        pytest.skip("ecgkit-example-plugin is not installed (pip install -e .)")
    out = subprocess.run([sys.executable, "-m", "ecgkit.cli", "plugins", "--json"],
                         capture_output=True, text=True, check=True).stdout
    listed = json.loads(out)
    assert "slope-peaks" in {c["name"] for c in listed["segmenters"]}
    assert "occlusion" in {c["name"] for c in listed["explainers"]}
