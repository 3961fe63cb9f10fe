"""Loading any model a user can name: a registered model, an fp32 checkpoint or a quantized file.

Returns ``(model, input_spec, info)`` where ``model(windows, rr)`` gives logits.

* a torch checkpoint (zip archive) is read with ``torch.load(weights_only=True)`` and rebuilt from the
  registered encoder;
* an ecgkit ONNX file (``ecgkit quantize`` int8, or ``ecgkit export`` fp32) is data, not code: it is
  run by onnxruntime (optional extra ``ecgkit[onnx]``) and carries its input contract in its metadata.

Also registers core's one encoder, ``ensemble`` (:mod:`ecgkit.ensemble`), through the same hook
plugins use.
"""

from __future__ import annotations

import ecgkit

from .checkpoint import load_model, resolve_model_path


def _ensemble(members: list):
    """Seed ensemble: the members' per-beat log-probabilities averaged (see :mod:`ecgkit.ensemble`)."""
    from .ensemble import ensemble

    return ensemble(members)


@ecgkit.hookimpl
def register_encoders():
    return {"ensemble": _ensemble}


def load_any_model(ref: str):
    from .quantize import is_onnx_file, load_onnx_model

    path = resolve_model_path(ref)
    if is_onnx_file(path):
        return load_onnx_model(path)
    from .quantize import model_info

    from .inference import check_channels

    model, ck = load_model(str(path))
    check_channels(ck["input_spec"])
    return model, ck["input_spec"], model_info(ck, precision="fp32", runtime="torch")
