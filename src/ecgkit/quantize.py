"""Post-training int8 quantization and ONNX export (edge deployment).

* :func:`export_onnx` writes the fp32 graph of a checkpoint as ONNX (``torch.onnx.export(dynamo=True)``),
  with dynamic batch and sequence axes: ``windows (B, T, C, S), rr (B, T, 4) -> logits (B, T, n_classes)``.
* :func:`quantize` calibrates that graph on training beats (DS1 by default, never the test split DS2) and
  writes an ONNX Runtime static int8 model: QDQ format, per-channel int8 weights and uint8 activations for
  every Conv, MatMul and Gemm; the few float initializers left (positional table, norms, biases) are stored
  as int8 + ``DequantizeLinear`` so the file stays small.

Both files are plain ONNX protobufs, i.e. data (no pickle, no code), carrying the model's input contract
in ``metadata_props`` (``ecgkit.input_spec``), so :func:`ecgkit.models.load_any_model` serves them to
``annotate`` / ``evaluate`` exactly like a torch checkpoint. Everything here needs the optional extra
``ecgkit[onnx]`` (onnx, onnxruntime, onnxscript); the base install keeps working without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import CheckpointError, ConfigError, EcgkitError, first_line

#: ``metadata_props`` key -> value that marks an ecgkit ONNX file (searched as bytes before parsing).
FORMAT_KEY = "ecgkit.format"
FORMAT = "ecgkit-onnx/1"
SPEC_KEY = "ecgkit.input_spec"
INFO_KEY = "ecgkit.info"
INSTALL_HINT = "pip install 'ecgkit[onnx]'"
OPSET = 18
#: Ops whose weights and activations become int8 (Conv1d, attention / feed-forward matmuls, linears).
QUANT_OPS = ("Conv", "MatMul", "Gemm")


def require(*modules: str):
    """Import the optional ONNX modules, or raise a one-line error naming the extra to install."""
    import importlib

    out = []
    for name in modules:
        try:
            out.append(importlib.import_module(name))
        except ImportError:
            raise EcgkitError(f"ONNX / int8 models need the optional extra: {INSTALL_HINT} "
                              f"(module {name!r} is not installed)") from None
    return out[0] if len(out) == 1 else out


# ------------------------------------------------------------------------------------------------------
# fp32 export
# ------------------------------------------------------------------------------------------------------
def _median_dim(self, dim: int, keepdim: bool = False):
    """ONNX translation of ``aten.median.dim`` / ``aten.nanmedian.dim``: sort (TopK) and take the lower middle.

    Matches torch (lower median for an even count). The exported graphs never carry NaN (no padding
    mask), so ``nanmedian`` is ``median`` there.
    """
    from onnxscript import opset18 as op

    n = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]), axis=0)          # [n]
    vals, idx = op.TopK(self, n, axis=dim, largest=0, sorted=1)
    k = op.Div(op.Sub(n, op.Constant(value_ints=[1])), op.Constant(value_ints=[2]))  # [(n - 1) // 2]
    v, i = op.Gather(vals, k, axis=dim), op.Gather(idx, k, axis=dim)
    if not keepdim:
        axes = op.Constant(value_ints=[dim])
        v, i = op.Squeeze(v, axes), op.Squeeze(i, axes)
    return v, i


_EXPORT_CACHE: dict = {}


def _source_key(path: Path):
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def load_fp32(model_ref: str):
    """``(model, checkpoint dict, path)`` of a registered model or torch checkpoint (safe loader)."""
    from .checkpoint import load_model, resolve_model_path

    path = resolve_model_path(model_ref)
    if is_onnx_file(path):
        raise ConfigError(f"{path} is already an ONNX model; give the fp32 torch checkpoint it came from")
    model, ck = load_model(str(path))
    return model, ck, path


def model_info(src: dict, *, params: bool = False, **extra) -> dict:
    """A model's ``info``: encoder, epoch, seed, ecgkit version and training environment read from
    ``src`` (a checkpoint dict or the info stored in an ONNX file), the encoder parameters too with
    ``params=True``, then ``extra``.

    The one place these dicts are built: the info stored in an ONNX file and the one
    :func:`load_onnx_model` returns.
    """
    info = {"encoder": src.get("encoder")}
    if params:
        info["params"] = src.get("params", {})
    info.update(epoch=src.get("epoch"), seed=src.get("seed"), ecgkit_version=src.get("ecgkit_version"),
                environment=src.get("environment"))
    info.update(extra)
    return info


def _example_inputs(spec: dict, B: int = 2, T: int = 16):
    import torch

    g = torch.Generator().manual_seed(0)
    S = spec["before_samples"] + spec["after_samples"]
    windows = torch.randn(B, T, len(spec["channels"]), S, generator=g)
    rr = 0.6 + 0.4 * torch.rand(B, T, 4, generator=g)
    return windows, rr


def to_onnx(model, spec: dict):
    """The fp32 ``onnx.ModelProto`` of an encoder: inputs ``windows``, ``rr``; output ``logits``."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    require("onnx", "onnxscript")
    windows, rr = _example_inputs(spec)
    lens = [m.cfg.max_len for m in model.modules() if isinstance(getattr(getattr(m, "cfg", None), "max_len", None), int)]
    max_len = min(lens) if lens else None  # an ensemble: its shortest member's positional table
    B = torch.export.Dim("batch")
    T = torch.export.Dim("beats", max=max_len) if max_len else torch.export.Dim("beats")
    table = {torch.ops.aten.nanmedian.dim: _median_dim, torch.ops.aten.median.dim: _median_dim}
    model.eval()
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(model, (windows, rr), None, dynamo=True, input_names=["windows", "rr"],
                                     output_names=["logits"], dynamic_shapes=({0: B, 1: T}, {0: B, 1: T}),
                                     opset_version=OPSET, custom_translation_table=table, optimize=True,
                                     verbose=False, report=False)
    except Exception as exc:
        raise EcgkitError(f"ONNX export of {type(model).__name__} failed: {first_line(exc, 300)}") from None
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
    proto = prog.model_proto
    _verify(model, proto, spec)
    return proto


