"""Saving and safely loading model checkpoints.

A checkpoint carries the model's input contract beside its weights (timm's
pretrained-config habit): encoder name and parameters, sampling rate, window,
channels, class list, the training config, seed, ecgkit version, the versions of the
libraries that shape training (``environment``) and licence.
Loading always uses ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import __version__
from .config import WEIGHTS_DTYPES
from .errors import CheckpointError, first_line

FORMAT = "ecgkit-checkpoint/1"


def input_spec(model) -> dict:
    """The encoder's input contract (``fs_hz``, ``before_samples``, ``after_samples``, ``channels``, ``classes``)."""
    spec = getattr(model, "input_spec", None)
    if not isinstance(spec, dict):
        raise CheckpointError(f"encoder {type(model).__name__} has no input_spec dict (see the register_encoders hook)")
    return spec


def _plain(x):
    """Numpy scalars and tuples -> plain Python, so ``weights_only`` loading accepts them."""
    import numpy as np

    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def environment() -> dict:
    """Versions of what a trained checkpoint depends on beyond its config and seed.

    The same config and seed train to other weights under other numpy/scipy/wfdb/torch
    builds (filters, resampling and kernels differ in the last bits), so a checkpoint records them,
    and on another CPU: torch picks its kernels by the CPU's vector instructions
    (``cpu_capability``, e.g. AVX2 or AVX512), and ``cpu`` names the processor.
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    env = {"python": platform.python_version(), "platform": f"{platform.system()}-{platform.machine()}"}
    for dist in ("torch", "numpy", "scipy", "wfdb"):
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover - all are requirements
            env[dist] = None
    env["cpu"] = _cpu_name()
    env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return env


def _cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save_checkpoint(path, model, *, encoder: str, params: dict, extra: dict | None = None,
                    dtype: str = "float32", weights: str = "own") -> Path:
    """Write a checkpoint atomically (temp file, then rename).

    ``dtype="float16"`` stores floating-point weights at half precision (half the file; loading
    casts them back to the model's float32 parameters). ``weights="members"``: an ensemble whose
    members are trained models by reference (:func:`ecgkit.ensemble.save_combined`); no weights
    are stored, loading takes them from the members' files.
    """
    from .io import atomic_write

    if dtype not in WEIGHTS_DTYPES:
        raise CheckpointError(f"checkpoint dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {dtype!r}")
    if weights not in ("own", "members"):
        raise CheckpointError(f"checkpoint weights must be 'own' or 'members', got {weights!r}")
    module = getattr(model, "module", model)  # unwrap DDP
    state = module.state_dict() if weights == "own" else {}
    if dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "encoder": encoder,
        "params": _plain(params),
        "input_spec": _plain(input_spec(module)),
        "state_dict": state,
        "weights_dtype": dtype,
        **({"weights": "members"} if weights == "members" else {}),
        "ecgkit_version": __version__,
        "environment": environment(),
        **{k: (v if k == "optimizer" else _plain(v)) for k, v in (extra or {}).items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path) -> dict:
    """The checkpoint dict, loaded with ``weights_only=True``; clear errors otherwise."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"model file {p} not found")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        hits = [ln for ln in lines if "Unsupported global" in ln or ln.startswith("WeightsUnpickler error")]
        first = hits[0] if hits else (lines[-1] if lines and "weights_only" not in lines[-1] else type(exc).__name__)
        raise CheckpointError(f"refusing to load {p}: not a safe ecgkit checkpoint ({first[:200]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an ecgkit checkpoint (format {FORMAT})")
    need = {"encoder": str, "params": dict, "input_spec": dict, "state_dict": dict}
    missing = [k for k, t in need.items() if not isinstance(ck.get(k), t)]
    if missing:
        raise CheckpointError(f"{p}: damaged ecgkit checkpoint, missing or malformed {', '.join(missing)}")
    bad = [k for k, v in ck["state_dict"].items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{p}: non-finite weights in {bad[0]}"
                              + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "")
                              + " (a diverged training run?); refusing to classify with it")
    return ck


def resolve_model_path(name_or_path: str) -> Path:
    """A registered model name (``register_models``) or a file path."""
    from .registry import collect

    models = collect("models")
    if name_or_path in models:
        return Path(models[name_or_path].factory)
    p = Path(name_or_path)
    if p.exists() or os.sep in name_or_path or p.suffix:
        return p
    known = ", ".join(models) or "none"
    raise CheckpointError(f"unknown model {name_or_path!r}: not a registered model ({known}) nor a file")


#: checkpoints being loaded (outermost first): a combined checkpoint that names itself is an error
_LOADING: list[Path] = []


def load_model(name_or_path: str):
    """Build the encoder named in a checkpoint and load its weights; returns ``(model, checkpoint)``.

    A combined checkpoint (``weights: members``, written by ``ecgkit combine``) names its members
    instead of holding weights: each is loaded in turn (a relative file path is relative to the
    combined checkpoint's directory).
    """
    from .ensemble import by_reference
    from .registry import collect, create

    path = resolve_model_path(name_or_path)
    ck = read_checkpoint(path)
    params = ck["params"]
    combined = ck.get("weights") == "members"
    if combined:
        if ck["encoder"] != "ensemble" or not by_reference(params):
            raise CheckpointError(f"{path}: a checkpoint without weights of its own must be an ensemble "
                                  f"of trained models ({{'model': NAME}} members)")
        registered = collect("models")
        params = {**params, "members": [
            {"model": m["model"] if m["model"] in registered or Path(m["model"]).is_absolute()
             else str(path.resolve().parent / m["model"])} for m in params["members"]]}
    key = path.resolve()
    if key in _LOADING:
        raise CheckpointError(f"{path}: a combined model that contains itself")
    _LOADING.append(key)
    try:
        model = create("encoders", ck["encoder"], **params)
    finally:
        _LOADING.pop()
    if not combined:
        try:
            model.load_state_dict(ck["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint weights do not fit encoder {ck['encoder']!r}: "
                                  f"{first_line(exc)}") from None
    model.eval()
    return model, ck
