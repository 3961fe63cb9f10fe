"""Explanations: why was a beat called N, S, V, F or Q?

Three attribution methods are registered through the ``register_explainers`` hook
(contract in :mod:`ecgkit.hookspecs`): ``factory(model, **params)`` returns
``explain(windows, rr, beat_index, target) -> np.ndarray`` of per-sample attributions
of shape ``windows[0, beat_index].shape == (channels, samples)``, where ``windows``
``(1, T, C, S)`` and ``rr`` ``(1, T, 4)`` are one sequence of consecutive beats and the
attributed output is the logit of class ``target`` for beat ``beat_index``.

* ``gradcam`` -- captum ``LayerGradCam`` on the last convolutional stage of
  ``model.tokenizer`` (the beat encoder): the last ``nn.Conv1d`` found generically, taken
  at the output of its enclosing block (after batch norm, shortcut and ReLU); upsampled
  to the window with ``LayerAttribution.interpolate`` (linear). One map per beat, the
  same for every input channel; signed (``relu=True`` for the classic ReLU'd map).
* ``shap`` -- the shap library's ``GradientExplainer`` (expected gradients) over the
  whole sequence input, with a background of DS1 sequences (never DS2, the test split).
  (``DeepExplainer`` does not support LayerNorm / attention: shap issue 4251.)
* ``ig`` -- captum ``IntegratedGradients`` of the beat's own window, all-zero baseline
  (the z-scored signal's baseline; ``baseline="median"``: the record's median beat), the
  neighbours and RR features held fixed.

:func:`rhythm_context` says how much of a decision came from the beat's own
morphology, from the neighbouring beats' windows and from the RR features: integrated
gradients over the whole sequence input (baseline: every window = the record's median
beat, and a perfectly regular rhythm at the record's mean RR), ``|attribution|`` summed
per group.

``ecgkit explain`` (:func:`explain_beat`, :func:`class_average`) writes the figures,
the per-sample attributions (``.npy``) and a small JSON summary; ``ecgkit run`` calls
:func:`explain_examples`.
"""

from __future__ import annotations

import inspect
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import hookimpl
from .errors import EcgkitError

#: Default number of integration steps of integrated gradients (``ig`` and rhythm context).
IG_STEPS = 32


# ------------------------------------------------------------------------------------------
# model wrappers: the attributed output is the logit of ``target`` for beat ``beat_index``
# ------------------------------------------------------------------------------------------

def _torch():
    import torch

    return torch


@lru_cache(maxsize=1)
def _wrappers():
    """The two model wrappers (built on first use: importing this plugin module must not import torch)."""
    import torch
    import torch.nn as nn

    class BeatLogits(nn.Module):
        """``own window (N, C, S) -> logits (N, n_classes)`` of beat ``beat_index``.

        The other windows and the RR features of the sequence are held fixed; ``own`` is put
        in place of ``windows[0, beat_index]`` for each of the N rows (batched for captum).
        """

        def __init__(self, model, windows, rr, beat_index: int):
            super().__init__()
            self.model, self.beat_index = model, int(beat_index)
            self.register_buffer("windows", windows.detach(), persistent=False)
            self.register_buffer("rr", rr.detach(), persistent=False)

        def forward(self, own):
            n, b = own.shape[0], self.beat_index
            ctx = self.windows.expand(n, -1, -1, -1)
            w = torch.cat([ctx[:, :b], own[:, None].to(ctx.dtype), ctx[:, b + 1:]], dim=1)
            return self.model(w, self.rr.expand(n, -1, -1))[:, b]

    class SequenceLogit(nn.Module):
        """``(windows (N, T, C, S), rr (N, T, 4)) -> logit (N, 1)`` of class ``target`` for beat ``beat_index``."""

        def __init__(self, model, beat_index: int = 0, target: int = 0):
            super().__init__()
            self.model, self.beat_index, self.target = model, int(beat_index), int(target)

        def forward(self, windows, rr):
            return self.model(windows, rr)[:, self.beat_index, self.target:self.target + 1]

    return BeatLogits, SequenceLogit


def _beat_logits(*a, **k):
    return _wrappers()[0](*a, **k)


def _sequence_logit(*a, **k):
    return _wrappers()[1](*a, **k)


def _check_inputs(windows, rr, beat_index: int):
    torch = _torch()
    if not (torch.is_tensor(windows) and torch.is_tensor(rr)):
        raise EcgkitError("explain: windows and rr must be torch tensors")
    if windows.dim() != 4 or windows.shape[0] != 1 or rr.dim() != 3 or tuple(rr.shape[:2]) != tuple(windows.shape[:2]):
        raise EcgkitError(f"explain: expected one sequence, windows (1, T, C, S) and rr (1, T, 4); "
                          f"got {tuple(windows.shape)} and {tuple(rr.shape)}")
    if not 0 <= int(beat_index) < windows.shape[1]:
        raise EcgkitError(f"explain: beat_index {beat_index} out of range for a sequence of {windows.shape[1]} beats")


@contextmanager
def _single_thread():
    """One torch CPU thread while explaining: single-sequence passes are small, more threads mostly contend."""
    torch = _torch()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _on_model(model, *tensors):
    p = next(model.parameters(), None)
    dev = p.device if p is not None else "cpu"
    return [t.detach().to(dev).float() for t in tensors]


# ------------------------------------------------------------------------------------------
# the explainers (factories registered through the hook)
# ------------------------------------------------------------------------------------------

def find_last_conv(model, layer: str | None = None):
    """The last ``nn.Conv1d`` of ``model.tokenizer`` (or the module named ``layer``, dotted, from the model).

    Convolutions with a kernel wider than one sample are preferred: in a ResNet the last
    registered 1x1 convolution is the shortcut projection, not a feature detector.
    """
    import torch.nn as nn

    if layer:
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise EcgkitError(f"gradcam: model {type(model).__name__} has no layer {layer!r}") from None
    tok = getattr(model, "tokenizer", None)
    convs = [m for m in tok.modules() if isinstance(m, nn.Conv1d)] if isinstance(tok, nn.Module) else []
    if not convs:
        raise EcgkitError(f"gradcam needs an encoder with a convolutional beat tokenizer (model.tokenizer with "
                          f"nn.Conv1d layers); {type(model).__name__} has none: use --method ig or shap")
    wide = [m for m in convs if m.kernel_size[0] > 1]
    return (wide or convs)[-1]