def _verify(model, proto, spec: dict, tol: float = 1e-3) -> None:
    """Run the exported graph on other shapes than the traced ones and compare with torch."""
    import torch

    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for B, T in ((3, 5), (1, int(spec.get("seq_len", 64)))):
        windows, rr = _example_inputs(spec, B, T)
        with torch.inference_mode():
            ref = model(windows, rr).float().numpy()
        got = sess.run(["logits"], {"windows": windows.numpy(), "rr": rr.numpy()})[0]
        err = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if not err <= tol * max(1.0, float(np.abs(ref).max())):
            raise EcgkitError(f"ONNX export of {type(model).__name__} does not match torch at batch {B}, "
                              f"{T} beats (max |diff| {err:.3g})")


def _fp32_proto(model_ref: str):
    """``(fp32 ONNX proto, checkpoint dict)`` of ``model_ref``; the export is cached per checkpoint file in
    this process."""
    import copy

    model, ck, path = load_fp32(model_ref)
    key = _source_key(path)
    if key not in _EXPORT_CACHE:
        _EXPORT_CACHE.clear()
        _EXPORT_CACHE[key] = to_onnx(model, ck["input_spec"])
    return copy.deepcopy(_EXPORT_CACHE[key]), ck


def _set_metadata(proto, spec: dict, info: dict) -> None:
    from .checkpoint import _plain

    del proto.metadata_props[:]
    for k, v in ((FORMAT_KEY, FORMAT), (SPEC_KEY, json.dumps(_plain(spec))), (INFO_KEY, json.dumps(_plain(info)))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "ecgkit"


def _shrink(proto) -> None:
    """Drop what the runtime does not need (per-node metadata, doc strings, value_info) and give every
    internal tensor and node a short name: ~20 % of a small int8 file is names otherwise."""
    g = proto.graph
    del g.value_info[:]
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = f"t{len(names):x}"
        return names[name]

    for init in g.initializer:
        init.name = short(init.name)
        init.doc_string = ""
    for i, node in enumerate(g.node):
        del node.metadata_props[:]
        node.doc_string = ""
        node.name = f"n{i:x}"
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
        for a in node.attribute:
            if a.g.ByteSize() or len(a.graphs):
                raise EcgkitError("subgraphs are not expected in an ecgkit encoder graph")
    g.doc_string = ""
    proto.doc_string = ""


def _write_proto(proto, out) -> Path:
    from .io import atomic_write

    data = proto.SerializeToString()  # one self-contained file: weights inside, no external data
    return atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))


