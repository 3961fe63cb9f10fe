"""Explanations: gradcam / shap / ig on real beats, rhythm context, and `ecgkit explain`.

A small, freshly initialised transnet model is enough here: the tests check shapes,
finiteness and plumbing, not what a trained model has learnt (the faithfulness of the
methods on a trained model is measured by ``benchmarks/faithfulness.py``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ecgkit import explain as ex
from ecgkit.checkpoint import save_checkpoint
from ecgkit.cli import cli
from ecgkit.errors import EcgkitError
from ecgkit.registry import create, list_components

#: A smaller transnet than the default: the tests only need the architecture.
PARAMS = {"stem_channels": 8, "block_channels": [8, 16, 16], "d_model": 32, "n_heads": 2, "seq_len": 24}
#: Fast explainer settings (few integration steps, a tiny DS1 background).
FAST = {"gradcam": {}, "ig": {"n_steps": 8},
        "shap": {"n_background": 4, "nsamples": 16, "background_records": ["119"]}}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small single-sequence workloads: one torch thread is faster (2x on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create("encoders", "transnet", **PARAMS)
    return m.eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", model, encoder="transnet", params=PARAMS)


@pytest.fixture(scope="module")
def beats(model, data_dir):
    """A normal beat of record 100 and a ventricular beat of record 119, as model sequences."""
    spec = model.input_spec
    out = {}
    for name, cls in (("100", "N"), ("119", "V")):
        rb = ex.load_record_beats(name, spec, data_dir)
        k = list(spec["classes"]).index(cls)
        beat = int(np.flatnonzero(rb.labels == k)[3])
        out[cls] = rb.sequence(beat)
    return out


def run(invoke_args, data_dir):
    return CliRunner().invoke(cli, [str(a) for a in invoke_args], env={"ECGKIT_DATA": str(data_dir)})


def test_explainers_are_registered():
    assert {"gradcam", "shap", "ig"} <= set(list_components("explainers"))


@pytest.mark.parametrize("method", ["gradcam", "shap", "ig"])
def test_attributions_on_real_beats(method, model, beats, data_dir):
    explain = create("explainers", method, model=model, **({"data": str(data_dir)} if method == "shap" else {}),
                     **FAST[method])
    attrs = {}
    for cls, (windows, rr, bi, _) in beats.items():
        a = explain(windows, rr, bi, list(model.input_spec["classes"]).index("V"))
        assert isinstance(a, np.ndarray)
        assert a.shape == tuple(windows[0, bi].shape) == (2, 144)
        assert np.isfinite(a).all()
        assert np.abs(a).max() > 0
        attrs[cls] = a
    assert not np.allclose(attrs["N"], attrs["V"])


class Smooth(torch.nn.Module):
    """A smooth toy encoder (no scale-free features): integrated gradients must be complete on it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = torch.nn.Linear(2 * 144, 5)

    def forward(self, windows, rr, pad_mask=None):
        h = torch.tanh(self.lin(windows.flatten(2)))               # (B, T, 5)
        return h + 0.5 * h.mean(1, keepdim=True) + torch.log(rr[..., :1] / rr[..., 2:3])


def test_ig_completeness_and_target_plumbing(beats):
    """IG of the own window sums to logit(beat) - logit(own window at zero), for the asked beat and class."""
    m = Smooth().eval()
    windows, rr, bi, _ = beats["V"]
    for target in (0, 2):
        a = create("explainers", "ig", model=m, n_steps=64)(windows, rr, bi, target)
        with torch.no_grad():
            z = windows.clone()
            z[0, bi] = 0
            diff = float(m(windows, rr)[0, bi, target] - m(z, rr)[0, bi, target])
        assert a.sum() == pytest.approx(diff, abs=1e-3)
    ctx = ex.rhythm_context(m, windows, rr, bi, 2, n_steps=64)  # zero baseline: no median channel spec
    assert ctx["baseline"] == "zero" and abs(ctx["convergence_delta"]) < 1e-3


def test_gradcam_needs_a_convolutional_tokenizer():
    class NoTokenizer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2 * 144, 5)

        def forward(self, windows, rr, pad_mask=None):
            return self.lin(windows.flatten(2))

    with pytest.raises(EcgkitError, match="gradcam needs an encoder with a convolutional beat tokenizer"):
        create("explainers", "gradcam", model=NoTokenizer())
    # ig works on any encoder
    w, rr = torch.randn(1, 3, 2, 144), torch.ones(1, 3, 4)
    assert create("explainers", "ig", model=NoTokenizer(), n_steps=4)(w, rr, 1, 0).shape == (2, 144)


