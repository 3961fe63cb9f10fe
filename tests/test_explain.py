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
from ecgkit import inference
from ecgkit.checkpoint import save_checkpoint
from ecgkit.cli import cli
from ecgkit.datasets.mitdb import AAMI_MAP, BEAT_SYMBOLS
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
def records(model, data_dir):
    """Records 100 and 119 as the model sees them (:class:`ecgkit.explain.RecordBeats`)."""
    return {name: ex.load_record_beats(name, model.input_spec, data_dir) for name in ("100", "119")}


@pytest.fixture(scope="module")
def beats(model, records):
    """A normal beat of record 100 and a ventricular beat of record 119, as model sequences."""
    out = {}
    for name, cls in (("100", "N"), ("119", "V")):
        rb = records[name]
        beat = int(np.flatnonzero(rb.labels == list(model.input_spec["classes"]).index(cls))[3])
        out[cls] = rb.sequence(beat)
    return out


def run(invoke_args, data_dir):
    return CliRunner().invoke(cli, [str(a) for a in invoke_args], env={"ECGKIT_DATA": str(data_dir)})


def reference_classes(record_path) -> list[str]:
    """AAMI class of each beat the ``reference`` segmenter finds, straight from the ``.atr`` (wfdb)."""
    import wfdb

    ann = wfdb.rdann(str(record_path), "atr")
    return [AAMI_MAP.get(s, "?") for s in ann.symbol if s in BEAT_SYMBOLS]


def test_explainers_are_registered():
    assert {"gradcam", "shap", "ig"} <= set(list_components("explainers"))


@pytest.mark.parametrize("method", ["gradcam", "shap", "ig"])
def test_attributions_on_real_beats(method, model, beats, data_dir):
    explain = create("explainers", method, model=model, **({"data": str(data_dir)} if method == "shap" else {}),
                     **FAST[method])
    classes = list(model.input_spec["classes"])
    attrs = {}
    for cls, (windows, rr, bi, _) in beats.items():
        a = explain(windows, rr, bi, classes.index("V"))
        assert isinstance(a, np.ndarray)
        assert a.shape == tuple(windows[0, bi].shape) == (2, 144)
        assert np.isfinite(a).all()
        assert np.abs(a).max() > 0
        attrs[cls] = a
    assert not np.allclose(attrs["N"], attrs["V"])
    # the target picks the explained logit: the same beat explained for N is another attribution
    windows, rr, bi, _ = beats["V"]
    to_n = explain(windows, rr, bi, classes.index("N"))
    assert np.isfinite(to_n).all() and np.abs(to_n).max() > 0
    assert not np.allclose(to_n, attrs["V"], rtol=1e-3, atol=1e-3 * np.abs(attrs["V"]).max())
    # ... and asking for the same target again gives the same attribution (what differs is the target)
    np.testing.assert_allclose(explain(windows, rr, bi, classes.index("V")), attrs["V"], rtol=1e-4,
                               atol=1e-6 * np.abs(attrs["V"]).max())