def gradcam_layer(model, windows, rr, layer: str | None = None):
    """``(module, name)`` Grad-CAM attributes to: the last convolutional stage of the tokenizer.

    Starting from :func:`find_last_conv`, walk up its enclosing modules inside
    ``model.tokenizer`` while they still output a feature map of the same shape: the
    outermost one is the output of the last convolutional stage (in a ResNet: the last
    residual block after its batch norm, shortcut addition and ReLU, as Grad-CAM uses it),
    rather than the raw convolution inside it. ``layer`` names a module explicitly.
    """
    torch = _torch()
    names = {m: n for n, m in model.named_modules()}
    conv = find_last_conv(model, layer)
    if layer:
        return conv, layer
    cname = names[conv]
    parts = cname.split(".")
    chain = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]  # conv, parent, ..., "tokenizer"
    mods = [(n, model.get_submodule(n)) for n in chain if n.startswith("tokenizer.")]
    shapes, hooks = {}, []

    def record(name):
        def hook(mod, inp, out):
            shapes.setdefault(name, tuple(out.shape) if torch.is_tensor(out) else None)  # returns None: output kept

        return hook

    for n, m in mods:
        hooks.append(m.register_forward_hook(record(n)))
    try:
        with torch.no_grad():
            model(windows[:, :2] if windows.shape[1] > 1 else windows, rr[:, :windows[:, :2].shape[1]])
    finally:
        for h in hooks:
            h.remove()
    best = cname
    for n, _ in mods[1:]:
        if shapes.get(n) is None or shapes.get(n) != shapes.get(cname):
            break
        best = n
    return model.get_submodule(best), best


def gradcam(model, layer: str | None = None, relu: bool = False):
    """Grad-CAM (captum LayerGradCam) on the beat tokenizer's last convolutional stage, upsampled to the window."""
    from captum.attr import LayerAttribution, LayerGradCam

    members = getattr(model, "members", None)
    if members is not None and getattr(model, "tokenizer", None) is None and not layer:
        return _ensemble_gradcam(model, relu)
    find_last_conv(model, layer)  # fail early, with a clear message, on an encoder without one
    state: dict = {}

    def explain(windows, rr, beat_index, target):
        torch = _torch()
        _check_inputs(windows, rr, beat_index)
        windows, rr = _on_model(model, windows, rr)
        T, C, S = windows.shape[1:]
        model.eval()
        if "layer" not in state:
            state["layer"], explain.layer_name = gradcam_layer(model, windows, rr, layer)
        f = _beat_logits(model, windows, rr, beat_index)
        with torch.enable_grad():
            a = LayerGradCam(f, state["layer"]).attribute(windows[:, beat_index], target=int(target),
                                                          relu_attributions=relu)
        if a.shape[0] != T:  # the tokenizer runs once over all B*T windows of the sequence
            raise EcgkitError(f"gradcam: layer output has {a.shape[0]} rows, expected one per beat ({T}); "
                              f"the encoder's tokenizer must encode the windows of a sequence as one batch")
        up = LayerAttribution.interpolate(a[beat_index:beat_index + 1].float(), (S,), interpolate_mode="linear")
        return np.repeat(up[0].detach().cpu().numpy(), C, axis=0).astype(np.float32)  # (C, S)

    explain.layer_name = layer
    return explain


def _ensemble_gradcam(model, relu: bool):
    """Grad-CAM of an ensemble (``model.members``): the mean of its members' maps for the same target.

    Each member's map is computed on that member alone (its own last convolutional stage and
    its own logits), so one member's scale does not depend on the others' log-probabilities.
    """
    parts = [gradcam(m, None, relu) for m in model.members]
    pick = getattr(model, "member_windows", lambda i, w: w)  # members may read a subset of the channels

    def explain(windows, rr, beat_index, target):
        C = windows.shape[2]
        # a Grad-CAM map is one curve over the samples, the same for every channel of the beat
        maps = [np.repeat(p(pick(i, windows), rr, beat_index, target)[:1], C, axis=0) for i, p in enumerate(parts)]
        explain.layer_name = f"members.*.{parts[0].layer_name}"
        return np.mean(maps, axis=0).astype(np.float32)

    explain.layer_name = None
    return explain


def integrated_gradients(model, n_steps: int = IG_STEPS, internal_batch_size: int | None = None,
                         baseline: str = "zero"):
    """Integrated gradients (captum) of the beat's own window, all-zero (z-scored baseline) reference.

    ``n_steps`` integration steps, evaluated ``internal_batch_size`` at a time (default: all
    in one model call; smaller bounds the memory, the attribution is the same).
    ``baseline="median"``: the record's median beat instead (what is unusual about this beat
    for this patient; needs the channels ``beat`` and ``beat_minus_record_median``). Note that
    a model with scale-free features of the window (correlations) changes abruptly very near
    the zero window; integrated gradients then miss that last step (completeness gap).
    """
    from captum.attr import IntegratedGradients

    if baseline not in ("zero", "median"):
        raise EcgkitError(f"ig: baseline must be 'zero' or 'median', got {baseline!r}")

    def explain(windows, rr, beat_index, target):
        torch = _torch()
        _check_inputs(windows, rr, beat_index)
        windows, rr = _on_model(model, windows, rr)
        model.eval()
        f = _beat_logits(model, windows, rr, beat_index)
        own = windows[:, beat_index]
        base = torch.zeros_like(own)
        if baseline == "median":
            mb = _median_baseline(model, windows)
            if mb is None:
                raise EcgkitError("ig: baseline 'median' needs the channels beat and beat_minus_record_median")
            base = mb[:, beat_index]
        with torch.enable_grad():
            a = IntegratedGradients(f).attribute(own, baselines=base, target=int(target),
                                                 n_steps=int(n_steps),
                                                 internal_batch_size=internal_batch_size or int(n_steps))
        return a[0].detach().cpu().numpy().astype(np.float32)

    return explain


