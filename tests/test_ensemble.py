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
    c = create("encoders", "transnet", **{**PARAMS, "record_rr_stat": "median"})  # reads another RR column 3
    with pytest.raises(ConfigError, match="member 2 .*record_rr_stat"):
        Ensemble([a, c])
    with pytest.raises(ConfigError, match="record_rr_stat must be one of mean, median"):
        create("encoders", "transnet", **{**PARAMS, "record_rr_stat": "mode"})
    assert "record_rr_stat" not in a.input_spec  # the default keeps the shipped checkpoints' contract
    assert c.input_spec["record_rr_stat"] == "median"
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


# --- members that read different channels; combined checkpoints (ecgkit combine) ---------------------------

TWO = {**PARAMS, "channels": ["beat", "beat_minus_record_median", "lead2", "lead2_minus_record_median"]}
ONE_LEAD = {**PARAMS, "channels": ["lead2", "beat"]}   # another subset, in another order


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory):
    """Two trained-model files: a two-member one-lead ensemble and a four-channel network."""
    d = tmp_path_factory.mktemp("mixed")
    torch.manual_seed(1)
    one = create("encoders", "ensemble", members=MEMBERS).eval()
    two = create("encoders", "transnet", **TWO).eval()
    p1 = save_checkpoint(d / "one.pt", one, encoder="ensemble", params={"members": MEMBERS})
    p2 = save_checkpoint(d / "two.pt", two, encoder="transnet", params=TWO)
    return d, one, two, p1, p2


def _inputs4(T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, T, 4, 144, generator=g), 0.6 + 0.4 * torch.rand(2, T, 4, generator=g)


def test_members_may_read_different_channels_each_getting_its_own():
    torch.manual_seed(2)
    a, b = create("encoders", "transnet", **PARAMS).eval(), create("encoders", "transnet", **ONE_LEAD).eval()
    c = create("encoders", "transnet", **TWO).eval()
    ens = Ensemble([a, b, c]).eval()
    # the union of the members' channels, in the order they first appear
    assert ens.input_spec["channels"] == ["beat", "beat_minus_record_median", "lead2", "lead2_minus_record_median"]
    w, rr = _inputs4()
    with torch.no_grad():
        out = ens(w, rr)
        each = [torch.log_softmax(a(w[:, :, [0, 1]], rr), -1), torch.log_softmax(b(w[:, :, [2, 0]], rr), -1),
                torch.log_softmax(c(w, rr), -1)]
    torch.testing.assert_close(out, sum(each) / 3)
    # members that read the same channels are handed the windows as they are (the old behaviour)
    assert Ensemble([a, a]).member_channels == [None, None]


def test_combined_checkpoint_names_its_members_and_averages_them(mixed_files):
    from ecgkit.ensemble import save_combined

    d, one, two, p1, p2 = mixed_files
    (d / "sub").mkdir()
    out = save_combined(d / "sub" / "mix.pt", [str(p1), str(p2)])
    ck = read_checkpoint(out)
    assert ck["weights"] == "members" and ck["state_dict"] == {}
    assert [m["model"] for m in ck["params"]["members"]] == ["../one.pt", "../two.pt"]  # relative to the file
    assert out.stat().st_size < 20_000                                                 # no weights copied
    mix, _ = load_model(str(out))
    w, rr = _inputs4(T=20, seed=4)
    with torch.no_grad():
        # the one-lead ensemble counts once, as the mean of its own members (renormalised)
        ref = (torch.log_softmax(one(w[:, :, :2], rr), -1) + torch.log_softmax(two(w, rr), -1)) / 2
        torch.testing.assert_close(mix(w, rr), ref)
        # which differs from the flat mean over all three networks by one constant per beat: same classes
        flat = (torch.log_softmax(one.members[0](w[:, :, :2], rr), -1) + torch.log_softmax(one.members[1](w[:, :, :2], rr), -1)
                + 2 * torch.log_softmax(two(w, rr), -1)) / 4
        shift = mix(w, rr) - flat
        torch.testing.assert_close(shift, shift[..., :1].expand_as(shift))
    # moved with its members, it still loads: paths are relative to the combined file
    import shutil

    moved = d / "moved"
    (moved / "sub").mkdir(parents=True)
    for f in ("one.pt", "two.pt"):
        shutil.copy(d / f, moved / f)
    shutil.copy(out, moved / "sub" / "mix.pt")
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(moved / "sub" / "mix.pt"))[0](w, rr), ref)


