"""Turning a record and its beat positions into model input, and model output into per-beat classes.

Shared by ``train`` (validation), ``evaluate``, ``annotate``, ``quantize`` and ``explain`` so
that every stage feeds the model exactly as it was trained: the checkpoint's input
contract (sampling rate, window, channels, RR definition) decides, not the caller.
"""

from __future__ import annotations

import numpy as np
import torch

from .io import Record
from .preprocess import bandpass, resample, run_chain, zscore
from .segment import ATRIAL_INTERVAL_MIN_RUN, beat_windows, blocked_p_waves, rr_features


#: Input channels built from the record's chosen lead, and from its second lead (see :func:`second_lead`).
LEAD1_CHANNELS = ("beat", "beat_minus_record_median")
LEAD2_CHANNELS = ("lead2", "lead2_minus_record_median")


def check_channels(spec: dict) -> None:
    """Refuse an input contract naming a channel or a record RR reference ecgkit cannot build (a one-line
    ConfigError), so a third-party encoder's contract fails where it is created or loaded, not per record."""
    from .errors import ConfigError
    from .segment import INTERVAL_RR_STATS, LOCAL_RR_STATS, RECORD_RR_STATS

    known = LEAD1_CHANNELS + LEAD2_CHANNELS
    bad = [c for c in spec.get("channels", ()) if c not in known]
    if bad:
        raise ConfigError(f"unknown input channel {bad[0]!r}; ecgkit builds: {', '.join(known)}")
    stat = spec.get("record_rr_stat", "mean")
    if stat not in RECORD_RR_STATS:
        raise ConfigError(f"unknown record_rr_stat {stat!r} in the model's input contract; ecgkit builds: "
                          f"{', '.join(RECORD_RR_STATS)}")
    local = spec.get("local_rr_stat", "mean")
    if local not in LOCAL_RR_STATS:
        raise ConfigError(f"unknown local_rr_stat {local!r} in the model's input contract; ecgkit builds: "
                          f"{', '.join(LOCAL_RR_STATS)}")
    iv = spec.get("interval_rr_stat", "raw")
    if iv not in INTERVAL_RR_STATS:
        raise ConfigError(f"unknown interval_rr_stat {iv!r} in the model's input contract; ecgkit builds: "
                          f"{', '.join(INTERVAL_RR_STATS)}")
    if iv != "raw" and spec.get("cut_next_s", 0):
        raise ConfigError("interval_rr_stat 'atrial' gives post-RR in sinus cycles, so cut_next_s (seconds to "
                          "the next R) cannot be read from it; use one or the other")
    if "blocked_p_min_run" in spec:
        run = spec["blocked_p_min_run"]
        if isinstance(run, bool) or not isinstance(run, int) or run < 1:
            raise ConfigError(f"blocked_p_min_run is a count of consecutive intervals (an integer >= 1), got {run!r}")
        if "atrial" not in (stat, local, iv):
            raise ConfigError("blocked_p_min_run counts blocked P waves, which only an 'atrial' record_rr_stat, "
                              "local_rr_stat or interval_rr_stat reads; set one of them or drop it")


def blocked_p_min_run(spec: dict) -> int:
    """Consecutive intervals with a blocked P wave the contract counts them in: its ``blocked_p_min_run``, else
    :data:`~ecgkit.segment.ATRIAL_INTERVAL_MIN_RUN` with intervals in sinus cycles, else 1 (every one)."""
    if "blocked_p_min_run" in spec:
        return int(spec["blocked_p_min_run"])
    return ATRIAL_INTERVAL_MIN_RUN if spec.get("interval_rr_stat", "raw") == "atrial" else 1


def uses_second_lead(spec: dict) -> bool:
    """Whether the model's input channels read the record's second lead."""
    return any(c in LEAD2_CHANNELS for c in spec.get("channels", ()))


def second_lead(record: Record) -> tuple[str, np.ndarray]:
    """``(name, signal)`` of the record's second lead: the first of its other leads, in header order.

    In MIT-BIH that is V1 for most records (V2, V4 or V5 for a few). A one-lead record is a RecordError.
    """
    if not record.others:
        from .errors import RecordError

        raise RecordError(f"record {record.name}: the model reads a second lead, but the record has only "
                          f"{record.lead}; use a one-lead model (`ecgkit plugins` lists them)")
    name = next(iter(record.others))
    return name, record.others[name]


def model_signal(record: Record, spec: dict, signal: np.ndarray | None = None) -> np.ndarray:
    """The record's lead as the model sees it: band-pass, resample to ``fs_hz``, z-score.

    ``signal``: another lead of the record (same rate) instead of its chosen one.
    """
    low, high = spec.get("bandpass_hz", (0.5, 35.0))
    chain = [bandpass(low, high), resample(spec["fs_hz"]), zscore()]
    x, _ = run_chain(record.signal if signal is None else signal, record.fs, chain)
    return x