_BACKGROUND_CACHE: dict = {}


def _background_preps(spec: dict, data, records, lead=None) -> list[dict]:
    """Model input of the background records (cached per data directory, records and input contract)."""
    from .datasets import resolve_records
    from .inference import prepare_record
    from .io import read_record
    from .registry import create
    from .segment import detect_beats

    paths = resolve_records(list(records), data)
    key = (tuple(paths), json.dumps(spec, sort_keys=True, default=str), lead)
    if key not in _BACKGROUND_CACHE:
        det = create("segmenters", "reference")
        preps = []
        for p in paths:
            rec = read_record(p, lead)
            peaks = detect_beats(det, rec)
            if peaks.size:
                preps.append(prepare_record(rec, peaks, spec))
        if not preps:
            raise EcgkitError("shap: no beats in the background records")
        _BACKGROUND_CACHE[key] = preps
    return _BACKGROUND_CACHE[key]


def ds1_background(spec: dict, T: int, n: int = 16, data=None, records=None, seed: int = 0, lead=None):
    """``n`` background sequences of ``T`` consecutive beats cut from DS1 records: ``(windows, rr)`` tensors.

    ``records`` default: 4 DS1 records drawn with ``seed``. DS2 (the test split) is refused.
    """
    torch = _torch()
    from .datasets.mitdb import DS1, DS2

    rng = np.random.default_rng(seed)
    if records is None:
        records = sorted(rng.choice(DS1, size=min(4, max(1, n)), replace=False).tolist())
    records = [records] if isinstance(records, str) else list(records)
    leak = sorted({Path(str(r)).name for r in records} & set(DS2)) + (["DS2"] if "DS2" in records else [])
    if leak or "all" in records:
        raise EcgkitError(f"shap background must come from training records (DS1), not the test split: "
                          f"{', '.join(leak or ['all'])}")
    preps = _background_preps(spec, data, records, lead)
    ws, rs = [], []
    for i in range(n):
        p = preps[i % len(preps)]
        m = len(p["rr"])
        t = min(T, m)
        st = int(rng.integers(0, m - t + 1))
        rows = np.arange(st, st + T) % m if m < T else np.arange(st, st + T)
        w, r = _model_input(p, spec, rows)
        ws.append(w[0])
        rs.append(r[0])
    return torch.stack(ws), torch.stack(rs)


def gradient_shap(model, data=None, n_background: int = 16, background_records=None, nsamples: int = 64,
                  batch_size: int = 32, seed: int = 0, background=None, lead=None):
    """SHAP expected gradients (shap GradientExplainer) over the sequence, background of DS1 sequences.

    The background is ``n_background`` sequences cut from ``background_records`` (default:
    up to 4 DS1 records drawn with ``seed``; see :func:`ds1_background`), prepared from the model's
    ``input_spec``; or ``background=(windows (N, T', C, S), rr (N, T', 4))`` given explicitly
    (needed for a model without ``input_spec``), of which the first ``T`` beats are used for
    a sequence of ``T`` beats. ``nsamples`` expected-gradient samples, ``batch_size`` per
    model call.
    """
    import shap

    state: dict = {}

    def background_for(T: int):
        if background is not None:
            bw, brr = (_torch().as_tensor(b) for b in background)
            if bw.dim() != 4 or brr.dim() != 3 or tuple(brr.shape[:2]) != tuple(bw.shape[:2]):
                raise EcgkitError(f"shap: background must be (windows (N, T, C, S), rr (N, T, 4)); "
                                  f"got {tuple(bw.shape)} and {tuple(brr.shape)}")
            if bw.shape[1] < T:
                raise EcgkitError(f"shap: background sequences hold {bw.shape[1]} beats, need {T}")
            return bw[:, :T], brr[:, :T]
        spec = getattr(model, "input_spec", None)
        if not isinstance(spec, dict):
            raise EcgkitError(f"shap: {type(model).__name__} has no input_spec; pass background=(windows, rr)")
        return ds1_background(spec, T, n_background, data, background_records, seed, lead)

    def explain(windows, rr, beat_index, target):
        torch = _torch()
        _check_inputs(windows, rr, beat_index)
        windows, rr = _on_model(model, windows, rr)
        T = windows.shape[1]
        model.eval()
        if T not in state:
            bw, brr = _on_model(model, *background_for(T))
            f = _sequence_logit(model)
            with torch.no_grad():
                state[T] = (f, shap.GradientExplainer(f, [bw, brr], batch_size=batch_size))
        f, ex = state[T]
        f.beat_index, f.target = int(beat_index), int(target)
        rng_state = np.random.get_state()  # shap reseeds numpy's global generator: put it back
        try:
            with torch.enable_grad():
                phi = ex.shap_values([windows, rr], nsamples=int(nsamples), rseed=int(seed))
        finally:
            np.random.set_state(rng_state)
        a = np.asarray(phi[0] if isinstance(phi, list) else phi)
        a = a.reshape(windows.shape)  # drop shap's trailing output axis
        return a[0, beat_index].astype(np.float32)

    return explain


@hookimpl
def register_explainers():
    return {"gradcam": gradcam, "shap": gradient_shap, "ig": integrated_gradients}


# ------------------------------------------------------------------------------------------
# rhythm context: own morphology vs neighbours vs RR features
# ------------------------------------------------------------------------------------------

