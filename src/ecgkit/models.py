"""Loading any model a user can name: a registered model, an fp32 checkpoint or a quantized file.

Returns ``(model, input_spec, info)`` where ``model(windows, rr)`` gives logits.
"""

from __future__ import annotations

from .checkpoint import load_model


def load_any_model(ref: str):
    model, ck = load_model(ref)
    info = {"encoder": ck["encoder"], "epoch": ck.get("epoch"), "seed": ck.get("seed"),
            "ecgkit_version": ck.get("ecgkit_version")}
    return model, ck["input_spec"], info