def prepare_record(record: Record, peaks: np.ndarray, spec: dict, margin: int = 0,
                   signal: np.ndarray | None = None) -> dict:
    """Model input of one record: ``W`` (n, S + 2 margin) windows, ``med`` median beat, ``rr`` (n, 4).

    ``margin`` extra samples each side let training shift windows in time. ``signal``: the
    record's :func:`model_signal`, when the caller already computed it (figures draw it too).
    A model reading a second lead also gets ``W2`` and ``med2``, the same cut from that lead.
    """
    x = model_signal(record, spec) if signal is None else signal
    fs = spec["fs_hz"]
    b, a = spec["before_samples"] + margin, spec["after_samples"] + margin
    pos = np.round(np.asarray(peaks) * fs / record.fs).astype(np.int64)
    out = {}
    leads = [("", x)]
    if uses_second_lead(spec):
        leads.append(("2", model_signal(record, spec, second_lead(record)[1])))
    for suffix, sig in leads:
        W = beat_windows(sig, pos, b, a)  # (n, b + a), zero-padded at the record's edges
        out["W" + suffix] = W.astype(np.float32)
        out["med" + suffix] = np.median(W, axis=0).astype(np.float32) if len(W) else np.zeros(b + a, np.float32)
    stat, local = spec.get("record_rr_stat", "mean"), spec.get("local_rr_stat", "mean")
    iv = spec.get("interval_rr_stat", "raw")
    # on the model's own lead, counted only in runs of blocked P waves where the contract asks (2:1 block repeats)
    blocked = blocked_p_waves(x, pos, fs, min_run=blocked_p_min_run(spec)) if "atrial" in (stat, local, iv) else None
    out["rr"] = rr_features(peaks, record.fs, spec.get("local_rr_beats", 10), stat, blocked, local, iv)
    return out


def make_channels(W: torch.Tensor, med: torch.Tensor, channels, margin: int, n_samples: int,
                  shift: torch.Tensor | None = None, lead2: tuple | None = None) -> torch.Tensor:
    """Windows ``W`` (B, T, S + 2m) and medians ``med`` (B, S + 2m) -> model input (B, T, C, S).

    ``shift`` (B, T) in ``[0, 2m]`` picks each beat's crop (time-shift augmentation);
    default: the centred crop. ``lead2``: ``(W2, med2)`` of the second lead, shaped like
    ``W`` and ``med``, for the ``lead2*`` channels (cropped with the same shift).
    """
    def crop(X):
        if shift is None:
            return X[..., margin:margin + n_samples]
        idx = shift[..., None] + torch.arange(n_samples)[None, None, :]  # (B, T, S)
        return torch.gather(X, 2, idx)

    beat = crop(W)
    m = med[:, None, margin:margin + n_samples]  # (B, 1, S)
    out = []
    for c in channels:
        if c in LEAD2_CHANNELS:
            if lead2 is None:
                raise ValueError(f"input channel {c!r} needs the second lead's windows")
            beat2 = crop(lead2[0])
            out.append(beat2 if c == "lead2" else beat2 - lead2[1][:, None, margin:margin + n_samples])
        elif c == "beat":
            out.append(beat)
        elif c == "beat_minus_record_median":
            out.append(beat - m)
        else:
            raise ValueError(f"unknown input channel {c!r}")
    return torch.stack(out, 2)


#: Beats per model call in :func:`predict_log_proba`: about 512 keeps a call's activations in the CPU cache
#: (measured: 64 x 64-beat sequences per call ran 1.5-2x slower per beat than 8 x 64, fp32 and int8 alike).
BEATS_PER_CALL = 512


def record_inputs(prep: dict, spec: dict):
    """Every beat's model channels ``(n, C, S)`` and RR features ``(n, 4)`` of a :func:`prepare_record` dict."""
    W, med, rr = (torch.from_numpy(prep[k]) for k in ("W", "med", "rr"))
    S = spec["before_samples"] + spec["after_samples"]
    return make_channels(W[None], med[None], spec["channels"], (W.shape[1] - S) // 2, S,
                         lead2=lead2_batch(prep, None))[0], rr


def lead2_batch(prep: dict, rows=None):
    """``(W2[rows][None], med2[None])`` tensors of a prepared record for :func:`make_channels`; None for one lead."""
    if "W2" not in prep:
        return None
    W2 = prep["W2"] if rows is None else prep["W2"][np.asarray(rows)]
    return torch.from_numpy(W2)[None], torch.from_numpy(prep["med2"])[None]


@torch.inference_mode()
def predict_log_proba(model, prep: dict, spec: dict, seq_len: int | None = None, batch: int = 64) -> np.ndarray:
    """Per-beat log-probabilities ``(n, n_classes)`` of one record.

    The record's beats are cut into sequences of ``seq_len`` beats overlapping by half;
    each beat's log-probabilities are averaged over the sequences that hold it, weighted
    towards the centre of each sequence (where both neighbours are visible).
    ``batch`` caps the sequences per model call (calls also stay near ``BEATS_PER_CALL`` beats).
    """
    model.eval()
    n = len(prep["rr"])
    n_classes = len(spec["classes"])
    if n == 0:
        return np.zeros((0, n_classes), np.float32)
    T = min(seq_len or spec.get("seq_len", 64), n)
    starts = [0] if n <= T else list(range(0, n - T, max(T // 2, 1))) + [n - T]
    wts = torch.from_numpy(np.hanning(T + 2)[1:-1].astype(np.float32)) + 1e-3  # (T,)
    # every beat's channels once (n, C, S); the overlapping sequences are gathered from it
    X, rr = record_inputs(prep, spec)
    rows = torch.tensor(starts)[:, None] + torch.arange(T)[None, :]   # (n_seq, T)
    per_call = max(1, min(batch, BEATS_PER_CALL // T))
    logits = torch.cat([model(X[r], rr[r]).float() for r in torch.split(rows, per_call)])  # (n_seq, T, C)
    lp = torch.log_softmax(logits, -1) * wts[None, :, None]
    flat = rows.reshape(-1)
    acc = torch.zeros(n, n_classes).index_add_(0, flat, lp.reshape(-1, n_classes))
    wsum = torch.zeros(n).index_add_(0, flat, wts.repeat(len(starts)))
    return (acc / wsum[:, None]).numpy()
