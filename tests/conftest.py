"""Shared fixtures: where the MIT-BIH data lives, and copies of records to damage.

The data directory comes from ``$ECGKIT_DATA`` (the Makefile and CI set it), else
``<repo>/../shared/data/mitdb``. Tests that need it are skipped when it is absent.
The data is never copied into the repository: a test that needs to modify a record
copies it into its own ``tmp_path`` with :func:`mitdb_record`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_data() -> Path | None:
    env = os.environ.get("ECGKIT_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "mitdb")
    for c in candidates:
        if (c / "100.hea").is_file():
            return c.resolve()
    return None


DATA = _find_data()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The MIT-BIH Arrhythmia Database directory; skips the test when it is absent."""
    if DATA is None:
        pytest.skip("MIT-BIH data not found: set ECGKIT_DATA to the mitdb directory")
    return DATA


@pytest.fixture
def mitdb_record(data_dir, tmp_path):
    """``mitdb_record("100")`` copies record 100 (.hea/.dat/.atr) into ``tmp_path``.

    Returns the record path without extension. The copies are writable (the shared data
    is read-only), so a test can truncate or rewrite them. ``dest`` picks another folder.
    """

    def copy(name: str, dest: Path | None = None, extensions=("hea", "dat", "atr")) -> Path:
        dest = Path(dest) if dest else tmp_path
        dest.mkdir(parents=True, exist_ok=True)
        for ext in extensions:
            src = data_dir / f"{name}.{ext}"
            if src.is_file():
                shutil.copyfile(src, dest / src.name)  # copyfile: no read-only mode bits
        return dest / name

    return copy


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never let a test read or fill the real user cache (~/.cache/ecgkit)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


def _beat_samples(record_path) -> np.ndarray:
    """Sample positions of the beat annotations of ``<record_path>.atr`` (read by wfdb directly)."""
    import wfdb

    from ecgkit.datasets.mitdb import BEAT_SYMBOLS

    ann = wfdb.rdann(str(record_path), "atr")
    return np.asarray([s for s, sym in zip(ann.sample, ann.symbol) if sym in BEAT_SYMBOLS], dtype=np.int64)


def _matched_fraction(found, wanted, tolerance: int) -> float:
    """Fraction of ``wanted`` positions with a ``found`` position within ``tolerance`` samples."""
    found = np.sort(np.asarray(found, dtype=np.int64))
    wanted = np.asarray(wanted, dtype=np.int64)
    if wanted.size == 0:
        return 1.0
    if found.size == 0:
        return 0.0
    j = np.searchsorted(found, wanted)
    left = found[np.clip(j - 1, 0, found.size - 1)]
    right = found[np.clip(j, 0, found.size - 1)]
    dist = np.minimum(np.abs(wanted - left), np.abs(wanted - right))
    return float(np.mean(dist <= tolerance))


@pytest.fixture(scope="session")
def beat_samples():
    """``beat_samples(record_path)``: the reference beat positions of a record's .atr."""
    return _beat_samples


@pytest.fixture(scope="session")
def matched_fraction():
    """``matched_fraction(found, wanted, tolerance)``: share of ``wanted`` matched within tolerance."""
    return _matched_fraction


def _load_benchmark(name: str):
    """A fresh module object of ``benchmarks/<name>.py`` (registered in ``sys.modules`` under a private name while
    it runs, so its dataclasses can look their module up)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("ensemble_cv")``: a benchmark script as a module (each call a fresh one)."""
    return _load_benchmark
