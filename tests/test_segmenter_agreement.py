"""benchmarks/ensemble_cv.py --save-calls / --compare: how often a beat's class depends on the segmenter.

Twenty-seventh release (examples/ablations/recentring.md): the measure the re-centring rule was
judged by, kept after the candidate failed.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def ecv(load_benchmark):
    return load_benchmark("ensemble_cv")


def test_calls_are_saved_whole_and_compared(ecv, tmp_path, capsys):
    y = np.array([0, 0, 1, 2, 0, 1])
    recs = np.array(["101", "101", "101", "106", "106", "106"])
    ecv.save_calls(tmp_path / "a.npz", y, recs, np.array([0, 1, 1, 2, 0, 1]))
    ecv.save_calls(tmp_path / "b.npz", y, recs, np.array([0, 0, 1, 1, -2, 2]))
    line = ecv.compare_calls(tmp_path / "a.npz", tmp_path / "b.npz")
    # beat 4 is missed in b (-2): not counted; beats 1, 3 and 5 change class
    assert line.startswith("3 of 5 beats") and "to S in B: 1" in line and "from S in A: 2" in line
    assert "106 2, 101 1" in line
    ecv.main(["--compare", str(tmp_path / "a.npz"), str(tmp_path / "a.npz")])
    assert capsys.readouterr().out.startswith("0 of 6 beats")
    ecv.save_calls(tmp_path / "c.npz", y[:5], recs[:5], y[:5])
    with pytest.raises(SystemExit, match="different reference beats"):
        ecv.compare_calls(tmp_path / "a.npz", tmp_path / "c.npz")
    with pytest.raises(SystemExit, match="cannot read"):
        ecv.compare_calls(tmp_path / "a.npz", tmp_path / "missing.npz")
    with pytest.raises(SystemExit, match="without runs"):
        ecv.main(["runs/x", "--compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    with pytest.raises(SystemExit, match="give the runs"):
        ecv.main([])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz"]   # no temp files left