def _median_baseline(model, windows):
    """Every window replaced by the record's median beat, when the channels allow it (else ``None``).

    With the channels ``beat`` and ``beat_minus_record_median`` the median beat is
    ``beat - (beat - median)``: the baseline is ``beat = median``, ``beat - median = 0``.
    """
    chans = list((getattr(model, "input_spec", None) or {}).get("channels", []))
    if "beat" not in chans or "beat_minus_record_median" not in chans or len(chans) != windows.shape[2]:
        return None
    i, j = chans.index("beat"), chans.index("beat_minus_record_median")
    base = windows.clone()
    base[:, :, i] = windows[:, :, i] - windows[:, :, j]
    base[:, :, j] = 0.0
    return base


def rhythm_context(model, windows, rr, beat_index: int, target: int, n_steps: int = IG_STEPS,
                   baseline: str = "auto") -> dict:
    """How much of beat ``beat_index``'s ``target`` logit comes from each input group.

    Integrated gradients over the whole sequence input (all windows and all RR features).
    Baseline windows: ``median``, every window replaced by the record's median beat ("every
    beat looks like this patient's usual beat"; needs the channels ``beat`` and
    ``beat_minus_record_median``), or ``zero``, flat windows; ``auto`` (default) takes
    ``median`` when the model's channels allow it, else ``zero``. Baseline RR features: a
    perfectly regular rhythm (every RR column = the record's mean RR, so every RR ratio the
    model sees is 1). The median baseline also keeps the path away from the all-zero
    window, where scale-free features (correlation with the median beat) jump and
    integrated gradients converge poorly.
    ``|attribution|`` is summed into the beat's own window, the neighbours' windows and
    the RR features (own + neighbours'); the fractions sum to 1.
    """
    torch = _torch()
    from captum.attr import IntegratedGradients

    if baseline not in ("auto", "median", "zero"):
        raise EcgkitError(f"rhythm context: baseline must be 'auto', 'median' or 'zero', got {baseline!r}")
    _check_inputs(windows, rr, beat_index)
    windows, rr = _on_model(model, windows, rr)
    model.eval()
    b = int(beat_index)
    f = _sequence_logit(model, b, target)
    base_w = _median_baseline(model, windows) if baseline != "zero" else None
    if base_w is None:
        if baseline == "median":
            raise EcgkitError("rhythm context: the median baseline needs the channels beat and "
                              "beat_minus_record_median")
        base_w, baseline = torch.zeros_like(windows), "zero"
    else:
        baseline = "median"
    base_rr = rr[..., 3:4].expand_as(rr).contiguous()
    with torch.enable_grad():
        aw, arr = IntegratedGradients(f).attribute((windows, rr), baselines=(base_w, base_rr), n_steps=int(n_steps),
                                                   internal_batch_size=int(n_steps))
    with torch.no_grad():
        gap = float(f(windows, rr) - f(base_w, base_rr))
    signed = float(aw.sum() + arr.sum())
    aw, arr = aw.detach().abs()[0], arr.detach().abs()[0]
    own = float(aw[b].sum())
    neigh = float(aw.sum()) - own
    rr_own = float(arr[b].sum())
    rr_all = float(arr.sum())
    tot = max(own + neigh + rr_all, 1e-12)
    per_beat = (aw.sum((1, 2)) + arr.sum(1)) / tot
    return {"own_window": own / tot, "neighbour_windows": neigh / tot, "rr_features": rr_all / tot,
            "rr_own": rr_own / tot, "rr_neighbours": (rr_all - rr_own) / tot,
            "per_beat": [float(x) for x in per_beat], "logit_minus_baseline": gap,
            "convergence_delta": signed - gap, "baseline": baseline,
            "method": f"integrated gradients over the whole sequence ({int(n_steps)} steps) of the target logit; "
                      f"baseline: {'median beat' if baseline == 'median' else 'flat'} windows and a regular "
                      f"rhythm at the record's mean RR; shares of |attribution|"}


# ------------------------------------------------------------------------------------------
# records, beats and sequences
# ------------------------------------------------------------------------------------------

def parse_sample_id(s: str):
    """``"100_beat_5" -> ("100", 5)``; the record part may be a path (``data/100_beat_5``)."""
    m = re.fullmatch(r"\s*(.+?)_beat_(\d+)\s*", str(s))
    if not m:
        raise EcgkitError(f"bad sample id {s!r}: expected RECORD_beat_N, e.g. 100_beat_5")
    return m.group(1), int(m.group(2))


def _model_input(prep: dict, spec: dict, rows):
    """Model input ``(windows (1, T, C, S), rr (1, T, 4))`` of the beats ``rows`` of a prepared record."""
    torch = _torch()
    from .inference import lead2_batch, make_channels

    S = spec["before_samples"] + spec["after_samples"]
    W = torch.from_numpy(prep["W"][rows])[None]
    windows = make_channels(W, torch.from_numpy(prep["med"])[None], spec["channels"], 0, S,
                            lead2=lead2_batch(prep, rows))
    return windows, torch.from_numpy(prep["rr"][rows])[None]