class Smooth(torch.nn.Module):
    """A smooth toy encoder (no scale-free features): integrated gradients must be complete on it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = torch.nn.Linear(2 * 144, 5)

    def forward(self, windows, rr, pad_mask=None):
        h = torch.tanh(self.lin(windows.flatten(2)))               # (B, T, 5)
        return h + 0.5 * h.mean(1, keepdim=True) + torch.log(rr[..., :1] / rr[..., 2:3])


class Linear(torch.nn.Module):
    """A linear toy encoder with a known answer: the logit of beat t for class c is
    ``(c + 1) * (own * <a, window t> + neighbour * <a, window t-1> + rr * <r, rr t>)``.

    Integrated gradients and expected gradients of a linear function are exact:
    ``coefficient * (input - baseline)``.
    """

    def __init__(self, own=0.0, neighbour=0.0, rr=0.0, input_spec=None):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.a = torch.randn(2, 144, generator=g)
        self.r = torch.tensor([-1.0, 0.5, 2.0, 0.0])  # pre-RR, post-RR, local mean RR, record mean RR
        self.own, self.neighbour, self.rr = own, neighbour, rr
        if input_spec is not None:
            self.input_spec = input_spec

    def forward(self, windows, rr, pad_mask=None):
        s = (self.own * (windows * self.a).sum((2, 3)) + self.neighbour * (windows.roll(1, 1) * self.a).sum((2, 3))
             + self.rr * (rr * self.r).sum(-1))
        return s[..., None] * torch.arange(1.0, 6.0)


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


@pytest.mark.parametrize("source, share", [("rr", "rr_features"), ("own", "own_window"),
                                           ("neighbour", "neighbour_windows")])
def test_rhythm_context_finds_the_only_input_the_logit_depends_on(source, share, beats):
    windows, rr, bi, _ = beats["V"]  # a premature beat: its RR differs from the regular-rhythm baseline
    ctx = ex.rhythm_context(Linear(**{source: 1.0}), windows, rr, bi, 2, n_steps=8)
    assert ctx[share] == pytest.approx(1.0, abs=1e-6)
    source_beat = bi - 1 if source == "neighbour" else bi
    assert ctx["per_beat"][source_beat] == pytest.approx(1.0, abs=1e-6)
    if source == "rr":
        assert ctx["rr_own"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("baseline", ["auto", "median", "zero"])
def test_rhythm_context_shares_of_a_linear_model(baseline, beats):
    """Exact shares on a model that uses all three sources, with the median and the flat baseline."""
    windows, rr, bi, _ = beats["V"]
    m = Linear(own=1.0, neighbour=0.5, rr=3.0, input_spec={"channels": ["beat", "beat_minus_record_median"]})
    base = torch.zeros_like(windows)
    if baseline != "zero":  # the record's median beat: beat - (beat - median), and beat - median = 0
        base[:, :, 0] = windows[:, :, 0] - windows[:, :, 1]
    own = float((m.a * (windows[0, bi] - base[0, bi])).abs().sum())
    neighbour = 0.5 * float((m.a * (windows[0, bi - 1] - base[0, bi - 1])).abs().sum())
    rr_part = 3.0 * float((m.r * (rr[0, bi] - rr[0, bi, 3])).abs().sum())
    total = own + neighbour + rr_part
    ctx = ex.rhythm_context(m, windows, rr, bi, 2, n_steps=8, baseline=baseline)
    assert ctx["baseline"] == ("zero" if baseline == "zero" else "median")
    assert ctx["own_window"] == pytest.approx(own / total, rel=1e-4)
    assert ctx["neighbour_windows"] == pytest.approx(neighbour / total, rel=1e-4)
    assert ctx["rr_features"] == pytest.approx(rr_part / total, rel=1e-4)
    assert abs(ctx["convergence_delta"]) < 1e-3 * abs(ctx["logit_minus_baseline"])


def test_rhythm_context_baseline_errors(beats):
    windows, rr, bi, _ = beats["V"]
    with pytest.raises(EcgkitError, match="baseline must be 'auto', 'median' or 'zero'"):
        ex.rhythm_context(Linear(own=1.0), windows, rr, bi, 2, n_steps=4, baseline="mean")
    with pytest.raises(EcgkitError, match="median baseline needs the channels"):
        ex.rhythm_context(Linear(own=1.0), windows, rr, bi, 2, n_steps=4, baseline="median")  # no input_spec


def test_ig_internal_batch_size_gives_the_same_attribution(model, beats):
    windows, rr, bi, _ = beats["V"]
    whole = create("explainers", "ig", model=model, n_steps=8)(windows, rr, bi, 2)
    chunked = create("explainers", "ig", model=model, n_steps=8, internal_batch_size=3)(windows, rr, bi, 2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-6 * np.abs(whole).max())


def test_shap_with_an_explicit_background(beats):
    """Expected gradients of a linear model with one background sequence: coefficient * (input - background)."""
    windows, rr, bi, _ = beats["V"]
    m = Linear(own=1.0, neighbour=0.5, rr=1.0)  # no input_spec: the background must be given
    bg_w, bg_rr = 0.3 * torch.randn(1, windows.shape[1] + 2, 2, 144), torch.ones(1, windows.shape[1] + 2, 4)
    explain = create("explainers", "shap", model=m, background=(bg_w.numpy(), bg_rr.numpy()), nsamples=8)
    for target in (0, 3):
        a = explain(windows, rr, bi, target)
        expected = (target + 1) * m.a * (windows[0, bi] - bg_w[0, bi])
        np.testing.assert_allclose(a, expected.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(EcgkitError, match="has no input_spec"):
        create("explainers", "shap", model=m, nsamples=8)(windows, rr, bi, 0)
    short = create("explainers", "shap", model=m, background=(bg_w[:, :3], bg_rr[:, :3]), nsamples=8)
    with pytest.raises(EcgkitError, match="background sequences hold 3 beats"):
        short(windows, rr, bi, 0)


def test_record_beats_filter_the_signal_once(model, data_dir, monkeypatch):
    """The model input is prepare_record's, and the signal drawn in the figures is filtered only once."""
    calls = []
    real = inference.model_signal
    with monkeypatch.context() as m:
        m.setattr(inference, "model_signal", lambda rec, spec: calls.append(rec.name) or real(rec, spec))
        rb = ex.load_record_beats("100", model.input_spec, data_dir)
    assert calls == ["100"]
    ref = inference.prepare_record(rb.record, rb.peaks, rb.spec)
    assert set(rb.prep) == set(ref)
    for key in ref:
        assert rb.prep[key].dtype == ref[key].dtype
        np.testing.assert_array_equal(rb.prep[key], ref[key])
    np.testing.assert_array_equal(rb.signal, inference.model_signal(rb.record, rb.spec))


