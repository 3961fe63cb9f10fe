"""The shipped ECG-TransNet checkpoint: small, reproducible from its config, and trained.

DS1 records only (the model was trained on them): these check the artefact, not the
inter-patient figures, which come from benchmarks/inter_patient.py on DS2.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from ecgkit.checkpoint import read_checkpoint, resolve_model_path
from ecgkit.config import RunConfig, from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    try:
        path = resolve_model_path("transnet")
    except Exception:
        pytest.skip("ecgkit-transnet plugin (with its weights) not installed")
    if not path.is_file():
        pytest.skip("ecgkit-transnet plugin ships no weights")
    return path


def test_checkpoint_is_small_and_records_the_config_that_made_it(shipped):
    assert shipped.stat().st_size < 2_000_000
    ck = read_checkpoint(shipped)
    cfg = asdict(load_config(REPO / "examples" / "mitdb_inter_patient.yaml"))
    # keys added to ecgkit after training take their defaults (which keep the old behaviour)
    assert asdict(from_dict(RunConfig, json.loads(ck["config"]))) == cfg
    # the plugin's copy of the recipe is the example config
    assert (shipped.parent / "transnet.yaml").read_text() == (REPO / "examples" / "mitdb_inter_patient.yaml").read_text()
    # and the software it was trained with (same config + seed give other weights under other versions)
    assert {"python", "platform", "torch", "numpy", "scipy", "wfdb"} <= set(ck["environment"])
    if cfg["train"]["ensemble"] > 1:
        assert ck["encoder"] == "ensemble"
        assert ck["member_seeds"] == [cfg["seed"] + i for i in range(cfg["train"]["ensemble"])]
    assert ck["weights_dtype"] == cfg["train"]["weights_dtype"]


def test_shipped_model_classifies_a_training_record(shipped, data_dir):
    from ecgkit.datasets import resolve_records
    from ecgkit.evaluate import classify_records
    from ecgkit.models import load_any_model

    model, spec, _ = load_any_model("transnet")
    y, p, _, _ = classify_records(model, spec, resolve_records(["119"], str(data_dir)), "reference")
    v = list(spec["classes"]).index("V")
    assert (y == p).mean() > 0.97                      # a random network is far from this
    assert ((p == v) & (y == v)).sum() / (y == v).sum() > 0.95   # 119: ventricular bigeminy
