"""V evidence shared between look-alike beats of a record (``share_ventricular_evidence``).

An inference-time step of the model's input contract (``ventricular_neighbours``), chosen on DS1
fold models (examples/ablations/ventricular_neighbours.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgkit.errors import ConfigError
from ecgkit.inference import (VENTRICULAR_NEIGHBOURS, check_channels, lookalike_beats, predict_log_proba,
                              prepare_record, share_ventricular_evidence)

CLASSES = ["N", "S", "V", "F", "Q"]
SPEC = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80, "channels": ["beat"], "classes": CLASSES}


def _shapes(n_a: int, n_b: int, seed: int = 0) -> np.ndarray:
    """Windows of two QRS shapes: ``n_a`` narrow upright beats, then ``n_b`` wide inverted ones, with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(144) - 64
    a = np.exp(-0.5 * (t / 3.0) ** 2)
    b = -np.exp(-0.5 * ((t - 4) / 9.0) ** 2) + 0.4 * np.exp(-0.5 * ((t + 10) / 5.0) ** 2)
    W = np.vstack([np.tile(a, (n_a, 1)), np.tile(b, (n_b, 1))])
    return (W + 0.05 * rng.standard_normal(W.shape)).astype(np.float32)


def _log_probs(rows) -> np.ndarray:
    P = np.asarray(rows, np.float64)
    return np.log(P / P.sum(1, keepdims=True)).astype(np.float32)


def test_lookalikes_of_a_shape_are_that_shape():
    W = _shapes(30, 20)
    nb, corr = lookalike_beats(W, SPEC, 5)
    assert nb.shape == corr.shape == (50, 5)
    assert (nb[:30] < 30).all() and (nb[30:] >= 30).all()
    assert not (nb == np.arange(50)[:, None]).any()  # never the beat itself
    assert (corr > 0.9).all() and (corr <= 1 + 1e-9).all()   # same shape, a little noise


