"""The seed ensemble encoder: averaging, checkpoints (float16 storage), training, explanation, ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ecgkit.checkpoint import load_model, read_checkpoint, save_checkpoint
from ecgkit.ensemble import Ensemble
from ecgkit.errors import ConfigError, RegistryError
from ecgkit.registry import create, list_components

PARAMS = {"d_model": 32, "n_layers": 1, "block_channels": [16, 16]}
MEMBERS = [{"encoder": "transnet", "params": PARAMS}] * 2


def _inputs(T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, T, 2, 144, generator=g), 0.6 + 0.4 * torch.rand(2, T, 4, generator=g)


@pytest.fixture(scope="module")
def ens():
    torch.manual_seed(0)
    return create("encoders", "ensemble", members=MEMBERS).eval()


def test_registered_in_core_and_averages_member_log_probabilities(ens):
    assert "ensemble" in list_components("encoders")
    w, rr = _inputs()
    with torch.no_grad():
        out = ens(w, rr)
        each = [torch.log_softmax(m(w, rr), -1) for m in ens.members]
    assert out.shape == (2, 12, 5)
    torch.testing.assert_close(out, (each[0] + each[1]) / 2)
    assert not torch.allclose(each[0], each[1])  # the members really differ (own initialisations)
    assert ens.input_spec["classes"] == ens.members[0].input_spec["classes"]


def test_members_must_share_the_input_contract():
    a = create("encoders", "transnet", **PARAMS)
    b = create("encoders", "transnet", **{**PARAMS, "fs_hz": 250.0})
    with pytest.raises(ConfigError, match="member 2 .*fs_hz"):
        Ensemble([a, b])
    with pytest.raises(ConfigError, match="non-empty"):
        create("encoders", "ensemble", members=[])
    with pytest.raises(ConfigError, match="member 1"):
        create("encoders", "ensemble", members=["transnet"])
    with pytest.raises(ConfigError, match="nope"):
        create("encoders", "ensemble", members=[{"encoder": "transnet", "params": {"nope": 1}}])
    with pytest.raises(RegistryError, match="unknown"):
        create("encoders", "ensemble", members=[{"encoder": "no-such-encoder", "params": {}}])


def test_float16_checkpoint_is_half_the_size_and_predicts_the_same(ens, tmp_path):
    params = {"members": MEMBERS}
    p32 = save_checkpoint(tmp_path / "e32.pt", ens, encoder="ensemble", params=params)
    p16 = save_checkpoint(tmp_path / "e16.pt", ens, encoder="ensemble", params=params, dtype="float16")
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    ck = read_checkpoint(p16)
    assert ck["weights_dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.is_floating_point())
    m16, _ = load_model(str(p16))
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    w, rr = _inputs(T=40, seed=1)
    with torch.no_grad():
        a, b = ens(w, rr), m16(w, rr)
    assert (a - b).abs().max() < 2e-2
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.97
    with pytest.raises(Exception, match="float16"):
        save_checkpoint(tmp_path / "bad.pt", ens, encoder="ensemble", params=params, dtype="int4")


def test_gradcam_of_an_ensemble_is_the_mean_of_its_members(ens):
    w, rr = _inputs(T=8, seed=2)
    cam = create("explainers", "gradcam", model=ens)
    a = cam(w[:1], rr[:1], 3, 2)
    parts = [create("explainers", "gradcam", model=m)(w[:1], rr[:1], 3, 2) for m in ens.members]
    assert a.shape == (2, 144)
    np.testing.assert_allclose(a, (parts[0] + parts[1]) / 2, rtol=1e-5, atol=1e-6)
    assert cam.layer_name.startswith("members.*.tokenizer.")


def test_training_an_ensemble_reproduces_each_seed(data_dir, tmp_path):
    from ecgkit.config import load_config
    from ecgkit.train import train

    base = {"seed": 5, "data": {"train": ["101", "106"], "val": [], "test": ["100"]},
            "model": {"name": "transnet", "params": PARAMS},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "seq_len": 8, "threads": 1}}

    def cfg(**train):
        p = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
        p.write_text(yaml.safe_dump({**base, "train": {**base["train"], **train}}))
        return load_config(p)

    out = train(cfg(ensemble=2, weights_dtype="float16"), tmp_path / "ens", data_dir=data_dir,
                log=lambda *_: None, show_progress=False)
    ck = read_checkpoint(out)
    assert ck["encoder"] == "ensemble" and ck["member_seeds"] == [5, 6] and ck["weights_dtype"] == "float16"
    assert [m["encoder"] for m in ck["params"]["members"]] == ["transnet", "transnet"]
    single = cfg()
    single.seed = 6
    alone = read_checkpoint(train(single, tmp_path / "seed6", data_dir=data_dir, log=lambda *_: None,
                                  show_progress=False))["state_dict"]
    for k, v in alone.items():  # member 2 is exactly the seed-6 model (stored at half precision)
        if v.is_floating_point():
            torch.testing.assert_close(ck["state_dict"][f"members.1.{k}"].float(), v.half().float())
    hist = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    assert sorted({h["member"] for h in hist}) == [1, 2]
    assert (tmp_path / "ens" / "training_curve.png").stat().st_size > 0
    model, _ = load_model(str(out))
    assert isinstance(model, Ensemble) and len(model.members) == 2


def test_resume_of_an_ensemble_needs_its_first_member(tmp_path):
    from ecgkit.config import load_config
    from ecgkit.train import train

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"ensemble": 2}}))
    with pytest.raises(ConfigError, match="member1"):
        train(load_config(p), tmp_path / "run", resume=True, log=lambda *_: None, show_progress=False)


def test_config_rejects_bad_ensemble_keys(tmp_path):
    from ecgkit.config import load_config

    for train, msg in (({"ensemble": 0}, "train.ensemble"), ({"weights_dtype": "int8"}, "weights_dtype")):
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump({"train": train}))
        with pytest.raises(ConfigError, match=msg):
            load_config(p)


def test_onnx_export_of_an_ensemble_matches_torch(ens, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ecgkit.models import load_any_model
    from ecgkit.quantize import export_onnx

    ck = save_checkpoint(tmp_path / "e.pt", ens, encoder="ensemble", params={"members": MEMBERS})
    out = export_onnx(str(ck), tmp_path / "e.onnx")
    model, spec, info = load_any_model(str(out))
    w, rr = _inputs(T=20, seed=3)
    with torch.no_grad():
        ref = ens(w, rr).numpy()
    got = np.asarray(model(w, rr))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert spec["classes"] == ens.input_spec["classes"]