@dataclass
class RecordBeats:
    """One record's beats as the model sees them: positions, reference labels and model input."""

    record: object       # ecgkit.io.Record
    peaks: np.ndarray    # beat positions, record samples
    labels: np.ndarray   # AAMI class index from the reference annotations, -1 if unknown
    prep: dict           # ecgkit.inference.prepare_record output
    spec: dict
    signal: np.ndarray   # the record's lead as the model sees it (band-passed, resampled, z-scored)

    def __len__(self) -> int:
        return int(self.peaks.size)

    def sequence(self, beat: int, seq_len: int | None = None):
        """The model-length sequence around ``beat`` (centred, clipped at the record's edges).

        Returns ``(windows (1, T, C, S), rr (1, T, 4), beat_index, start)``.
        """
        n = len(self)
        T = min(int(seq_len or self.spec.get("seq_len", 64)), n)
        start = int(np.clip(beat - T // 2, 0, n - T))
        windows, rr = _model_input(self.prep, self.spec, np.arange(start, start + T))
        return windows, rr, int(beat - start), start


def _prepare(record, peaks: np.ndarray, spec: dict) -> tuple[np.ndarray, dict]:
    """``(model signal, model input)`` of a record, band-passing, resampling and z-scoring it once."""
    from .inference import model_signal, prepare_record

    x = model_signal(record, spec)
    return x, prepare_record(record, peaks, spec, signal=x)


def load_record_beats(record, spec: dict, data=None, segmenter: str = "reference", lead=None) -> RecordBeats:
    """Read ``record`` (name in the data directory or path), find its beats, build the model input."""
    from .datasets import resolve_records
    from .io import read_record
    from .registry import create
    from .segment import labelled_peaks

    paths = resolve_records([str(record)], data)
    if len(paths) != 1:
        raise EcgkitError(f"give one record, not the split {record!r}")
    rec = read_record(paths[0], lead)
    peaks, labels = labelled_peaks(rec, create("segmenters", segmenter))
    if peaks.size == 0:
        raise EcgkitError(f"record {rec.name}: no beats found (segmenter {segmenter!r}); nothing to explain")
    signal, prep = _prepare(rec, peaks, spec)
    return RecordBeats(rec, peaks, labels, prep, spec, signal)


def _reference_labels(record, lead=None) -> np.ndarray:
    """AAMI class indices of a record's reference beats, without filtering the signal.

    The same labels, beat for beat, as ``load_record_beats(record, ..., segmenter="reference")``
    (the same :func:`ecgkit.segment.labelled_peaks` call), for choosing beats by class across
    many records before preparing only those that hold a chosen beat.
    """
    from .io import read_record
    from .registry import create
    from .segment import labelled_peaks

    return labelled_peaks(read_record(record, lead), create("segmenters", "reference"))[1]


def _make_explainer(method: str, model, data=None, **params):
    """Build a registered explainer, passing ``data`` when the factory takes it (shap's background)."""
    from .registry import create, get

    comp = get("explainers", method)  # unknown method -> one-line RegistryError listing the known ones
    try:
        if "data" in inspect.signature(comp.factory).parameters:
            params.setdefault("data", data)
    except (TypeError, ValueError):
        pass
    return create("explainers", method, model=model, **params)


@dataclass
class BeatExplanation:
    record: str
    beat: int
    method: str
    target: int
    probs: np.ndarray        # (n_classes,) of the beat, from its centred sequence
    seq_probs: np.ndarray    # (T, n_classes)
    attribution: np.ndarray  # (C, S)
    context: dict
    windows: np.ndarray      # (T, C, S)
    rr: np.ndarray           # (T, 4)
    beat_index: int
    start: int
    explainer_info: dict = field(default_factory=dict)


def _explain_one(model, rb: RecordBeats, beat: int, method: str, explain, target=None,
                 context: bool = True, context_steps: int = IG_STEPS) -> BeatExplanation:
    torch = _torch()
    windows, rr, bi, start = rb.sequence(beat)
    windows, rr = _on_model(model, windows, rr)
    model.eval()
    with torch.no_grad():
        seq_probs = torch.softmax(model(windows, rr)[0].float(), -1).cpu().numpy()
    tgt = int(seq_probs[bi].argmax()) if target is None else int(target)
    attr = np.asarray(explain(windows, rr, bi, tgt), dtype=np.float32)
    if attr.shape != tuple(windows.shape[2:]):
        raise EcgkitError(f"explainer {method!r} returned shape {attr.shape}, expected {tuple(windows.shape[2:])}")
    ctx = rhythm_context(model, windows, rr, bi, tgt, context_steps) if context else {}
    info = {"layer": explain.layer_name} if getattr(explain, "layer_name", None) else {}
    return BeatExplanation(rb.record.name, int(beat), method, tgt, seq_probs[bi], seq_probs, attr, ctx,
                           windows[0].cpu().numpy(), rr[0].cpu().numpy(), bi, start, info)


# ------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path) -> Path:
    from .io import atomic_write

    plt = _plt()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path


def _save_npy(arr, path: Path) -> Path:
    from .io import atomic_write

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    return atomic_write(path, write)


def _save_json(obj, path: Path) -> Path:
    from .io import atomic_write

    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, default=float)))


def _label(labels, classes, i) -> str:
    return classes[labels[i]] if 0 <= labels[i] < len(classes) else "?"