def test_reference_labels_are_load_record_beats_labels(records, data_dir, mitdb_record):
    from ecgkit.io import read_record
    from ecgkit.segment import labelled_peaks

    for name, rb in records.items():
        np.testing.assert_array_equal(ex._reference_labels(str(data_dir / name)), rb.labels)
    # an unclassifiable beat ('?') takes the class of an AAMI beat within 0.15 s, else -1; a rhythm
    # annotation is no beat; a beat past the end of the signal is dropped
    import wfdb

    path = mitdb_record("100")
    (path.parent / "100.atr").unlink()
    wfdb.wrann("100", "atr", np.array([100, 150, 1000, 2000, 5000, 700000]), symbol=["N", "?", "?", "V", "+", "N"],
               aux_note=["", "", "", "", "(N", ""], fs=360, write_dir=str(path.parent))
    labels = ex._reference_labels(str(path))
    np.testing.assert_array_equal(labels, [0, 0, -1, 2])
    np.testing.assert_array_equal(labels, labelled_peaks(read_record(path), create("segmenters", "reference"))[1])


def test_plot_beat_shows_n_neighbours(model, records, monkeypatch, tmp_path):
    rb = records["119"]
    figs = []
    monkeypatch.setattr(ex, "_save_fig", lambda fig, path: figs.append(fig) or path)
    e = ex._explain_one(model, rb, 10, "zeros", lambda w, rr, bi, t: np.zeros(w.shape[2:], np.float32),
                        context=False)
    for n in (1, 3):
        ex.plot_beat(e, rb, tmp_path / "beat.png", n_neighbours=n)
    markers = [[t.get_text().split("\n")[0] for t in f.axes[0].texts if t.get_text().startswith("#")] for f in figs]
    assert markers == [["#9", "#10", "#11"], [f"#{j}" for j in range(7, 14)]]
    ex._plt().close("all")


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


def test_cli_target(checkpoint, data_dir, tmp_path):
    """--target explains another class than the predicted one: recorded in the JSON, another attribution."""
    args = ["explain", "--model", checkpoint, "--record", "119", "--beat", "10", "--method", "gradcam"]
    r = run([*args, "--out", tmp_path / "default"], data_dir)
    assert r.exit_code == 0, r.output
    default = json.loads((tmp_path / "default" / "119_beat_10_gradcam.json").read_text())
    assert default["target"] == default["predicted"]
    target = next(c for c in ("V", "N") if c != default["predicted"])
    r = run([*args, "--target", target.lower(), "--out", tmp_path / "target"], data_dir)
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "target" / "119_beat_10_gradcam.json").read_text())
    assert info["target"] == target != info["predicted"] == default["predicted"]
    assert info["probabilities"] == pytest.approx(default["probabilities"])
    a, a0 = (np.load(tmp_path / d / "119_beat_10_gradcam.npy") for d in ("target", "default"))
    assert not np.allclose(a, a0, rtol=1e-3, atol=1e-3 * np.abs(a0).max())
    r = run([*args, "--target", "X", "--out", tmp_path / "bad"], data_dir)
    assert r.exit_code != 0 and "unknown class 'X'" in r.stderr


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
    # the averaged beats are V beats of the reference annotations, two different ones
    classes = reference_classes(data_dir / "119")
    beats = [ex.parse_sample_id(b) for b in info["beats"]]
    assert len(set(beats)) == 2 and all(rec == "119" and classes[i] == "V" for rec, i in beats)


def test_class_average_prepares_only_the_records_it_draws_from(checkpoint, data_dir, tmp_path, monkeypatch):
    """Labels come from the annotations; only records holding a drawn beat are read and prepared."""
    loaded = []
    real = ex.load_record_beats
    monkeypatch.setattr(ex, "load_record_beats", lambda p, *a, **k: loaded.append(p) or real(p, *a, **k))
    ex.class_average(str(checkpoint), "v", 3, "gradcam", tmp_path, data=data_dir, records=["100", "101", "119"],
                     context=False)
    info = json.loads((tmp_path / "class_V_gradcam.json").read_text())
    assert info["n"] == 3 and info["target"] == "V"
    assert sorted(str(p).rsplit("/", 1)[-1] for p in loaded) == info["records"]  # each once; never 101 (no V)
    for rec, i in map(ex.parse_sample_id, info["beats"]):
        assert reference_classes(data_dir / rec)[i] == "V"
