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


#: registered name of each shipped checkpoint -> the example config that trains it
SHIPPED = {"transnet": "mitdb_inter_patient.yaml", "transnet-2lead": "mitdb_inter_patient_2lead.yaml"}


def _recipe(cfg: dict) -> dict:
    """A run config without its run directories: where a run writes is not what it trains."""
    return {**cfg, "run_dir": None, "quick": {**cfg["quick"], "run_dir": None}}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request):
    try:
        path = resolve_model_path(request.param)
    except Exception:
        pytest.skip(f"ecgkit-transnet plugin (with its {request.param} weights) not installed")
    if not path.is_file():
        pytest.skip("ecgkit-transnet plugin ships no weights")
    return request.param, path


def test_checkpoint_is_small_and_records_the_config_that_made_it(shipped):
    name, path = shipped
    assert path.stat().st_size < 2_000_000
    ck = read_checkpoint(path)
    example = REPO / "examples" / SHIPPED[name]
    cfg = asdict(load_config(example))
    # keys added to ecgkit after training take their defaults (which keep the old behaviour)
    assert _recipe(asdict(from_dict(RunConfig, json.loads(ck["config"])))) == _recipe(cfg)
    # the plugin's copy of the recipe is the example config
    assert (path.parent / f"{name}.yaml").read_text() == example.read_text()
    # and the software it was trained with (same config + seed give other weights under other versions)
    assert {"python", "platform", "torch", "numpy", "scipy", "wfdb"} <= set(ck["environment"])
    if cfg["train"]["ensemble"] > 1:
        assert ck["encoder"] == "ensemble"
        assert ck["member_seeds"] == [cfg["seed"] + i for i in range(cfg["train"]["ensemble"])]
    assert ck["weights_dtype"] == cfg["train"]["weights_dtype"]
    # the recipe's inference-time step is in the contract the model is run by
    assert ck["input_spec"].get("ventricular_neighbours", 0) == cfg["model"]["ventricular_neighbours"]


def test_the_default_model_reads_one_lead_and_the_other_two():
    try:
        channels = {n: read_checkpoint(resolve_model_path(n))["input_spec"]["channels"] for n in SHIPPED}
    except Exception:
        pytest.skip("ecgkit-transnet plugin (with its weights) not installed")
    assert channels["transnet"] == ["beat", "beat_minus_record_median"]
    assert channels["transnet-2lead"][2:] == ["lead2", "lead2_minus_record_median"]


def test_shipped_model_classifies_a_training_record(shipped, data_dir):
    from ecgkit.datasets import resolve_records
    from ecgkit.evaluate import classify_records
    from ecgkit.models import load_any_model

    model, spec, _ = load_any_model(shipped[0])
    y, p, _, _ = classify_records(model, spec, resolve_records(["119"], str(data_dir)), "reference")
    v = list(spec["classes"]).index("V")
    assert (y == p).mean() > 0.97                      # a random network is far from this
    assert ((p == v) & (y == v)).sum() / (y == v).sum() > 0.95   # 119: ventricular bigeminy


def test_transnet_mix_is_the_two_shipped_models_averaged(data_dir):
    """transnet-mix holds no weights: it names transnet and transnet-2lead, and classifies as their mean."""
    from ecgkit.datasets.mitdb import reference_beats
    from ecgkit.inference import predict_log_proba, prepare_record
    from ecgkit.io import read_annotations, read_record
    from ecgkit.models import load_any_model

    try:
        path = resolve_model_path("transnet-mix")
    except Exception:
        pytest.skip("ecgkit-transnet plugin (with its weights) not installed")
    assert path.stat().st_size < 20_000
    ck = read_checkpoint(path)
    assert ck["weights"] == "members" and ck["state_dict"] == {}
    assert ck["params"]["members"] == [{"model": "transnet"}, {"model": "transnet-2lead"}]
    rec = read_record(data_dir / "119")
    peaks = reference_beats(*read_annotations(rec.path, "atr"))[0][:600]
    lps = []
    for name in ("transnet-mix", "transnet", "transnet-2lead"):
        model, spec, _ = load_any_model(name)
        lps.append(predict_log_proba(model, prepare_record(rec, peaks, spec), spec))
    assert (lps[0].argmax(1) == ((lps[1] + lps[2]) / 2).argmax(1)).all()
    # and the members disagree somewhere, so the mean is not one of them
    assert (lps[1].argmax(1) != lps[2].argmax(1)).any() or np.abs(lps[1] - lps[2]).max() > 0.1