def test_gradcam_layer_is_the_last_convolutional_stage(model, beats):
    assert ex.find_last_conv(model) is model.tokenizer.blocks[-1].conv2  # not the 1x1 shortcut
    windows, rr, _, _ = beats["N"]
    layer, name = ex.gradcam_layer(model, windows, rr)
    assert name == "tokenizer.blocks" and layer is model.tokenizer.blocks  # its block's output, after BN + ReLU


def test_shap_background_refuses_the_test_split(model, data_dir):
    with pytest.raises(EcgkitError, match="not the test split"):
        ex.ds1_background(model.input_spec, 8, 2, data_dir, records=["100"])


def test_rhythm_context_fractions(model, beats):
    windows, rr, bi, _ = beats["V"]
    ctx = ex.rhythm_context(model, windows, rr, bi, 2, n_steps=8)
    parts = [ctx["own_window"], ctx["neighbour_windows"], ctx["rr_features"]]
    assert all(0 <= p <= 1 for p in parts)
    assert sum(parts) == pytest.approx(1.0)
    assert ctx["rr_own"] + ctx["rr_neighbours"] == pytest.approx(ctx["rr_features"])
    assert len(ctx["per_beat"]) == windows.shape[1]


def test_parse_sample_id():
    assert ex.parse_sample_id("100_beat_5") == ("100", 5)
    assert ex.parse_sample_id("data/mitdb/208_beat_12") == ("data/mitdb/208", 12)
    with pytest.raises(EcgkitError, match="RECORD_beat_N"):
        ex.parse_sample_id("100-5")


def test_cli_writes_png_npy_and_json(checkpoint, data_dir, tmp_path):
    out = tmp_path / "out"
    r = run(["explain", "--model", checkpoint, "--record", "119", "--beat", "10", "--method", "gradcam",
             "--out", out], data_dir)
    assert r.exit_code == 0, r.output
    png, npy, js = (out / f"119_beat_10_gradcam.{e}" for e in ("png", "npy", "json"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a = np.load(npy)
    assert a.shape == (2, 144) and np.isfinite(a).all()
    info = json.loads(js.read_text())
    assert info["record"] == "119" and info["beat"] == 10
    assert sum(info["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    ctx = info["context"]
    assert ctx["own_window"] + ctx["neighbour_windows"] + ctx["rr_features"] == pytest.approx(1.0)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files


def test_cli_sample_id(checkpoint, data_dir, tmp_path):
    r = run(["explain", "--model", checkpoint, "--sample-id", "100_beat_5", "--method", "ig", "--out", tmp_path],
            data_dir)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "100_beat_5_ig.png").is_file()
    assert np.load(tmp_path / "100_beat_5_ig.npy").shape == (2, 144)


@pytest.mark.parametrize("args, fragment", [
    (["--record", "100", "--beat", "999999"], "out of range"),
    (["--record", "100", "--beat", "-1"], "out of range"),
    (["--record", "100", "--beat", "3", "--method", "nope"], "unknown explainer 'nope'"),
    (["--sample-id", "100:5"], "bad sample id"),
    (["--class", "X", "--n", "3"], "unknown class"),
])
def test_cli_bad_input_is_a_one_line_error(args, fragment, checkpoint, data_dir, tmp_path):
    r = run(["explain", "--model", checkpoint, "--out", tmp_path / "o", *args], data_dir)
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_record_without_beats_is_an_error(checkpoint, mitdb_record, tmp_path):
    path = mitdb_record("100")
    # an annotation file that holds no beat annotations (only a rhythm change)
    import wfdb

    (path.parent / "100.atr").unlink()
    wfdb.wrann("100", "atr", np.array([10]), symbol=["+"], aux_note=["(N"], fs=360, write_dir=str(path.parent))
    with pytest.raises(EcgkitError, match="no beats"):
        ex.explain_beat(str(checkpoint), str(path), 0, "gradcam", tmp_path / "o")


def test_class_average(checkpoint, data_dir, tmp_path):
    r = run(["explain", "--model", checkpoint, "--class", "V", "--n", "2", "--method", "gradcam",
             "--record", "119", "--out", tmp_path], data_dir)
    assert r.exit_code == 0, r.output
    m = np.load(tmp_path / "class_V_gradcam.npy")
    assert m.shape == (2, 144) and (m >= 0).all() and m.max() > 0
    info = json.loads((tmp_path / "class_V_gradcam.json").read_text())
    assert info["n"] == 2 and info["records"] == ["119"]
    assert (tmp_path / "class_V_gradcam.png").stat().st_size > 1000
