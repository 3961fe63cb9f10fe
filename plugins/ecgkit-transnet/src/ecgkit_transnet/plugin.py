"""ecgkit hooks of the ECG-TransNet plugin: the encoder and its shipped checkpoint.

Registered only through the public hooks (entry point ``ecgkit`` -> this module).
"""

from __future__ import annotations

from pathlib import Path

import ecgkit

#: Shipped checkpoints: registered name -> file. ``transnet`` (the default) reads the record's
#: chosen lead; ``transnet-2lead`` reads its second lead too. Each file's recipe sits beside it as
#: ``<name>.yaml`` (examples/mitdb_inter_patient.yaml and examples/mitdb_inter_patient_2lead.yaml).
#: ``transnet-mix`` holds no weights: it averages the two (``ecgkit combine transnet transnet-2lead``).
WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = {"transnet": WEIGHTS_DIR / "transnet.pt", "transnet-2lead": WEIGHTS_DIR / "transnet-2lead.pt",
           "transnet-mix": WEIGHTS_DIR / "transnet-mix.pt"}


def transnet(**params):
    """ECG-TransNet: 1D-ResNet beat tokenizer + Transformer across beats (per-beat labels)."""
    from dataclasses import fields

    from ecgkit.errors import ConfigError
    from ecgkit.inference import check_channels
    from ecgkit.segment import RECORD_RR_STATS

    from .model import ECGTransNet, TransNetConfig

    known = {f.name for f in fields(TransNetConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"transnet: unknown parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
    cfg = TransNetConfig(**params)
    if cfg.record_rr_stat not in RECORD_RR_STATS:
        raise ConfigError(f"transnet: record_rr_stat must be one of {', '.join(RECORD_RR_STATS)}, "
                          f"got {cfg.record_rr_stat!r}")
    if not 0 <= cfg.cut_next_s < cfg.after / cfg.fs_hz:
        raise ConfigError(f"transnet: cut_next_s is seconds before the next R, >= 0 (0 = off) and shorter than the "
                          f"window after R ({cfg.after / cfg.fs_hz:.3f} s), got {cfg.cut_next_s}")
    if not cfg.shape_head >= 0:
        raise ConfigError(f"transnet: shape_head is a loss weight (>= 0, 0 = off), got {cfg.shape_head}")
    if cfg.shape_head > 0 and not {"N", "S", "V"} <= set(cfg.classes):
        raise ConfigError("transnet: shape_head needs classes N, S and V")
    model = ECGTransNet(cfg)
    model.input_spec = {
        "fs_hz": float(cfg.fs_hz),
        "before_samples": int(cfg.before),
        "after_samples": int(cfg.after),
        "channels": list(cfg.channels),
        "classes": list(cfg.classes),
        "seq_len": int(cfg.seq_len),
        "local_rr_beats": int(cfg.local_rr_beats),
        "bandpass_hz": [float(f) for f in cfg.bandpass_hz],
    }
    if cfg.record_rr_stat != "mean":  # the default stays unnamed: the shipped checkpoints' contract is unchanged
        model.input_spec["record_rr_stat"] = cfg.record_rr_stat
    if cfg.local_rr_stat != "mean":
        model.input_spec["local_rr_stat"] = cfg.local_rr_stat
    if cfg.interval_rr_stat != "raw":
        model.input_spec["interval_rr_stat"] = cfg.interval_rr_stat
    if cfg.blocked_p_min_run:
        model.input_spec["blocked_p_min_run"] = cfg.blocked_p_min_run
    if cfg.cut_next_s > 0:  # training hides the next beat's QRS from its stored windows at the same point
        model.input_spec["cut_next_s"] = float(cfg.cut_next_s)
    check_channels(model.input_spec)  # unknown RR stats, interval_rr_stat with cut_next_s, a bad blocked_p_min_run
    return model


@ecgkit.hookimpl
def register_encoders():
    return {"transnet": transnet}


@ecgkit.hookimpl
def register_models():
    return {name: str(path) for name, path in SHIPPED.items() if path.is_file()}
