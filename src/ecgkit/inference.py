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
    k = spec.get(VENTRICULAR_NEIGHBOURS, 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"{VENTRICULAR_NEIGHBOURS} is a count of beats (an integer >= 0), got {k!r}")
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


#: Input-contract key of :func:`share_ventricular_evidence` (twenty-sixth release): how many look-alike beats
#: of the record each beat's V evidence is averaged with (absent or 0: the step is off).
VENTRICULAR_NEIGHBOURS = "ventricular_neighbours"


def lookalike_beats(windows: np.ndarray, spec: dict, k: int, qrs_s: float = 0.1,
                    span: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(n, k)`` of each beat's ``k`` most similar other beats of the record, and their similarity.

    Similarity: the correlation of the model's lead-0 windows ``windows`` (n, S + 2 margin, as
    :func:`prepare_record` cuts them) over ``qrs_s`` each side of the beat mark. Searched among the
    beats at most ``span`` beats away (the whole record when it has no more than ``span`` beats), in
    blocks of rows, so a day-long record costs time in proportion to its beats, not their square.
    Needs ``n > k``. Returns ``(indices, correlations)``, both ``(n, k)``, in no particular order.
    """
    n = len(windows)
    if not 0 < k < n:
        raise ValueError(f"lookalike_beats: k must be in [1, {n - 1}] for {n} beats, got {k}")
    c, h = spec["before_samples"], int(round(qrs_s * spec["fs_hz"]))
    margin = (windows.shape[1] - spec["before_samples"] - spec["after_samples"]) // 2
    X = np.asarray(windows, np.float64)[:, margin + max(c - h, 0):margin + c + h]
    X = X - X.mean(1, keepdims=True)
    X /= np.linalg.norm(X, axis=1, keepdims=True) + 1e-9
    nb = np.empty((n, k), np.int64)
    corr = np.empty((n, k))
    half = max(span // 2, k + 1)
    block = max(1, min(1024, span - half))
    for a in range(0, n, block):
        b = min(a + block, n)
        lo, hi = max(0, min(a - half, n - 2 * half)), min(n, max(b + half, 2 * half))
        sim = X[a:b] @ X[lo:hi].T                                # (rows, candidates)
        sim[np.arange(b - a), np.arange(a, b) - lo] = -np.inf    # not itself
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        nb[a:b] = top + lo
        corr[a:b] = np.take_along_axis(sim, top, axis=1)
    return nb, corr


def share_ventricular_evidence(log_probs: np.ndarray, windows: np.ndarray, spec: dict,
                               neighbours: int | None = None, weight: float = 0.5, qrs_s: float = 0.1,
                               span: int = 4096, min_corr: float = 0.8) -> np.ndarray:
    """One record's per-beat log-probabilities with V evidence shared between look-alike beats.

    A patient's ventricular beats come in a few shapes that recur through the record. Each beat's
    ``neighbours`` most similar beats are found by the correlation of the model's lead-0 window
    ``windows`` (n, S) over the QRS (``qrs_s`` each side of the beat mark), among the beats at most
    ``span`` away (:func:`lookalike_beats`; the whole record up to that many beats). Those whose
    correlation is at least ``min_corr`` share: the beat's V log-odds move towards their mean V
    log-odds by ``weight`` times the share of the neighbours that qualify (a lone V beat, whose
    nearest beats are N beats of another shape, keeps its own evidence). Where its V probability
    falls, its S probability is kept (S is a rhythm call, and an S beat looks like its N
    neighbours) and N, F and Q share the rest in proportion; where it rises, every other class, S
    included, gives up its share in proportion (a V beat called S among V look-alikes). ``neighbours`` defaults to the contract's :data:`VENTRICULAR_NEIGHBOURS`; 0,
    a record with no more beats than that, or classes without both V and S leave ``log_probs`` as
    they are.
    Chosen on DS1 held-out fold models (examples/ablations/ventricular_neighbours.md).
    """
    k = int(spec.get(VENTRICULAR_NEIGHBOURS, 0) if neighbours is None else neighbours)
    classes = list(spec.get("classes", ()))
    n = len(log_probs)
    if k <= 0 or n <= k or "V" not in classes or "S" not in classes:
        return log_probs
    v, s = classes.index("V"), classes.index("S")
    nb, corr = lookalike_beats(windows, spec, k, qrs_s, span)
    lp = np.asarray(log_probs, np.float64)
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    P = np.exp(lp)
    pv = np.clip(P[:, v], 1e-9, 1 - 1e-9)
    odds = np.log(pv) - np.log1p(-pv)
    alike = corr >= min_corr
    n_alike = alike.sum(1)
    mean_nb = np.where(n_alike > 0, (odds[nb] * alike).sum(1) / np.maximum(n_alike, 1), odds)
    w = weight * n_alike / k
    pv_new = 1.0 / (1.0 + np.exp(-((1 - w) * odds + w * mean_nb)))
    Q = P.copy()
    # V evidence fell: the freed probability goes to N, F and Q, S is kept (an S beat's look-alikes are N)
    rest = np.ones(P.shape[1], bool)
    rest[[v, s]] = False
    room = np.maximum(1.0 - pv_new - P[:, s], 1e-12)
    Q[:, rest] *= (room / np.maximum(P[:, rest].sum(1), 1e-12))[:, None]
    # V evidence rose: every other class, S included, gives up its share in proportion
    up = pv_new > pv
    others = np.arange(P.shape[1]) != v
    Q[np.ix_(up, others)] = P[np.ix_(up, others)] * ((1.0 - pv_new[up]) / np.maximum(1.0 - pv[up], 1e-12))[:, None]
    Q[:, v] = pv_new
    Q /= Q.sum(1, keepdims=True)
    return np.log(np.maximum(Q, 1e-30)).astype(np.asarray(log_probs).dtype)


@torch.inference_mode()
def predict_log_proba(model, prep: dict, spec: dict, seq_len: int | None = None, batch: int = 64,
                      postprocess: bool = True) -> np.ndarray:
    """Per-beat log-probabilities ``(n, n_classes)`` of one record.

    The record's beats are cut into sequences of ``seq_len`` beats overlapping by half;
    each beat's log-probabilities are averaged over the sequences that hold it, weighted
    towards the centre of each sequence (where both neighbours are visible).
    ``batch`` caps the sequences per model call (calls also stay near ``BEATS_PER_CALL`` beats).
    Where the contract asks for it (:data:`VENTRICULAR_NEIGHBOURS`), V evidence is then shared between
    look-alike beats of the record (:func:`share_ventricular_evidence`); ``postprocess=False`` skips that
    (the networks' own output, for callers that average several models first).
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
    out = (acc / wsum[:, None]).numpy()
    if postprocess and spec.get(VENTRICULAR_NEIGHBOURS):
        out = share_ventricular_evidence(out, prep["W"], spec)
    return out
