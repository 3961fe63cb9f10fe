"""Configuration: YAML -> validated dataclasses, with clear errors for unknown or bad keys.

Configuration flows one way: YAML file (and CLI options that were actually given) ->
one typed :class:`RunConfig` -> constructors. Unknown keys are errors, never ignored.
See ``docs/configuration.md`` and ``examples/mitdb_inter_patient.yaml``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, first_line

#: Storage precisions of checkpoint weights (``train.weights_dtype``).
WEIGHTS_DTYPES = ("float32", "float16")


@dataclass
class DataConfig:
    """Which records train, select and test the model."""

    data: str | None = None               # data directory (default: --data, $ECGKIT_DATA, cache)
    train: list[str] | str = "DS1"        # training records or a split name
    val: list[str] = field(default_factory=lambda: ["118", "124", "201", "220", "223"])  # held out of train
    test: list[str] | str = "DS2"         # reported only; never used for selection
    segmenter: str = "reference"          # beat positions for training (reference = .atr)
    lead: str | None = None               # default MLII, else the first channel


@dataclass
class ModelConfig:
    """Which registered encoder, with which parameters."""

    name: str = "transnet"
    params: dict[str, Any] = field(default_factory=dict)
    #: > 0: at inference each beat's V evidence is shared with this many look-alike beats of its record
    #: (``ecgkit.inference.share_ventricular_evidence``); written into the checkpoint's input contract
    ventricular_neighbours: int = 0


@dataclass
class AugmentConfig:
    """Training-time augmentation strengths (0 turns one off)."""

    amplitude: float = 1.5          # per-sequence gain drawn log-uniformly in [1/a, a]
    amplitude_beat: float = 0.05    # per-beat gain jitter (std)
    baseline: float = 0.1           # baseline wander: offset + slope + slow sine (std, z-units)
    gaussian: float = 0.1           # white noise (max std, z-units)
    emg: float = 0.1                # EMG-like high-passed bursts (max std, z-units)
    shift_samples: int = 4          # random time shift of each window, +- samples
    stretch: float = 0.0            # time warp around R: per-sequence factor in [e^-s, e^s] (+2 % per beat)
    rr_jitter: float = 0.03         # multiplicative RR noise (std)
    synthetic_s: float = 0.0        # prob. per N beat (between N beats) of becoming a synthetic premature S
    synthetic_af: float = 0.0       # prob. per S-free sequence of an irregular (AF-like) RR series, labels kept
    af_rate: float = 0.0            # synthetic_af's mean interval = the patient's x (1 - af_rate * U(0, 1)); 0 = the patient's
    af_fibrillatory_p: bool = False  # synthetic_af sequences also lose their P waves (f-waves instead)
    synthetic_ectopy: float = 0.0   # prob. per N-only sequence of a frequent-atrial-ectopy RR series (relabelled)
    synthetic_block: float = 0.0    # prob. per N-only sequence (no other RR rewrite) of 2:1 AV block stretches, labels kept
    sinus_arrhythmia: float = 0.0   # prob. per N-only sequence (no other RR rewrite) of a respiratory sinus arrhythmia, labels kept
    ventricular_shape: float = 0.0  # prob. per sequence that its V beats are inverted and/or widened
    ventricular_ectopy: float = 0.0  # share of synthetic_ectopy sequences whose ectopic beats are V (donor V shapes)
    ectopic_p: bool = False          # synthetic_ectopy's S beats get an ectopic P wave (and the median, if they are the majority)
    neighbour_overlap: bool = False  # windows follow the synthetic RR: neighbours brought closer show in each other's window
    motion: float = 0.0             # electrode-motion-like 0.7-8 Hz artefact in a burst of beats on half the sequences;
                                    # max std as a share of the sequence's median-beat peak-to-peak (labels kept)


@dataclass
class TrainConfig:
    """Optimisation: AdamW + one-cycle schedule, class-weighted loss."""

    epochs: int = 12
    steps_per_epoch: int = 50
    batch_size: int = 32                # sequences per step (per process under DDP)
    seq_len: int = 64                   # consecutive beats per training sequence
    lr: float = 2e-3
    weight_decay: float = 0.05
    loss: str = "ce"                    # "ce" or "focal"
    focal_gamma: float = 2.0
    class_weight_power: float = 0.5     # weight_c = (n_N / n_c) ** power, clipped to [1, cap]
    class_weight_cap: float = 10.0
    class_weight_labels: str = "records"  # count the records' labels, or "augmented": those of training batches
                                          # (synthetic S beats of the RR augmentations included)
    select_metric: str = "jk"           # validation metric for picking the best epoch
    threads: int = 2                    # torch CPU threads per process
    ensemble: int = 1                   # members trained with seeds seed, seed+1, ...; log-probabilities averaged
    weights_dtype: str = "float32"      # "float16" stores best.pt at half precision (half the size)
    ema: float = 0.0                    # > 0: keep an exponential moving average of the weights (decay per
                                        # step) and evaluate/save it; 0 = the raw weights
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EvaluateConfig:
    """The test records (data.test) are evaluated with each of these segmenters."""

    segmenters: list[str] = field(default_factory=lambda: ["reference", "pan-tompkins"])


@dataclass
class RunConfig:
    """Everything a run needs; a config plus its seed reproduces a checkpoint."""

    seed: int = 0
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    stages: list[str] = field(default_factory=lambda: ["segment", "train", "evaluate"])
    quick: dict[str, Any] = field(default_factory=dict)   # overrides applied by `--quick`


def _check_type(value, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for a in args:
            try:
                return _check_type(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key {where!r}: {value!r} has the wrong type")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key {where!r}: expected null")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {where!r}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where!r}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {where!r}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {where!r}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # record names like 100 written without quotes
        if not isinstance(value, str):
            raise ConfigError(f"config key {where!r}: expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {where!r}: expected true/false, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or 'top level'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known keys here: {', '.join(sorted(names))}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def deep_update(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path, quick: bool = False) -> RunConfig:
    """Read and validate a YAML run config; ``quick`` applies its ``quick:`` overrides."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    cfg = from_dict(RunConfig, raw)
    if quick:
        cfg = from_dict(RunConfig, deep_update(to_dict(cfg), cfg.quick))
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    t = cfg.train
    for name in ("epochs", "steps_per_epoch", "batch_size", "seq_len", "threads", "ensemble"):
        if getattr(t, name) < 1:
            raise ConfigError(f"config key 'train.{name}' must be >= 1, got {getattr(t, name)}")
    if cfg.model.ventricular_neighbours < 0:
        raise ConfigError(f"config key 'model.ventricular_neighbours' must be >= 0 (0 = off), "
                          f"got {cfg.model.ventricular_neighbours}")
    if t.lr <= 0:
        raise ConfigError(f"config key 'train.lr' must be positive, got {t.lr}")
    for name in ("synthetic_s", "synthetic_ectopy", "ventricular_ectopy", "ventricular_shape", "synthetic_af",
                 "synthetic_block", "sinus_arrhythmia"):
        if not 0.0 <= getattr(t.augment, name) <= 1.0:
            raise ConfigError(f"config key 'train.augment.{name}' must be a probability in [0, 1], "
                              f"got {getattr(t.augment, name)}")
    if t.augment.motion < 0:
        raise ConfigError(f"config key 'train.augment.motion' must be >= 0 (0 = off), got {t.augment.motion}")
    if not 0.0 <= t.augment.af_rate < 1.0:
        raise ConfigError(f"config key 'train.augment.af_rate' must be in [0, 1), got {t.augment.af_rate}")
    if t.augment.ectopic_p and t.augment.synthetic_ectopy <= 0:
        raise ConfigError("config key 'train.augment.ectopic_p' edits the beats of synthetic_ectopy; "
                          "it needs 'train.augment.synthetic_ectopy' > 0")
    if not 0.0 <= t.ema < 1.0:
        raise ConfigError(f"config key 'train.ema' must be a decay in [0, 1) (0 = off), got {t.ema}")
    if t.class_weight_labels not in ("records", "augmented"):
        raise ConfigError(f"config key 'train.class_weight_labels' must be 'records' or 'augmented', "
                          f"got {t.class_weight_labels!r}")
    if t.loss not in ("ce", "focal"):
        raise ConfigError(f"config key 'train.loss' must be 'ce' or 'focal', got {t.loss!r}")
    if t.weights_dtype not in WEIGHTS_DTYPES:
        raise ConfigError(f"config key 'train.weights_dtype' must be one of {', '.join(WEIGHTS_DTYPES)}, "
                          f"got {t.weights_dtype!r}")
    if t.select_metric not in ("jk", "accuracy", "macro_f1"):
        raise ConfigError("config key 'train.select_metric' must be one of jk, accuracy, macro_f1")
    unknown = set(cfg.stages) - {"segment", "train", "quantize", "evaluate", "explain"}
    if unknown:
        raise ConfigError(f"config key 'stages': unknown stage {sorted(unknown)[0]!r}")
    from .datasets.mitdb import SPLITS

    train = set(SPLITS.get(cfg.data.train, ())) if isinstance(cfg.data.train, str) else set(cfg.data.train)
    test = set(SPLITS.get(cfg.data.test, ())) if isinstance(cfg.data.test, str) else set(cfg.data.test)
    if train & test:
        raise ConfigError(f"records {sorted(train & test)} are in both data.train and data.test: "
                          f"that leaks patients into the test set")
    if not set(cfg.data.val) <= train:
        raise ConfigError("data.val must be patients held out of data.train (they are removed from training)")