def test_the_search_stays_within_span_and_equals_a_full_search_below_it():
    W = _shapes(40, 40, seed=1)
    nb, _ = lookalike_beats(W, SPEC, 4, span=10)
    assert (np.abs(nb - np.arange(80)[:, None]) <= 10).all()
    # with the whole record inside the span, the k most correlated beats of a brute-force search
    X = W[:, 64 - 18:64 + 18].astype(np.float64)
    X -= X.mean(1, keepdims=True)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    C = X @ X.T
    np.fill_diagonal(C, -np.inf)
    full = np.sort(np.argsort(-C, axis=1)[:, :4], axis=1)
    nb, corr = lookalike_beats(W, SPEC, 4)
    np.testing.assert_array_equal(np.sort(nb, axis=1), full)
    np.testing.assert_allclose(corr, np.take_along_axis(C, nb, axis=1), atol=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        lookalike_beats(W[:3], SPEC, 3)


def test_a_v_beat_called_n_among_v_lookalikes_turns_v_and_s_beats_stay_s():
    W = _shapes(30, 20)
    rows = [[0.9, 0.05, 0.02, 0.02, 0.01]] * 30 + [[0.05, 0.03, 0.9, 0.01, 0.01]] * 20
    rows[35] = [0.55, 0.05, 0.38, 0.01, 0.01]   # a V-shaped beat the network called N
    rows[3] = [0.35, 0.6, 0.03, 0.01, 0.01]     # an S beat: N-shaped, a rhythm call
    lp = _log_probs(rows)
    out = share_ventricular_evidence(lp, W, SPEC, 10)
    P, Q = np.exp(lp.astype(np.float64)), np.exp(out.astype(np.float64))
    np.testing.assert_allclose(Q.sum(1), 1.0, rtol=1e-5)
    fell, rose = Q[:, 2] < P[:, 2] - 1e-6, Q[:, 2] > P[:, 2] + 1e-6
    assert fell[3] and rose[35]
    np.testing.assert_allclose(Q[fell, 1], P[fell, 1], rtol=1e-4)   # V fell: S kept
    # V rose: every other class, S included, keeps its ratio to the others
    ratio = Q[rose][:, [0, 1, 3, 4]] / P[rose][:, [0, 1, 3, 4]]
    np.testing.assert_allclose(ratio, ratio[:, :1].repeat(4, 1), rtol=1e-4)
    assert lp[35].argmax() == 0 and out[35].argmax() == 2
    assert out[3].argmax() == 1 and Q[3, 2] < P[3, 2]
    assert (out.argmax(1)[30:] == 2).all() and (out.argmax(1)[:30] != 2).all()
    # F and Q keep their ratio to N: only the V share moved
    np.testing.assert_allclose(Q[35, 3] / Q[35, 0], P[35, 3] / P[35, 0], rtol=1e-4)


def test_a_v_beat_called_s_among_v_lookalikes_turns_v():
    """Premature and called S, but shaped like the record's V beats: the rising V evidence takes S's share too."""
    W = _shapes(30, 20)
    rows = [[0.9, 0.05, 0.02, 0.02, 0.01]] * 30 + [[0.05, 0.03, 0.9, 0.01, 0.01]] * 20
    rows[40] = [0.03, 0.7, 0.25, 0.01, 0.01]
    lp = _log_probs(rows)
    out = share_ventricular_evidence(lp, W, SPEC, 10)
    assert lp[40].argmax() == 1 and out[40].argmax() == 2   # were S kept, 0.7 would still beat V's ~0.63
    P, Q = np.exp(lp[40].astype(np.float64)), np.exp(out[40].astype(np.float64))
    np.testing.assert_allclose(Q[1] / Q[0], P[1] / P[0], rtol=1e-4)


def test_a_lone_v_beat_keeps_its_own_evidence():
    """Its nearest beats are N beats of another shape: they do not qualify as look-alikes, so it stays V."""
    W = _shapes(40, 1)
    rows = [[0.96, 0.01, 0.01, 0.01, 0.01]] * 40 + [[0.25, 0.03, 0.7, 0.01, 0.01]]
    lp = _log_probs(rows)
    out = share_ventricular_evidence(lp, W, SPEC, 10)
    assert out[40].argmax() == 2
    np.testing.assert_allclose(out[40], lp[40], atol=1e-5)
    # without the similarity bar its N neighbours' evidence would have drawn it to N
    assert share_ventricular_evidence(lp, W, SPEC, 10, min_corr=-1.0)[40].argmax() == 0


def test_off_small_records_and_classes_without_v_are_left_alone():
    W = _shapes(6, 4)
    lp = _log_probs(np.random.default_rng(2).uniform(0.1, 1.0, (10, 5)))
    assert share_ventricular_evidence(lp, W, SPEC, 0) is lp
    assert share_ventricular_evidence(lp, W, SPEC) is lp                   # the contract does not ask
    assert share_ventricular_evidence(lp, W, SPEC, 10) is lp               # no more beats than neighbours
    two = lp[:, :2]
    assert share_ventricular_evidence(two, W, {**SPEC, "classes": ["N", "S"]}, 3) is two
    assert share_ventricular_evidence(lp, W, {**SPEC, VENTRICULAR_NEIGHBOURS: 3}) is not lp


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_the_contract_key_is_a_count(bad):
    with pytest.raises(ConfigError, match="ventricular_neighbours"):
        check_channels({**SPEC, VENTRICULAR_NEIGHBOURS: bad})
    check_channels({**SPEC, VENTRICULAR_NEIGHBOURS: 10})


def test_on_a_real_record_ventricular_beats_find_ventricular_lookalikes(data_dir):
    """Record 119 (ventricular bigeminy and trigeminy): the QRS correlation groups V with V and N with N."""
    from ecgkit.datasets.mitdb import AAMI_CLASSES, reference_beats
    from ecgkit.io import read_annotations, read_record

    r = read_record(data_dir / "119")
    samples, labels = reference_beats(*read_annotations(r.path, "atr"))
    W = prepare_record(r, samples, {**SPEC, "channels": ["beat"]})["W"]
    nb, _ = lookalike_beats(W, SPEC, 10)
    v = labels == AAMI_CLASSES.index("V")
    assert v.sum() > 400
    assert (labels[nb[v]] == AAMI_CLASSES.index("V")).mean() > 0.95
    assert (labels[nb[~v]] != AAMI_CLASSES.index("V")).mean() > 0.95


def test_predict_log_proba_applies_the_step_the_contract_names(data_dir):
    from ecgkit.checkpoint import resolve_model_path
    from ecgkit.datasets.mitdb import reference_beats
    from ecgkit.io import read_annotations, read_record
    from ecgkit.models import load_any_model

    try:
        model, spec, _ = load_any_model(str(resolve_model_path("transnet")))
    except Exception:
        pytest.skip("ecgkit-transnet plugin (with its weights) not installed")
    r = read_record(data_dir / "106")
    samples, _ = reference_beats(*read_annotations(r.path, "atr"))
    prep = prepare_record(r, samples, spec)
    raw = predict_log_proba(model, prep, spec, postprocess=False)
    assert spec[VENTRICULAR_NEIGHBOURS] == 10
    shared = predict_log_proba(model, prep, spec)
    np.testing.assert_array_equal(shared, share_ventricular_evidence(raw, prep["W"], spec))
    assert (shared.argmax(1) != raw.argmax(1)).any()
    off = {k: v for k, v in spec.items() if k != VENTRICULAR_NEIGHBOURS}
    np.testing.assert_array_equal(predict_log_proba(model, prep, off), raw)


def test_training_writes_the_step_into_the_contract(data_dir, tmp_path):
    """``model.ventricular_neighbours`` reaches best.pt's contract, for one network and for an ensemble."""
    import yaml

    from ecgkit.checkpoint import read_checkpoint
    from ecgkit.config import load_config
    from ecgkit.train import train

    cfg = {"seed": 1, "run_dir": str(tmp_path / "run"),
           "data": {"train": ["101", "119"], "val": ["119"], "test": ["100"]},
           "model": {"name": "transnet", "params": {"d_model": 16, "n_layers": 1, "block_channels": [8, 8]},
                     "ventricular_neighbours": 4},
           "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "seq_len": 16, "threads": 1,
                     "ensemble": 2}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    best = train(load_config(p), data_dir=data_dir, log=lambda *_: None, show_progress=False)
    ck = read_checkpoint(best)
    assert ck["input_spec"][VENTRICULAR_NEIGHBOURS] == 4
    assert read_checkpoint(tmp_path / "run" / "member1" / "best.pt")["input_spec"][VENTRICULAR_NEIGHBOURS] == 4
    # an inference-time step: without it (and no validation patients) training gives the same weights
    cfg["data"]["val"] = []
    for k, out in ((4, "with"), (0, "without")):
        cfg["model"]["ventricular_neighbours"], cfg["run_dir"] = k, str(tmp_path / out)
        p.write_text(yaml.safe_dump(cfg))
        train(load_config(p), data_dir=data_dir, log=lambda *_: None, show_progress=False)
    a, b = (read_checkpoint(tmp_path / d / "best.pt") for d in ("with", "without"))
    assert VENTRICULAR_NEIGHBOURS not in b["input_spec"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][n], b["state_dict"][n]) for n in a["state_dict"])
    cfg["model"]["ventricular_neighbours"] = -1
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="model.ventricular_neighbours"):
        load_config(p)
