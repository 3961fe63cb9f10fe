"""A seed ensemble as one encoder: members with one input contract, their log-probabilities averaged.

Models trained inter-patient differ a lot from seed to seed (on DS1 cross-validation the shipped
recipe gives SVEB F1 30-60 over five seeds); averaging the members' per-beat log-probabilities
removes part of that variance. The ensemble is an ordinary encoder (``ensemble`` in the
``encoders`` registry): a checkpoint names its members' encoders and parameters, so anything
that loads a checkpoint, exports ONNX or explains a model handles it without knowing about it.

``train.ensemble: N`` in a config trains N members with seeds ``seed, seed+1, ...`` and writes
one checkpoint of encoder ``ensemble``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

#: Input-contract keys every member must share (the data a beat window is built from).
SHARED_SPEC = ("fs_hz", "before_samples", "after_samples", "channels", "classes", "local_rr_beats", "bandpass_hz")


class Ensemble(nn.Module):
    """``forward(windows, rr)`` = mean over members of ``log_softmax(member(windows, rr))``."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        specs = [getattr(m, "input_spec", None) for m in members]
        if not all(isinstance(s, dict) for s in specs):
            raise ConfigError("ensemble members must expose an input_spec dict (see the register_encoders hook)")
        for i, s in enumerate(specs[1:], start=2):
            diff = [k for k in SHARED_SPEC if s.get(k) != specs[0].get(k)]
            if diff:
                raise ConfigError(f"ensemble member {i} has another input contract than member 1 ({diff[0]} differs)")
        self.members = nn.ModuleList(members)
        self.input_spec = dict(specs[0])
        if all("seq_len" in s for s in specs):
            self.input_spec["seq_len"] = min(s["seq_len"] for s in specs)

    def forward(self, windows: torch.Tensor, rr: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        extra = () if pad_mask is None else (pad_mask,)
        logp = [F.log_softmax(m(windows, rr, *extra), dim=-1) for m in self.members]
        return torch.stack(logp).mean(0)


def ensemble(members: list) -> Ensemble:
    """Build an ensemble from ``[{"encoder": NAME, "params": {...}}, ...]`` (each through the registry)."""
    from .registry import create

    if not isinstance(members, list) or not members:
        raise ConfigError("ensemble: 'members' must be a non-empty list of {encoder, params}")
    built = []
    for i, m in enumerate(members, start=1):
        if not (isinstance(m, dict) and isinstance(m.get("encoder"), str) and isinstance(m.get("params", {}), dict)):
            raise ConfigError(f"ensemble: member {i} must be a mapping with 'encoder' (a name) and 'params'")
        built.append(create("encoders", m["encoder"], **m.get("params", {})))
    return Ensemble(built)