def plot_beat(ex: BeatExplanation, rb: RecordBeats, path: Path, n_neighbours: int = 3) -> Path:
    """ECG around the beat with the attribution as a heatmap, beat markers, RR intervals, class probabilities.

    The ECG panel shows ``n_neighbours`` beats each side of the explained one (fewer at the
    edges of its sequence).
    """
    plt = _plt()
    spec, classes = rb.spec, list(rb.spec["classes"])
    fs, before, after = spec["fs_hz"], spec["before_samples"], spec["after_samples"]
    x = rb.signal
    pos = np.round(rb.peaks * fs / rb.record.fs).astype(np.int64)
    b = ex.beat
    lo_b = max(ex.start, b - n_neighbours)
    hi_b = min(ex.start + len(ex.seq_probs) - 1, b + n_neighbours, len(pos) - 1)
    lo = max(0, int(pos[lo_b]) - before)
    hi = min(len(x), int(pos[hi_b]) + after)
    t = (np.arange(lo, hi) - pos[b]) / fs
    sal = ex.attribution.sum(0)  # total attribution per time sample (both channels derive from it)
    vmax = float(np.abs(sal).max()) or 1.0
    pred = int(ex.probs.argmax())

    fig = plt.figure(figsize=(12.5, 6.6), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=[3.2, 1], height_ratios=[1.5, 1])
    ax = fig.add_subplot(gs[0, 0])
    ymin, ymax = float(x[lo:hi].min()), float(x[lo:hi].max())
    pad = 0.25 * (ymax - ymin + 1e-6)
    ylo, yhi = ymin - pad, ymax + 2.3 * pad
    tw = (np.arange(-before, after)) / fs
    im = ax.imshow(sal[None, :], aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=0.75,
                   extent=(tw[0], tw[-1] + 1 / fs, ylo, yhi), zorder=0)
    ax.plot(t, x[lo:hi], color="black", lw=1.0, zorder=2)
    for j in range(lo_b, hi_b + 1):
        tj = (pos[j] - pos[b]) / fs
        pj = classes[int(ex.seq_probs[j - ex.start].argmax())]
        ref = _label(rb.labels, classes, j)
        ax.axvline(tj, color="crimson" if j == b else "0.45", ls="-" if j == b else ":", lw=1.0, zorder=1)
        share = ex.context.get("per_beat")
        share = f"\n{100 * share[j - ex.start]:.0f} %" if share else ""
        ax.text(tj, yhi - 0.04 * (yhi - ylo), f"#{j}\n{ref} / {pj}{share}", ha="center", va="top", fontsize=7,
                color="crimson" if j == b else "0.2", fontweight="bold" if j == b else "normal")
        if j < hi_b:
            tn = (pos[j + 1] - pos[b]) / fs
            yr = ylo + 0.07 * (yhi - ylo)
            ax.annotate("", xy=(tn, yr), xytext=(tj, yr), arrowprops=dict(arrowstyle="<->", color="0.3", lw=0.8))
            ax.text((tj + tn) / 2, yr + 0.02 * (yhi - ylo), f"RR {(rb.peaks[j + 1] - rb.peaks[j]) / rb.record.fs:.2f} s",
                    ha="center", va="bottom", fontsize=7, color="0.2")
    ax.set_xlim(t[0], t[-1])
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("time from the beat's R peak (s); markers: beat index, reference / predicted class"
                  + (", share of the decision (window + RR)" if ex.context.get("per_beat") else ""))
    ax.set_ylabel("ECG (z-score)")
    r = ex.rr[ex.beat_index]
    ax.set_title(f"record {ex.record}, beat {b} (t = {rb.peaks[b] / rb.record.fs:.2f} s): reference "
                 f"{_label(rb.labels, classes, b)}, predicted {classes[pred]} ({100 * ex.probs[pred]:.0f} %); "
                 f"{ex.method} for class {classes[ex.target]}\npre-RR {r[0]:.2f} s, post-RR {r[1]:.2f} s, "
                 f"local mean {r[2]:.2f} s (pre/local {r[0] / max(r[2], 1e-6):.2f})", fontsize=9)
    cb = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03)
    cb.set_label(f"attribution to {classes[ex.target]}", fontsize=8)

    # own window: attribution per input channel
    ax2 = fig.add_subplot(gs[1, 0])
    tms = 1000 * tw
    same = all(np.allclose(ex.attribution[0], a) for a in ex.attribution[1:])
    for c, name in enumerate(spec["channels"][:1] if same else spec["channels"]):
        ax2.plot(tms, ex.attribution[c], lw=1.1, label="attribution (all channels)" if same else f"attribution: {name}")
    ax2.axhline(0, color="0.7", lw=0.6)
    ax2.axvline(0, color="crimson", lw=0.8)
    ax2.set_xlabel("ms from R")
    ax2.set_ylabel("attribution")
    ax2.set_xlim(tms[0], tms[-1])
    ax2.legend(fontsize=7, loc="upper left")
    ax2b = ax2.twinx()
    ax2b.plot(tms, ex.windows[ex.beat_index, 0], color="0.55", lw=0.8, ls="--", label="beat (input)")
    ax2b.set_ylabel("beat (z)", color="0.45", fontsize=8)
    ax2.set_title("own window: per-sample attribution per input channel", fontsize=9)

    axp = fig.add_subplot(gs[0, 1])
    colors = ["crimson" if i == ex.target else "steelblue" for i in range(len(classes))]
    axp.barh(classes[::-1], ex.probs[::-1], color=colors[::-1])
    for i, p in enumerate(ex.probs[::-1]):
        axp.text(min(p + 0.02, 0.8), i, f"{100 * p:.1f} %", va="center", fontsize=8)
    axp.set_xlim(0, 1)
    axp.set_title("predicted class probabilities", fontsize=9)

    axc = fig.add_subplot(gs[1, 1])
    if ex.context:
        names = ["own\nmorphology", "neighbours'\nwindows", "RR\nfeatures"]
        vals = [ex.context["own_window"], ex.context["neighbour_windows"], ex.context["rr_features"]]
        axc.bar(names, vals, color=["crimson", "darkorange", "seagreen"])
        for i, v in enumerate(vals):
            axc.text(i, v + 0.02, f"{100 * v:.0f} %", ha="center", fontsize=8)
        axc.set_ylim(0, 1.1)
        axc.tick_params(axis="x", labelsize=7)
        axc.set_title("where the decision came from\n(IG over the whole sequence, |attr| shares)", fontsize=8)
    else:
        axc.axis("off")
    return _save_fig(fig, path)


