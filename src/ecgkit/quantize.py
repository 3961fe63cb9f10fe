"""Post-training int8 quantization and ONNX export (see issue: edge deployment)."""

from __future__ import annotations

from .errors import EcgkitError


def quantize(model_ref: str, out, data=None, calib_records=("DS1",), calib_beats: int = 2048):
    raise EcgkitError("`ecgkit quantize` is not yet available in this version")


def export_onnx(model_ref: str, out):
    raise EcgkitError("`ecgkit export` is not yet available in this version")