def test_combined_checkpoints_refuse_what_cannot_work(mixed_files, tmp_path):
    from ecgkit.errors import CheckpointError
    from ecgkit.ensemble import save_combined

    d, one, two, p1, p2 = mixed_files
    with pytest.raises(ConfigError, match="at least two"):
        save_combined(tmp_path / "a.pt", [str(p1)])
    other = save_checkpoint(tmp_path / "fs.pt", create("encoders", "transnet", **{**PARAMS, "fs_hz": 250.0}),
                            encoder="transnet", params={**PARAMS, "fs_hz": 250.0})
    with pytest.raises(ConfigError, match="fs_hz"):
        save_combined(tmp_path / "b.pt", [str(p1), str(other)])
    assert not (tmp_path / "b.pt").exists()                        # nothing written on an error
    with pytest.raises(CheckpointError, match="not found"):
        save_combined(tmp_path / "c.pt", [str(p1), str(tmp_path / "missing.pt")])
    # a combined model may contain a combined model, but not itself
    inner = save_combined(tmp_path / "inner.pt", [str(p1), str(p2)])
    outer = save_combined(tmp_path / "outer.pt", [str(inner), str(p2)])
    assert load_model(str(outer))[0].input_spec["channels"] == TWO["channels"]
    ck = read_checkpoint(inner)
    ck["params"] = {"members": [{"model": "inner.pt"}, {"model": "two.pt"}]}
    torch.save(ck, tmp_path / "inner.pt")
    (tmp_path / "two.pt").write_bytes(p2.read_bytes())
    with pytest.raises(CheckpointError, match="contains itself"):
        load_model(str(inner))
    # a checkpoint without weights must be an ensemble of trained models
    ck = read_checkpoint(inner)
    ck["params"] = {"members": MEMBERS}
    torch.save(ck, tmp_path / "fake.pt")
    with pytest.raises(CheckpointError, match="without weights of its own"):
        load_model(str(tmp_path / "fake.pt"))


def test_gradcam_of_a_mixed_ensemble_gives_each_member_its_channels(mixed_files):
    d, one, two, p1, p2 = mixed_files
    ens = Ensemble([one, two]).eval()
    w, rr = _inputs4(T=8, seed=5)
    a = create("explainers", "gradcam", model=ens)(w[:1], rr[:1], 3, 2)
    p_one = create("explainers", "gradcam", model=one)(w[:1, :, :2], rr[:1], 3, 2)   # (2, 144)
    p_two = create("explainers", "gradcam", model=two)(w[:1], rr[:1], 3, 2)          # (4, 144)
    assert a.shape == (4, 144)
    np.testing.assert_allclose(a, np.repeat((p_one[:1] + p_two[:1]) / 2, 4, axis=0), rtol=1e-5, atol=1e-6)


def test_onnx_export_of_a_combined_model_matches_torch(mixed_files, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ecgkit.ensemble import save_combined
    from ecgkit.models import load_any_model
    from ecgkit.quantize import export_onnx

    d, one, two, p1, p2 = mixed_files
    mix = save_combined(tmp_path / "mix.pt", [str(p1), str(p2)])
    out = export_onnx(str(mix), tmp_path / "mix.onnx")
    model, spec, _ = load_any_model(str(out))
    w, rr = _inputs4(T=20, seed=6)
    with torch.no_grad():
        ref = load_model(str(mix))[0](w, rr).numpy()
    np.testing.assert_allclose(np.asarray(model(w, rr)), ref, atol=1e-4)
    assert spec["channels"] == TWO["channels"]