def export_onnx(model_ref: str, out) -> Path:
    """Write the fp32 ONNX graph of ``model_ref`` (registered name or checkpoint) to ``out``, atomically."""
    proto, ck = _fp32_proto(model_ref)
    _shrink(proto)
    _set_metadata(proto, ck["input_spec"], model_info(ck, params=True, precision="fp32", source=str(model_ref)))
    return _write_proto(proto, out)


# ------------------------------------------------------------------------------------------------------
# calibration data
# ------------------------------------------------------------------------------------------------------
def _check_calibration_records(paths, data) -> None:
    """Refuse the test split: DS2 records of the MIT-BIH data directory never calibrate."""
    from .datasets import data_dir
    from .datasets.mitdb import DS2

    try:
        base = data_dir(data).resolve()
    except EcgkitError:
        return
    bad = [Path(p).name for p in paths if Path(p).name in DS2 and Path(p).parent.resolve() == base]
    if bad:
        raise ConfigError(f"calibration on test records {', '.join(bad)} (DS2) is refused: "
                          f"calibrate on training records (default DS1)")


def calibration_sequences(spec: dict, records, data=None, calib_beats: int = 2048, seq_len: int | None = None,
                          segmenter: str = "reference", seed: int = 0) -> list[dict]:
    """Model inputs ``{"windows": (1, T, C, S), "rr": (1, T, 4)}`` covering about ``calib_beats`` beats.

    Sequences of ``seq_len`` consecutive beats (the inference length), drawn evenly across the records
    (at random positions in each, fixed seed), fed exactly as :func:`ecgkit.inference.predict_log_proba` does.
    """
    from .datasets import resolve_records

    paths = resolve_records(list(records), data)
    _check_calibration_records(paths, data)
    return _sequences(spec, paths, calib_beats, seq_len, segmenter, seed)