def plot_class_average(mean_abs, mean_beat, std_beat, spec, cls, method, n, path: Path,
                       context: dict | None = None, records=None) -> Path:
    """Mean |attribution| aligned on R over ``n`` beats of class ``cls``, with the mean beat."""
    plt = _plt()
    fs, before, after = spec["fs_hz"], spec["before_samples"], spec["after_samples"]
    tms = 1000 * np.arange(-before, after) / fs
    C = mean_abs.shape[0]
    fig, axes = plt.subplots(C + 1, 1, figsize=(9, 2.6 * (C + 1)), sharex=True)
    vmax = float(mean_abs.max()) or 1.0
    for c, ax in enumerate(axes[:C]):
        m, s = mean_beat[c], std_beat[c]
        lo, hi = float((m - s).min()), float((m + s).max())
        pad = 0.1 * (hi - lo + 1e-6)
        im = ax.imshow(mean_abs[c][None], aspect="auto", cmap="magma_r", vmin=0, vmax=vmax, alpha=0.8,
                       extent=(tms[0], tms[-1], lo - pad, hi + pad))
        ax.fill_between(tms, m - s, m + s, color="0.6", alpha=0.35, lw=0)
        ax.plot(tms, m, color="black", lw=1.2)
        ax.axvline(0, color="crimson", lw=0.8, ls=":")
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_ylabel(f"{spec['channels'][c]}\n(z)", fontsize=8)
        fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03).set_label("mean |attr|", fontsize=7)
    ax = axes[C]
    for c in range(C):
        ax.plot(tms, mean_abs[c], lw=1.2, label=spec["channels"][c])
    ax.axvline(0, color="crimson", lw=0.8, ls=":")
    ax.set_ylabel("mean |attribution|")
    ax.set_xlabel("ms from R")
    ax.legend(fontsize=7)
    title = f"class {cls}: mean |{method}| attribution to {cls}, aligned on R, over {n} beats (mean beat +- 1 SD)"
    if context:
        title += (f"\ndecision sources (IG, mean): own morphology {100 * context['own_window']:.0f} %, "
                  f"neighbours {100 * context['neighbour_windows']:.0f} %, RR {100 * context['rr_features']:.0f} %")
    if records:
        title += f"\nrecords: {', '.join(records[:12])}{' ...' if len(records) > 12 else ''}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save_fig(fig, path)


# ------------------------------------------------------------------------------------------
# the command-line entry points
# ------------------------------------------------------------------------------------------

def _beat_summary(ex: BeatExplanation, rb: RecordBeats, model_ref) -> dict:
    classes = list(rb.spec["classes"])
    return {"record": ex.record, "beat": ex.beat, "sample": int(rb.peaks[ex.beat]),
            "time_s": float(rb.peaks[ex.beat] / rb.record.fs), "model": str(model_ref), "method": ex.method,
            "reference": _label(rb.labels, classes, ex.beat), "predicted": classes[int(ex.probs.argmax())],
            "target": classes[ex.target], "probabilities": dict(zip(classes, map(float, ex.probs))),
            "rr_s": dict(zip(("pre_rr", "post_rr", "local_mean_rr", "record_mean_rr"), map(float, ex.rr[ex.beat_index]))),
            "attribution_shape": list(ex.attribution.shape), "channels": list(rb.spec["channels"]),
            "explainer": ex.explainer_info,
            "context": ex.context,
            "sequence": {"start_beat": ex.start, "beats": len(ex.seq_probs), "beat_index": ex.beat_index}}


def _write_beat(ex: BeatExplanation, rb: RecordBeats, out: Path, model_ref) -> list[Path]:
    stem = f"{ex.record}_beat_{ex.beat}_{ex.method}"
    return [plot_beat(ex, rb, out / f"{stem}.png"),
            _save_npy(ex.attribution, out / f"{stem}.npy"),
            _save_json(_beat_summary(ex, rb, model_ref), out / f"{stem}.json")]


def _check_beat(beat, n: int, name: str) -> int:
    try:
        b = int(beat)
    except (TypeError, ValueError):
        raise EcgkitError(f"beat index must be an integer, got {beat!r}") from None
    if not 0 <= b < n:
        raise EcgkitError(f"beat {b} out of range: record {name} has {n} beats (indices 0..{n - 1})")
    return b


def _explain_beat(model_ref, record, beat, method, out_dir, data=None, segmenter="reference", lead=None,
                 target=None) -> list[Path]:
    """Explain beat ``beat`` of ``record``: ``<record>_beat_<N>_<method>.png``, ``.npy`` and ``.json`` in ``out_dir``.

    The explained class is the predicted one unless ``target`` (a class name) is given.
    """
    from .models import load_any_model
    from .registry import get

    get("explainers", method)  # fail fast on an unknown method
    model, spec, _ = load_any_model(model_ref)
    explain = _make_explainer(method, model, data)
    rb = load_record_beats(record, spec, data, segmenter, lead)
    b = _check_beat(beat, len(rb), rb.record.name)
    tgt = _class_index(target, spec) if target is not None else None
    ex = _explain_one(model, rb, b, method, explain, tgt)
    return _write_beat(ex, rb, Path(out_dir), model_ref)


def _class_index(cls, spec) -> int:
    classes = list(spec["classes"])
    c = str(cls).upper()
    if c not in classes:
        raise EcgkitError(f"unknown class {cls!r}; the model's classes are {', '.join(classes)}")
    return classes.index(c)


