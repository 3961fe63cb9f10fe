"""The example third-party plugin, installed for real and found through its entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import wfdb

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "examples" / "ecgkit-example-plugin"
CLI = [sys.executable, "-c", "from ecgkit.cli import main; main()"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """The plugin installed (once per module) into a temporary target directory."""
    work = tmp_path_factory.mktemp("example-plugin")
    # build from a copy, so setuptools' build/ and *.egg-info never land in the repository
    src = work / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    target = work / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--no-input", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "ecgkit_example_plugin" / "__init__.py").is_file()
    return target


def run_cli(plugin_path, *args, data=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_path)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if data is not None:
        env["ECGKIT_DATA"] = str(data)
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)


def test_plugin_segmenter_is_listed(plugin_path):
    proc = run_cli(plugin_path, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    segmenters = {item["name"]: item for item in json.loads(proc.stdout)["segmenters"]}
    assert segmenters["slope-peaks"]["plugin"] == "ecgkit-example-plugin"
    assert segmenters["slope-peaks"]["description"]  # the factory docstring's first line
    assert segmenters["reference"]["plugin"] == "ecgkit"  # the built-ins are still there


def test_plugin_is_absent_without_the_install():
    from ecgkit import list_components

    assert "slope-peaks" not in list_components("segmenters")


def test_plugin_segmenter_runs_through_the_cli(plugin_path, data_dir, tmp_path, beat_samples, matched_fraction):
    out = tmp_path / "out"
    proc = run_cli(plugin_path, "segment", "--records", "100", "--segmenter", "slope-peaks", "--out", out,
                   data=data_dir)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["100.qrs"]
    ann = wfdb.rdann(str(out / "100"), "qrs")
    ref = beat_samples(data_dir / "100")
    tol = int(0.15 * 360)
    # measured on record 100: 100 % both ways
    assert matched_fraction(ann.sample, ref, tol) > 0.98  # sensitivity
    assert matched_fraction(ref, ann.sample, tol) > 0.98  # positive predictivity
    assert set(ann.symbol) == {"N"}
