"""`ecgkit run CONFIG --quick`: the main job's whole pipeline on a few records, as CI runs it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ecgkit.cli import cli

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_produces_every_stage_output(data_dir, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(REPO / "examples" / "mitdb_inter_patient.yaml"), "--quick",
                                   "--data", str(data_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "QRS detection" in report and "Evaluation on" in report
    # QRS detection stage scored the test records against the reference
    assert (out / "segment" / "pan-tompkins" / "100.qrs").is_file()
    # training wrote its run directory; evaluation wrote the EC57 report for both segmenters
    assert (out / "train" / "best.pt").is_file() and (out / "train" / "training_curve.png").is_file()
    for seg in ("reference", "pan-tompkins"):
        rep = json.loads((out / "evaluate" / seg / "report.json").read_text())
        assert rep["records"] == ["100", "233"]
        assert rep["n_beats"] == 2273 + 3079  # every reference beat of 100 and 233 is scored
        assert (out / "evaluate" / seg / "confusion_matrix.png").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["epochs"] == 1 and cfg["data"]["test"] == ["100", "233"]
