"""A seed ensemble as one encoder: members with one input contract, their log-probabilities averaged.

Models trained inter-patient differ a lot from seed to seed (on DS1 cross-validation the shipped
recipe gives SVEB F1 30-60 over five seeds); averaging the members' per-beat log-probabilities
removes part of that variance. The ensemble is an ordinary encoder (``ensemble`` in the
``encoders`` registry): a checkpoint names its members' encoders and parameters, so anything
that loads a checkpoint, exports ONNX or explains a model handles it without knowing about it.

``train.ensemble: N`` in a config trains N members with seeds ``seed, seed+1, ...`` and writes
one checkpoint of encoder ``ensemble``.

Members may read different channels of the same beat windows (a one-lead and a two-lead model):
the ensemble reads the union of their channels, in the order they first appear, and hands each
member its own. A member may also be a trained model by reference, ``{"model": NAME_OR_PATH}``
(a registered model or a checkpoint file): ``ecgkit combine`` writes such an ensemble as a small
checkpoint whose weights stay in the members' files (:func:`save_combined`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

#: Input-contract keys every member must share (the data a beat window is built from; channels may differ).
SHARED_SPEC = ("fs_hz", "before_samples", "after_samples", "classes", "local_rr_beats", "bandpass_hz",
               "record_rr_stat", "local_rr_stat", "interval_rr_stat", "blocked_p_min_run")


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
        channels = list(dict.fromkeys(c for s in specs for c in s.get("channels", ())))
        self.input_spec["channels"] = channels
        #: per member, the indices of its channels in the ensemble's, or None where it reads them all
        self.member_channels = [None if list(s.get("channels", ())) == channels
                                else [channels.index(c) for c in s["channels"]] for s in specs]
        if all("seq_len" in s for s in specs):
            self.input_spec["seq_len"] = min(s["seq_len"] for s in specs)

    def member_windows(self, i: int, windows: torch.Tensor) -> torch.Tensor:
        """The channels of ``windows`` (batch, beats, channels, samples) that member ``i`` reads."""
        idx = self.member_channels[i]
        return windows if idx is None else windows[:, :, idx]

    def forward(self, windows: torch.Tensor, rr: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        extra = () if pad_mask is None else (pad_mask,)
        logp = [F.log_softmax(m(self.member_windows(i, windows), rr, *extra), dim=-1)
                for i, m in enumerate(self.members)]
        return torch.stack(logp).mean(0)


def ensemble(members: list) -> Ensemble:
    """Build an ensemble from ``[{"encoder": NAME, "params": {...}}, ...]`` (each through the registry).

    A member ``{"model": NAME_OR_PATH}`` is a trained model instead: loaded, with its weights, by
    :func:`ecgkit.checkpoint.load_model` (a relative path is relative to the working directory;
    :func:`ecgkit.checkpoint.load_model` makes those of a combined checkpoint relative to its file).
    """
    from .checkpoint import load_model
    from .registry import create

    if not isinstance(members, list) or not members:
        raise ConfigError("ensemble: 'members' must be a non-empty list of {encoder, params} or {model}")
    built = []
    for i, m in enumerate(members, start=1):
        if isinstance(m, dict) and set(m) == {"model"} and isinstance(m["model"], str):
            built.append(load_model(m["model"])[0])
            continue
        if not (isinstance(m, dict) and isinstance(m.get("encoder"), str) and isinstance(m.get("params", {}), dict)):
            raise ConfigError(f"ensemble: member {i} must be a mapping with 'encoder' (a name) and 'params', "
                              f"or with 'model' (a trained model's name or file) alone")
        built.append(create("encoders", m["encoder"], **m.get("params", {})))
    return Ensemble(built)


def by_reference(params: dict) -> bool:
    """Whether ensemble ``params`` name trained models only (a combined checkpoint: no weights of its own)."""
    members = params.get("members") if isinstance(params, dict) else None
    return bool(members) and all(isinstance(m, dict) and set(m) == {"model"} for m in members)


def save_combined(path, models: list[str]):
    """Write a checkpoint that averages trained ``models`` (registered names or checkpoint files).

    The members are loaded first, so a model that cannot be read, or whose input contract does not
    fit the others', is an error before anything is written. File members are stored relative to
    ``path``'s directory, registered names as names; the checkpoint holds no weights of its own.
    """
    import os
    from pathlib import Path

    from .checkpoint import load_model, resolve_model_path, save_checkpoint
    from .registry import collect

    if len(models) < 2:
        raise ConfigError("combine: give at least two models")
    registered = collect("models")
    out_dir = Path(path).resolve().parent
    refs = [m if m in registered else os.path.relpath(resolve_model_path(m).resolve(), out_dir) for m in models]
    built = Ensemble([load_model(m)[0] for m in models])
    return save_checkpoint(path, built, encoder="ensemble", params={"members": [{"model": r} for r in refs]},
                           weights="members", extra={"combined": list(models)})