def _sequences(spec: dict, paths: list[str], calib_beats: int, seq_len: int | None = None,
               segmenter: str = "reference", seed: int = 0) -> list[dict]:
    """:func:`calibration_sequences` of record ``paths`` already resolved and checked (not DS2)."""
    import torch

    from .inference import lead2_batch, make_channels, prepare_record
    from .io import read_record
    from .registry import create
    from .segment import detect_beats

    if not paths:
        raise ConfigError("no calibration records")
    T = int(seq_len or spec.get("seq_len", 64))
    n_seq = max(1, -(-int(calib_beats) // T))
    rng = np.random.default_rng(seed)
    order = [paths[i] for i in np.linspace(0, len(paths) - 1, min(n_seq, len(paths))).round().astype(int)]
    per = [n_seq // len(order) + (i < n_seq % len(order)) for i in range(len(order))]
    detector = create("segmenters", segmenter)
    S = spec["before_samples"] + spec["after_samples"]
    out = []
    for path, k in zip(order, per):
        rec = read_record(path)
        peaks = detect_beats(detector, rec)
        if peaks.size == 0:
            continue
        prep = prepare_record(rec, peaks, spec)
        n = len(prep["rr"])
        t = min(T, n)
        W, rr, med = (torch.from_numpy(prep[k_]) for k_ in ("W", "rr", "med"))
        for s in np.sort(rng.integers(0, n - t + 1, size=k)):
            rows = torch.arange(int(s), int(s) + t)
            x = make_channels(W[rows][None], med[None], spec["channels"], 0, S, lead2=lead2_batch(prep, rows))
            out.append({"windows": x.numpy(), "rr": rr[rows][None].numpy()})
    if not out:
        raise ConfigError("calibration records hold no beats")
    return out


class _Reader:
    """onnxruntime CalibrationDataReader over prepared sequences, several per batch."""

    def __init__(self, seqs: list[dict], batch: int = 8):
        self.batches = []
        by_len: dict[int, list[dict]] = {}
        for s in seqs:
            by_len.setdefault(s["rr"].shape[1], []).append(s)
        for group in by_len.values():
            for i in range(0, len(group), batch):
                part = group[i:i + batch]
                self.batches.append({k: np.concatenate([p[k] for p in part]) for k in ("windows", "rr")})
        self.it = iter(self.batches)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.batches)


# ------------------------------------------------------------------------------------------------------
# int8
# ------------------------------------------------------------------------------------------------------
def _compress_float_initializers(proto, min_elements: int = 1024) -> int:
    """Store every remaining large fp32 initializer as int8 + DequantizeLinear (per column). Returns bytes saved.

    After static quantization only tensors outside Conv/MatMul/Gemm are still float (the positional table,
    mostly); ``Q(x) = round(x / scale)`` with one symmetric scale per last-axis column costs < 0.4 % of each
    column's range, far below the activation quantization noise.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    saved = 0
    new_inits, new_nodes = [], []
    graph_inputs = {v.name for v in graph.input}
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or init.name in graph_inputs:
            continue
        users = consumers.get(init.name, [])
        if not users or any(u.op_type in ("QuantizeLinear", "DequantizeLinear") for u in users):
            continue
        w = numpy_helper.to_array(init)
        if w.size < min_elements or w.ndim < 1:
            continue
        axis = w.ndim - 1
        red = tuple(range(w.ndim - 1))
        scale = (np.abs(w).max(axis=red) / 127.0).astype(np.float32) if w.ndim > 1 else \
            np.array(np.abs(w).max() / 127.0, np.float32)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        base = init.name
        graph.initializer.remove(init)
        new_inits += [numpy_helper.from_array(q, base + "_i8"), numpy_helper.from_array(scale, base + "_i8_scale")]
        kw = {"axis": axis} if w.ndim > 1 else {}
        new_nodes.append(helper.make_node("DequantizeLinear", [base + "_i8", base + "_i8_scale"], [base],
                                          name=base + "_i8_dq", **kw))
        saved += w.nbytes - q.nbytes - scale.nbytes
    graph.initializer.extend(new_inits)
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return saved


def quantize(model_ref: str, out, data=None, calib_records=("DS1",), calib_beats: int = 2048,
             method: str = "minmax") -> Path:
    """Write an int8 ONNX model of ``model_ref`` calibrated on ``calib_records`` beats; returns its path.

    ``method``: activation-range calibration, ``minmax`` (default), ``percentile`` or ``entropy``.
    """
    import contextlib
    import io
    import tempfile

    onnx = require("onnx")
    qmod = require("onnxruntime.quantization")
    from .checkpoint import _plain

    if calib_beats < 1:
        raise ConfigError(f"calib_beats must be positive, got {calib_beats}")
    methods = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
    if method not in methods:
        raise ConfigError(f"unknown calibration method {method!r}; expected one of {', '.join(methods)}")
    from .datasets import iter_records

    paths = iter_records(list(calib_records), data).paths  # every header checked
    _check_calibration_records(paths, data)  # both before the slow export
    proto, ck = _fp32_proto(model_ref)
    spec = ck["input_spec"]
    seqs = _sequences(spec, paths, calib_beats)
    with tempfile.TemporaryDirectory(prefix="ecgkit-quant-") as tmp:
        f32, f32o, q8 = Path(tmp, "fp32.onnx"), Path(tmp, "fp32-opt.onnx"), Path(tmp, "int8.onnx")
        onnx.save_model(proto, f32)
        try:  # ORT's recommended pre-processing: graph optimisation + shape inference
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(f32), str(f32o), skip_symbolic_shape=True)
        except Exception:
            f32o = f32
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                qmod.quantize_static(
                    str(f32o), str(q8), _Reader(seqs), quant_format=qmod.QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANT_OPS), per_channel=True, reduce_range=False,
                    activation_type=qmod.QuantType.QUInt8, weight_type=qmod.QuantType.QInt8,
                    calibrate_method=getattr(qmod.CalibrationMethod, methods[method]),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                   "CalibMovingAverage": False})
        except Exception as exc:
            raise EcgkitError(f"int8 quantization failed: {first_line(exc, 300)}") from None
        qproto = onnx.load_model(str(q8))
    _compress_float_initializers(qproto)
    _shrink(qproto)
    n_beats = int(sum(s["rr"].shape[1] for s in seqs))
    calibration = {"records": _plain(list(calib_records)), "beats": n_beats, "method": method,
                   "format": "QDQ per-channel u8s8", "ops": list(QUANT_OPS)}
    _set_metadata(qproto, spec, model_info(ck, params=True, precision="int8", source=str(model_ref),
                                           calibration=calibration))
    onnx.checker.check_model(qproto)
    return _write_proto(qproto, out)


# ------------------------------------------------------------------------------------------------------
# loading (used by ecgkit.models.load_any_model)
# ------------------------------------------------------------------------------------------------------
def is_onnx_file(path) -> bool:
    """True for a file written by :func:`quantize` / :func:`export_onnx` (marker bytes, no parsing)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(4)
            if head[:2] == b"PK":  # torch checkpoints are zip archives
                return False
            size = p.stat().st_size
            if size > 1 << 20:  # metadata_props are serialized after the graph: look at the tail
                f.seek(size - (1 << 20))
            return FORMAT.encode() in head + f.read()
    except OSError:
        return False


class InferenceOnlyError(CheckpointError, AttributeError):
    """A torch-only use (gradients, hooks, parameters) of an ONNX model; ``hasattr`` stays False."""


class OnnxModel:
    """An ecgkit ONNX file run by onnxruntime, called like the torch encoder: ``model(windows, rr) -> logits``.

    Takes and returns torch tensors (or numpy arrays). ``threads`` defaults to torch's intra-op thread count,
    so ``torch.set_num_threads`` governs both runtimes.
    """

    def __init__(self, path, threads: int | None = None):
        path = Path(path)
        try:
            ort = require("onnxruntime")
        except EcgkitError:
            raise EcgkitError(f"{path} is an ecgkit ONNX / int8 model: running it needs the optional extra, "
                              f"{INSTALL_HINT}") from None
        data = path.read_bytes()
        so = ort.SessionOptions()
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CheckpointError(f"refusing to load {path}: not a valid ONNX model ({first_line(exc, 200)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(FORMAT_KEY) != FORMAT:
            raise CheckpointError(f"{path} is not an ecgkit ONNX model (format {FORMAT})")
        try:
            self.input_spec = json.loads(meta[SPEC_KEY])
            self.info = json.loads(meta.get(INFO_KEY, "{}"))
        except (KeyError, ValueError):
            raise CheckpointError(f"{path}: ecgkit ONNX model without a readable input spec") from None
        self.path = path
        self.threads = threads
        self.size_bytes = len(data)

    def eval(self):
        return self

    def __getattr__(self, name):  # torch-only uses (gradients, hooks, parameters): a clear one-line error
        if name.startswith("__"):
            raise AttributeError(name)
        raise InferenceOnlyError(f"{self.__dict__.get('path', 'this model')} is an ONNX model for inference only "
                              f"(no {name!r}); use the fp32 checkpoint it came from")

    def __call__(self, windows, rr):
        import torch

        if getattr(windows, "requires_grad", False):
            raise InferenceOnlyError(f"{self.path} is an ONNX model for inference only (no gradients); "
                                  "use the fp32 checkpoint it came from")
        w = windows.detach().cpu().numpy() if isinstance(windows, torch.Tensor) else np.asarray(windows)
        r = rr.detach().cpu().numpy() if isinstance(rr, torch.Tensor) else np.asarray(rr)
        out = self.session.run(["logits"], {"windows": np.ascontiguousarray(w, np.float32),
                                            "rr": np.ascontiguousarray(r, np.float32)})[0]
        return torch.from_numpy(out)


def load_onnx_model(path):
    """``(model, input_spec, info)`` of an ecgkit ONNX file (fp32 export or int8)."""
    m = OnnxModel(path)
    info = model_info(m.info, precision=m.info.get("precision"), runtime="onnxruntime",
                      calibration=m.info.get("calibration"))
    return m, m.input_spec, info


__all__ = ["OnnxModel", "calibration_sequences", "export_onnx", "is_onnx_file", "load_onnx_model", "quantize",
           "to_onnx"]