def _class_average(model_ref, cls, n, method, out_dir, data=None, records=None, lead=None,
                  context: bool = True, seed: int = 0) -> list[Path]:
    """Class-average saliency: mean |attribution| to ``cls`` over up to ``n`` reference beats of that class.

    Beats are drawn (``seed``) from ``records`` (default DS2, the test split), aligned on
    R (every window is). Writes ``class_<cls>_<method>.png``, ``.npy`` (mean |attr|, C x S)
    and ``.json`` (beats used, mean decision sources).
    """
    from .datasets import resolve_records
    from .models import load_any_model
    from .registry import get

    get("explainers", method)
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise EcgkitError(f"--n must be a positive integer, got {n!r}") from None
    if n < 1:
        raise EcgkitError(f"--n must be a positive integer, got {n}")
    model, spec, _ = load_any_model(model_ref)
    k = _class_index(cls, spec)
    cls = spec["classes"][k]
    records = ["DS2"] if not records else ([records] if isinstance(records, str) else list(records))
    paths = resolve_records(records, data)
    explain = _make_explainer(method, model, data)
    rng = np.random.default_rng(seed)
    # which beats: every record's reference labels (read, not filtered), then n of class cls drawn across
    # them; only the records that hold a drawn beat are read and prepared for the model
    cands = [(p, int(i)) for p in paths for i in np.flatnonzero(_reference_labels(p, lead) == k)]
    if not cands:
        raise EcgkitError(f"no beats of class {cls} in records {', '.join(records)}")
    pick = sorted(rng.choice(len(cands), size=min(n, len(cands)), replace=False).tolist())
    chosen = [cands[i] for i in pick]
    loaded: dict[str, RecordBeats] = {}
    attrs, beats, ctxs, used, correct = [], [], [], [], 0
    for p, i in chosen:
        if p not in loaded:
            loaded[p] = load_record_beats(p, spec, data, "reference", lead)
        rb = loaded[p]
        ex = _explain_one(model, rb, i, method, explain, target=k, context=context, context_steps=16)
        attrs.append(np.abs(ex.attribution))
        beats.append(ex.windows[ex.beat_index])
        correct += int(ex.probs.argmax() == k)
        if context:
            ctxs.append([ex.context["own_window"], ex.context["neighbour_windows"], ex.context["rr_features"]])
        used.append(f"{rb.record.name}_beat_{i}")
    mean_abs = np.mean(attrs, 0).astype(np.float32)
    mb, sb = np.mean(beats, 0), np.std(beats, 0)
    ctx = None
    if ctxs:
        m = np.mean(ctxs, 0)
        ctx = {"own_window": float(m[0]), "neighbour_windows": float(m[1]), "rr_features": float(m[2])}
    recs = sorted({u.split("_beat_")[0] for u in used})
    out = Path(out_dir)
    stem = f"class_{cls}_{method}"
    summary = {"class": cls, "method": method, "model": str(model_ref), "n": len(used), "asked": n,
               "records": recs, "predicted_correctly": correct, "context_mean": ctx, "beats": used,
               "target": cls, "aligned_on": "R (window index before_samples)"}
    return [plot_class_average(mean_abs, mb, sb, spec, cls, method, len(used), out / f"{stem}.png", ctx, recs),
            _save_npy(mean_abs, out / f"{stem}.npy"),
            _save_json(summary, out / f"{stem}.json")]


def _explain_examples(model_ref, out_dir, data=None, methods=("gradcam", "shap")) -> list[Path]:
    """A few example figures for ``ecgkit run``: one N, one S and one V beat of DS2, each with ``methods``.

    Looks in DS2 records (starting with 100, which holds all three classes) and prefers,
    per class, a beat the model classifies correctly, with the highest probability among a
    few candidates. Settings are lighter than the CLI's (shap 32 samples, rhythm context
    16 steps) to stay within ~30 s.
    """
    torch = _torch()
    from .datasets.mitdb import DS2
    from .models import load_any_model

    model, spec, _ = load_any_model(model_ref)
    classes = list(spec["classes"])
    want = [c for c in ("N", "S", "V") if c in classes]
    light = {"shap": {"nsamples": 32}, "ig": {"n_steps": 16}}
    explainers = {m: _make_explainer(m, model, data, **light.get(m, {})) for m in methods}
    out, files, found = Path(out_dir), [], {}
    for name in DS2:
        if len(found) == len(want):
            break
        try:
            rb = load_record_beats(name, spec, data, "reference")
        except EcgkitError:
            continue
        for c in want:
            if c in found:
                continue
            k = classes.index(c)
            idx = np.flatnonzero(rb.labels == k)
            if not idx.size:
                continue
            inner = idx[(idx >= 3) & (idx < len(rb) - 3)]  # neighbours on both sides in the figure
            idx = inner if inner.size else idx
            cand = idx[np.linspace(0, idx.size - 1, min(6, idx.size)).round().astype(int)]
            best, best_p = int(cand[0]), -1.0
            with torch.no_grad():
                for b in cand:
                    w, rr, bi, _ = rb.sequence(int(b))
                    p = torch.softmax(model(*_on_model(model, w, rr))[0, bi].float(), -1)
                    score = float(p[k]) if int(p.argmax()) == k else float(p[k]) - 1.0
                    if score > best_p:
                        best, best_p = int(b), score
            found[c] = (rb, best)
    for c in want:
        if c not in found:
            continue
        rb, b = found[c]
        ctx = None
        for m in methods:
            ex = _explain_one(model, rb, b, m, explainers[m], context=ctx is None, context_steps=16)
            if ctx is None:
                ctx = ex.context
            else:
                ex.context = ctx
            files += [p for p in _write_beat(ex, rb, out, model_ref) if p.suffix == ".png"]
    return files


def explain_beat(model_ref, record, beat, method, out_dir, data=None, segmenter="reference", lead=None,
                 target=None) -> list[Path]:
    """Explain beat ``beat`` of ``record``: ``<record>_beat_<N>_<method>.png``, ``.npy`` and ``.json`` in ``out_dir``.

    The PNG shows the ECG around the beat with the attribution as a heatmap, beat markers
    (reference / predicted class, share of the decision), RR intervals, the class
    probabilities and the decision sources (:func:`rhythm_context`); the ``.npy`` holds the
    per-sample attributions ``(channels, samples)``; the ``.json`` the probabilities, RR
    features and rhythm-context fractions. The explained class is the predicted one unless
    ``target`` (a class name) is given.
    """
    with _single_thread():
        return _explain_beat(model_ref, record, beat, method, out_dir, data, segmenter, lead, target)


def class_average(model_ref, cls, n, method, out_dir, data=None, records=None, lead=None,
                  context: bool = True, seed: int = 0) -> list[Path]:
    """Class-average saliency: mean |attribution| to ``cls`` over up to ``n`` reference beats of that class.

    Beats are drawn (``seed``) from ``records`` (default DS2, the test split) and aligned on
    R (every window is). Writes ``class_<cls>_<method>.png`` (mean beat +- SD per channel
    under the mean |attribution|), ``.npy`` (mean |attr|, channels x samples) and ``.json``
    (beats used, how many the model got right, mean decision sources).
    """
    with _single_thread():
        return _class_average(model_ref, cls, n, method, out_dir, data, records, lead, context, seed)


def explain_examples(model_ref, out_dir, data=None, methods=("gradcam", "shap")) -> list[Path]:
    """A few example PNGs for ``ecgkit run``: one N, one S and one V beat of DS2, each with ``methods``."""
    with _single_thread():
        return _explain_examples(model_ref, out_dir, data, methods)
