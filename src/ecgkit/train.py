"""Training: beats of the training records -> an encoder checkpoint.

One readable loop (nanoGPT style). Sequences of ``seq_len`` consecutive beats are
cropped at random from the training records, augmented, and every beat of every
sequence is classified (sequence labelling). The epoch whose *validation patients*
(held out of the training records, never the test split) score best on
``select_metric`` is kept as ``best.pt``.

Reproducibility: each epoch re-seeds its random streams from ``(seed, epoch, rank)``,
so a run resumed from the checkpoint of epoch k ends with the same weights as an
uninterrupted run. Distributed: under ``torchrun --nproc_per_node N`` the same
command runs DDP (gloo on CPU, nccl on GPU); each process draws its own batches.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import input_spec, read_checkpoint, save_checkpoint
from .config import AugmentConfig, RunConfig
from .datasets import resolve_records
from .errors import ConfigError
from .inference import check_channels, make_channels, predict_log_proba, prepare_record, uses_second_lead
from .io import read_record
from .metrics import ec57_report
from .registry import create

#: Extra samples kept each side of a window so augmentation can shift it in time.
MARGIN_MAX = 32

#: Licence recorded in every checkpoint this module writes.
LICENCE = "MIT (weights trained on MIT-BIH, ODC-By 1.0)"


# --- data ------------------------------------------------------------------------------------

def load_beats(records, cfg: RunConfig, spec: dict, margin: int, progress=None) -> dict[str, dict]:
    """Per record: windows, median beat, RR features and AAMI labels (reference labels)."""
    from .segment import labelled_peaks

    detector = create("segmenters", cfg.data.segmenter)
    out = {}
    for path in records:
        rec = read_record(path, cfg.data.lead)
        peaks, labels = labelled_peaks(rec, detector)
        d = prepare_record(rec, peaks, spec, margin)
        d["y"] = labels
        d["samples"] = peaks
        out[rec.name] = d
        if progress:
            progress(rec.name)
    return out


#: Training batches drawn to count the labels when ``train.class_weight_labels: augmented``.
CLASS_WEIGHT_BATCHES = 64


def class_weights(labels: np.ndarray, n_classes: int, power: float, cap: float) -> torch.Tensor:
    """weight_c = (n_majority / n_c) ** power, clipped to [1, cap]: rare classes count more, boundedly."""
    cnt = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64)
    w = np.clip((cnt.max() / np.maximum(cnt, 1)) ** power, 1.0, cap)
    return torch.tensor(w, dtype=torch.float32)


def weight_labels(fit: dict, names: list[str], tc, spec: dict, margin: int, seed: int, v_pool=None) -> np.ndarray:
    """The labels the class weights are counted on (``train.class_weight_labels``).

    ``records``: every beat of the training records. ``augmented``: the labels of
    :data:`CLASS_WEIGHT_BATCHES` training batches, synthetic S beats included, drawn from a
    generator of their own (seeded by ``seed``), so the training draws are unchanged.
    """
    if tc.class_weight_labels == "records":
        return np.concatenate([fit[n]["y"] for n in names])
    g = torch.Generator().manual_seed(seed * 100003 + 99991)
    return np.concatenate([training_batch(fit, names, tc, spec, margin, g, v_pool)[3].reshape(-1).numpy()
                           for _ in range(CLASS_WEIGHT_BATCHES)])


def sample_batch(data: dict, names: list[str], seq_len: int, batch: int, g: torch.Generator):
    """Random crops of ``seq_len`` consecutive beats; records drawn in proportion to their beats.

    Returns ``W, med, rr, y, lead2``; ``lead2`` is ``(W2, med2)`` of the second lead when the
    records carry one (see :func:`~ecgkit.inference.prepare_record`), else None.
    """
    sizes = torch.tensor([len(data[n]["y"]) for n in names], dtype=torch.float64)
    picks = torch.multinomial(sizes, batch, replacement=True, generator=g).tolist()
    T = min(seq_len, int(sizes.min()))
    two = "W2" in data[names[0]]
    Ws, meds, rrs, ys, W2s, med2s = [], [], [], [], [], []
    for i in picks:
        d = data[names[i]]
        s = int(torch.randint(0, len(d["y"]) - T + 1, (1,), generator=g))
        Ws.append(d["W"][s:s + T]); rrs.append(d["rr"][s:s + T]); ys.append(d["y"][s:s + T])
        meds.append(d["med"])
        if two:
            W2s.append(d["W2"][s:s + T]); med2s.append(d["med2"])
    lead2 = (torch.from_numpy(np.stack(W2s)), torch.from_numpy(np.stack(med2s))) if two else None
    return (torch.from_numpy(np.stack(Ws)), torch.from_numpy(np.stack(meds)),
            torch.from_numpy(np.stack(rrs)), torch.from_numpy(np.stack(ys)), lead2)


def _warp(x: torch.Tensor, factor: torch.Tensor, centre: int) -> torch.Tensor:
    """Stretch windows ``x`` (..., L) in time around sample ``centre`` by ``factor`` (linear interpolation)."""
    L = x.shape[-1]
    src = (centre + (torch.arange(L) - centre) / factor).clamp(0, L - 1)  # (..., L) source positions
    i0 = src.floor().long().clamp(max=L - 2)
    w = src - i0
    return torch.gather(x, -1, i0) * (1 - w) + torch.gather(x, -1, i0 + 1) * w


def _lead_augment(W, med, g: torch.Generator, a: AugmentConfig, margin: int, before: int, warp=None):
    """Gain, stretch, baseline wander and noise on one lead's windows ``W`` (B, T, L) and medians ``med`` (B, L).

    ``warp``: the ``(per-sequence, per-beat)`` stretch factors to apply instead of drawing new
    ones (a second lead shares the first one's: QRS width is the patient's, not the lead's).
    Returns ``W, med, warp``.
    """
    B, T, L = W.shape

    def U(*s):
        return torch.rand(*s, generator=g)

    def N(*s):
        return torch.randn(*s, generator=g)

    if a.amplitude > 1:  # gain per sequence (a patient's electrode placement), median follows
        gain = torch.exp((U(B, 1, 1) * 2 - 1) * math.log(a.amplitude))
        W = W * gain
        med = med * gain[:, 0]
    if a.amplitude_beat > 0:
        W = W * (1 + a.amplitude_beat * N(B, T, 1))
    if a.stretch > 0:  # QRS and T widths differ between patients: warp around R, per sequence (+ per beat)
        if warp is None:
            f = torch.exp((U(B, 1, 1) * 2 - 1) * a.stretch)                # (B, 1, 1)
            warp = (f, f * (1 + 0.02 * N(B, T, 1)))
        f, fb = warp
        W = _warp(W, fb, margin + before)                                   # (B, T, L)
        med = _warp(med[:, None, :], f.expand(B, 1, L), margin + before)[:, 0]
    t = torch.linspace(-1, 1, L)[None, None, :]
    if a.baseline > 0:  # wander: offset + slope + slow sine within the window
        W = W + a.baseline * (N(B, T, 1) + N(B, T, 1) * t
                              + N(B, T, 1) * torch.sin(2 * math.pi * U(B, T, 1) * t + 2 * math.pi * U(B, T, 1)))
    if a.gaussian > 0:
        W = W + a.gaussian * U(B, 1, 1) * N(B, T, L)
    if a.emg > 0:  # muscle noise: high-passed (differenced) noise in bursts on ~30 % of beats
        e = N(B, T, L + 1)
        W = W + a.emg * U(B, 1, 1) * (U(B, T, 1) < 0.3) * (e[..., 1:] - e[..., :-1])
    return W, med, warp


def augment(W, med, rr, g: torch.Generator, a: AugmentConfig, margin: int, before: int = 0, lead2=None,
            rate_scale: bool = True):
    """Simulate other patients and recording conditions on a batch.

    W (B, T, L) windows, med (B, L) median beats, rr (B, T, 4) seconds. Returns the
    augmented tensors and per-beat crop offsets for the time shift. ``lead2``: ``(W2, med2)``
    of a second lead, augmented with its own gain and noise but the same stretch and crop,
    and returned as a fifth value when given (its draws come after all of the first lead's,
    so a one-lead batch draws exactly as before). ``rate_scale=False`` leaves out the
    sequence-wide RR scale of ``rr_jitter`` (drawn all the same, so the draws do not move):
    for a model whose windows are cut at the next beat (``cut_next_s``), where scaling every
    interval would move the cut away from what the window shows.
    """
    B, T, L = W.shape
    W, med, warp = _lead_augment(W, med, g, a, margin, before)

    def U(*s):
        return torch.rand(*s, generator=g)

    def N(*s):
        return torch.randn(*s, generator=g)

    if a.rr_jitter > 0:
        scale = torch.exp(0.2 * (U(B, 1, 1) * 2 - 1))  # heart rate of another patient
        if rate_scale:
            rr = rr * scale
        jit = torch.ones_like(rr)
        jit[..., :2] = 1 + a.rr_jitter * N(B, T, 2)
        jit[..., 2:3] = 1 + 0.5 * a.rr_jitter * N(B, T, 1)
        rr = rr * jit.clamp_min(0.5)
    shift = None
    s = min(a.shift_samples, margin)
    if s > 0:
        shift = margin - s + torch.randint(0, 2 * s + 1, (B, T), generator=g)
    if lead2 is None:
        return W, med, rr, shift
    W2, med2, _ = _lead_augment(lead2[0], lead2[1], g, a, margin, before, warp)
    return W, med, rr, shift, (W2, med2)


def _local_mean(pre: torch.Tensor, local_beats: int) -> torch.Tensor:
    """Causal mean of the ``local_beats`` most recent pre-RR (the beat's own included), as in segment.rr_features."""
    T = pre.shape[-1]
    i = torch.arange(T)
    lo = (i - (local_beats - 1)).clamp(min=0)
    cs = torch.cat([torch.zeros(1, dtype=pre.dtype), pre.cumsum(0)])
    return (cs[i + 1] - cs[lo]) / (i + 1 - lo)


def synthetic_af(rr, y, g: torch.Generator, p: float, local_beats: int = 10, rate: float = 0.0):
    """Irregularly irregular rhythm (AF-like) on whole S-free sequences; labels unchanged.

    The counterweight to :func:`synthetic_s`: early timing alone must not mean S when the
    whole context is irregular (beats in atrial fibrillation are labelled N).
    ``rate`` > 0: the mean interval is the patient's times ``1 - rate * U(0, 1)`` (AF often
    conducts faster than the sinus rhythm); 0 draws nothing more than before.
    Returns the new RR tensor and the mask of sequences changed.
    """
    B, T = y.shape
    sel = ((y == 1).sum(1) == 0) & (torch.rand(B, generator=g) < p)
    for b in sel.nonzero()[:, 0].tolist():
        m = rr[b, :, 2].mean()
        if rate > 0:
            m = m * (1 - rate * float(torch.rand(1, generator=g)))
        sigma = 0.1 + 0.25 * float(torch.rand(1, generator=g))
        iv = m * torch.exp(sigma * torch.randn(T + 1, generator=g))  # (T+1,) intervals
        pre, post = iv[:-1], iv[1:]
        rr[b, :, 0], rr[b, :, 1], rr[b, :, 2] = pre, post, _local_mean(pre, local_beats)
    return rr, sel


def _p_bounds(r_index: int, fs: float) -> tuple[int, int]:
    """Window indices of the P segment, :data:`ecgkit.segment.P_SEGMENT_S` before R (R - 320 ms .. R - 70 ms)."""
    from .segment import P_SEGMENT_S

    return max(0, r_index - round(P_SEGMENT_S[0] * fs)), max(1, r_index - round(P_SEGMENT_S[1] * fs))


def _p_ramp(a: int, b: int, dtype):
    """``k`` (0..1 across the segment) and the taper (0 at its ends, 1 from 8 samples inside)."""
    k = torch.arange(b - a, dtype=dtype) / (b - a - 1)
    return k, torch.clamp(torch.minimum(k, 1 - k) * (b - a - 1) / 8, 0, 1)


def _p_line(x, a: int, b: int, k):
    """(..., L) -> (..., b - a): the straight line between the P segment's end samples."""
    return x[..., a:a + 1] + (x[..., b - 1:b] - x[..., a:a + 1]) * k


def fibrillatory_p(W, med, g: torch.Generator, r_index: int, fs: float):
    """Replace the P wave of whole sequences by fibrillatory waves (the morphology of AF beats).

    W (n, T, L) windows and med (n, L) median beats with the R peak at ``r_index``. The
    segment R - 320 ms .. R - 70 ms (P wave and PR segment) is replaced by the straight line
    between its ends (tapered in over 8 samples) plus, on the beats only, an f-wave: a
    4-9 Hz oscillation of amplitude 0.03-0.15 with a random phase per beat. Used with
    :func:`synthetic_af` so that an irregular rhythm comes with what AF looks like (no P
    wave) instead of sinus P waves, which with early timing are what makes a beat S.
    """
    n, T, L = W.shape
    a, b = _p_bounds(r_index, fs)
    if n == 0 or b - a < 4:
        return W, med
    k, ramp = _p_ramp(a, b, W.dtype)

    def flatten(x):  # (..., L): P segment -> straight line between its end samples
        line = _p_line(x, a, b, k)
        x = x.clone()
        x[..., a:b] = x[..., a:b] * (1 - ramp) + line * ramp
        return x

    W, med = flatten(W), flatten(med)
    t = torch.arange(b - a, dtype=W.dtype) / fs
    freq = 4 + 5 * torch.rand(n, 1, 1, generator=g)
    amp = 0.03 + 0.12 * torch.rand(n, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, T, 1, generator=g)
    W[..., a:b] = W[..., a:b] + ramp * amp * torch.sin(2 * math.pi * freq * t + phase)
    return W, med


def ectopic_p(W, med, y, sel, g: torch.Generator, r_index: int, fs: float, s_class: int = 1):
    """Give the premature beats of synthetic-ectopy sequences an ectopic P wave (a morphology augmentation).

    :func:`synthetic_ectopy` relabels beats S by timing alone, so its S beats carry the patient's
    sinus P wave, identical to the sinus beats around them and to the median beat; a real atrial
    premature beat starts from another focus, and its P wave differs in shape or polarity. For
    each sequence in ``sel`` one focus is drawn (a unifocal rhythm): the P segment of every S
    beat, R - 320 ms .. R - 70 ms as in :func:`fibrillatory_p`, keeps the straight line between
    its ends and has its deviation from that line multiplied by ``a ~ U(-1, 0.5)`` (inverted to
    halved; tapered in over 8 samples). Where the S beats are the majority of the sequence, the
    median beat gets the same P wave: a record's median beat is a beat of its majority rhythm,
    as it is in a record whose ectopic beats outnumber its sinus ones. QRS, T and the N beats
    are untouched. Returns new ``(W, med)``.
    """
    a0, b0 = _p_bounds(r_index, fs)
    if not sel.any() or b0 - a0 < 4:
        return W, med
    k, ramp = _p_ramp(a0, b0, W.dtype)

    def refocus(x, a):  # (..., L): P-segment deviation from its end-to-end line times a
        line = _p_line(x, a0, b0, k)
        x = x.clone()
        x[..., a0:b0] = line + (x[..., a0:b0] - line) * (1 + (a - 1) * ramp)
        return x

    W, med = W.clone(), med.clone()
    for b in sel.nonzero()[:, 0].tolist():
        a = -1.0 + 1.5 * float(torch.rand(1, generator=g))
        ect = y[b] == s_class
        if not ect.any():
            continue
        W[b, ect] = refocus(W[b, ect], a)
        if ect.float().mean() > 0.5:
            med[b] = refocus(med[b], a)
    return W, med


def synthetic_s(rr, y, g: torch.Generator, p: float):
    """Synthetic supraventricular premature beats (a label-changing RR augmentation).

    DS1's S beats come mostly from runs in a few records, so isolated premature beats of
    normal shape are rare. Take an N beat between N neighbours, make it premature
    (pre-RR times u ~ U(0.55, 0.85)), give the time back to its post-RR, keep the
    neighbours consistent, and relabel it S: usual morphology + early timing -> S, the
    rule that carries across patients.
    """
    B, T = y.shape
    if T < 3:
        return rr, y
    cand = (y[:, 1:-1] == 0) & (y[:, :-2] == 0) & (y[:, 2:] == 0)
    pick = cand & (torch.rand(B, T - 2, generator=g) < p)
    pick[:, 1:] &= ~pick[:, :-1]  # never two neighbours: each one's RR edits would overwrite the other's
    bi, ti = pick.nonzero(as_tuple=True)
    ti = ti + 1
    u = 0.55 + 0.30 * torch.rand(len(ti), generator=g)
    pre = rr[bi, ti, 0]
    d = pre * (1 - u)
    rr[bi, ti, 0] = pre - d
    rr[bi, ti, 1] = rr[bi, ti, 1] + d
    rr[bi, ti - 1, 1] = rr[bi, ti, 0]
    rr[bi, ti + 1, 0] = rr[bi, ti, 1]
    y[bi, ti] = 1
    return rr, y


def _set_intervals(rr, b: int, iv, local_beats: int, record_stat: str = "mean", p_waves=None,
                   local_stat: str = "mean", interval_stat: str = "raw") -> None:
    """Rewrite sequence ``b`` of ``rr`` from ``iv``, its ``T + 1`` intervals (the one before each beat, then the
    one after the last): pre- and post-RR, the local mean recomputed, the record reference scaled by the new
    rate (its mean, or with ``record_stat="median"`` its median, as the model's ``record_rr_stat`` reads it;
    with ``"atrial"`` the mean of the new intervals each divided by its P waves, ``p_waves`` (``T + 1``,
    default 1: conducted), against the recorded intervals' mean, DS1's having a blocked P wave in about
    one interval in 3,000). With ``local_stat="atrial"`` the local mean is taken over the intervals each
    divided by its P waves, as the model's ``local_rr_stat`` reads it; with ``interval_stat="atrial"`` pre- and
    post-RR are those divided intervals too (``interval_rr_stat``)."""
    stat = torch.median if record_stat == "median" else torch.mean
    old = stat(rr[b, :, 0])
    cyc = iv / p_waves if p_waves is not None else iv
    pre = iv[:-1]
    shown = cyc if interval_stat == "atrial" else iv
    rr[b, :, 0], rr[b, :, 1] = shown[:-1], shown[1:]
    cycles = cyc[:-1]
    rr[b, :, 2] = _local_mean(cycles if local_stat == "atrial" else pre, local_beats)
    new = stat(cycles) if record_stat == "atrial" and p_waves is not None else stat(pre)
    rr[b, :, 3] = rr[b, :, 3] * new / old


def synthetic_ectopy(rr, y, g: torch.Generator, p: float, local_beats: int = 10, record_stat: str = "mean"):
    """Frequent atrial ectopy on whole N-only sequences (a label-changing RR augmentation).

    DS1's S beats come from a handful of patients, mostly as isolated beats or short runs in
    an otherwise regular rhythm; a model trained on them learns "S is rare". Patients with
    frequent ectopy (bigeminy, couplets, runs, ectopic beats outnumbering sinus beats) break
    that prior. This rewrites the RR series of a sequence as a two-state rhythm: sinus beats
    (N) at the patient's rate ``m`` (+-3 %) and premature beats (S) at ``u * m`` with
    ``u ~ U(0.5, 0.85)``; the sinus beat after an ectopic one comes after a pause of
    ``m * U(1.0, 2.0)`` (sinus reset or sinus-node dysfunction). Ectopic beats arrive as a
    sticky Markov chain whose ectopic share is drawn per sequence in ``[0.1, 0.9]``, so
    runs, bigeminy and S-majority stretches all occur. Local and record means are
    recomputed so every RR feature stays consistent. Morphology is untouched (S beats
    have the patient's usual QRS). Returns the new RR, labels and the mask of sequences changed.
    """
    B, T = y.shape
    sel = (y == 0).all(1) & (torch.rand(B, generator=g) < p)
    for b in sel.nonzero()[:, 0].tolist():
        U = lambda: float(torch.rand(1, generator=g))  # noqa: E731
        m = float(rr[b, :, 2].median())
        u, pause = 0.5 + 0.35 * U(), 1.0 + 1.0 * U()
        share = 0.1 + 0.8 * U()                   # stationary share of ectopic beats
        stay = 0.3 + 0.6 * U()                    # P(ectopic -> ectopic): run length
        enter = min(share * (1 - stay) / (1 - share), 0.95)  # P(sinus -> ectopic) giving that share
        ect = torch.zeros(T + 1, dtype=torch.bool)
        r = torch.rand(T + 1, generator=g)
        for t in range(1, T + 1):
            ect[t] = r[t] < (stay if ect[t - 1] else enter)
        jit = 1 + 0.03 * torch.randn(T + 1, generator=g)
        prev_ect = torch.cat([torch.zeros(1, dtype=torch.bool), ect[:-1]])
        iv = torch.where(ect, u * m, torch.where(prev_ect, pause * m, torch.tensor(m))) * jit  # interval before each beat
        _set_intervals(rr, b, iv, local_beats, record_stat)
        y[b] = ect[:-1].long()  # 1 = S
    return rr, y, sel


def synthetic_block(rr, y, g: torch.Generator, p: float, local_beats: int = 10, record_stat: str = "mean",
                    doubled: bool = False, local_stat: str = "mean", interval_stat: str = "raw"):
    """Second-degree AV block with 2:1 conduction in stretches, on whole N-only sequences; labels unchanged.

    The counterweight to :func:`synthetic_ectopy`, as :func:`synthetic_af` is to :func:`synthetic_s`:
    there, beats faster than the slower beats around them are S. In 2:1 AV block every other
    sinus P wave is not conducted, so the interval doubles while the block lasts and halves when
    1:1 conduction returns; every conducted beat is a sinus beat (AAMI: N). DS1 has no such
    rhythm. This rewrites the RR series of a sequence as stretches of 8-128 beats that alternate
    between 1:1 conduction at the patient's rate ``m`` and 2:1 conduction at ``2 m`` (the first
    stretch's kind drawn), every interval jittered by 3 %. Local and record means are recomputed as
    in :func:`synthetic_ectopy`. Morphology is untouched here; with windows longer than the interval
    (a model's ``cut_next_s``), :func:`hide_next_beat` leaves the blocked P wave in them.
    Returns the new RR tensor, the mask of sequences changed and, with ``doubled=True``, a
    third value: the ``(B, T)`` mask of beats whose post-RR is a 2:1 interval.
    """
    B, T = y.shape
    sel = (y == 0).all(1) & (torch.rand(B, generator=g) < p)
    two = torch.zeros(B, T, dtype=torch.bool)
    for b in sel.nonzero()[:, 0].tolist():
        m = float(rr[b, :, 0].median())
        factor = torch.ones(T + 1)
        t, blocked = 0, bool(torch.rand(1, generator=g) < 0.5)
        while t < T + 1:
            n = int(torch.randint(8, 129, (1,), generator=g))
            if blocked:
                factor[t:t + n] = 2.0
            t, blocked = t + n, not blocked
        _set_intervals(rr, b, m * factor * (1 + 0.03 * torch.randn(T + 1, generator=g)), local_beats,
                       record_stat, p_waves=factor, local_stat=local_stat, interval_stat=interval_stat)
        two[b] = factor[1:] > 1.5
    return (rr, sel, two) if doubled else (rr, sel)


#: The steepest beat-to-beat change of :func:`synthetic_sinus_arrhythmia` (a share of the interval): sinus
#: rate drifts, a premature beat jumps (synthetic_s shortens an interval by 15-45 %).
SINUS_ARRHYTHMIA_MAX_STEP = 0.12


def synthetic_sinus_arrhythmia(rr, y, g: torch.Generator, p: float, local_beats: int = 10,
                               record_stat: str = "mean", local_stat: str = "mean", interval_stat: str = "raw"):
    """Respiratory sinus arrhythmia on whole N-only sequences; labels unchanged.

    The counterweight to "shorter than the usual interval means S": in sinus arrhythmia the
    sinus rate swings with breathing, so in the fast phase every beat comes 10-30 % earlier than
    the record's usual interval while each comes only a little earlier than the beat before it;
    they are sinus beats (AAMI: N). This rewrites the RR series of a sequence as the patient's
    interval ``m`` modulated by ``1 + a sin(phase)``, the phase advancing by ``2 pi m / P`` per
    beat for a breathing period ``P ~ U(4, 10)`` s, with ``a ~ U(0.05, 0.25)`` capped so that no
    step between neighbouring intervals exceeds :data:`SINUS_ARRHYTHMIA_MAX_STEP` of ``m``, every
    interval jittered by 2 %. Local and record means are recomputed as in :func:`synthetic_ectopy`;
    morphology is untouched. Returns the new RR tensor and the mask of sequences changed.
    """
    B, T = y.shape
    sel = (y == 0).all(1) & (torch.rand(B, generator=g) < p)
    for b in sel.nonzero()[:, 0].tolist():
        U = lambda: float(torch.rand(1, generator=g))  # noqa: E731
        m = float(rr[b, :, 0].median())
        period = 4.0 + 6.0 * U()
        step = 2 * math.pi * m / period                          # phase advance per beat
        a = min(0.05 + 0.20 * U(), SINUS_ARRHYTHMIA_MAX_STEP / step)
        phase = 2 * math.pi * U() + step * torch.arange(T + 1, dtype=rr.dtype)
        iv = m * (1 + a * torch.sin(phase)) * (1 + 0.02 * torch.randn(T + 1, generator=g))
        _set_intervals(rr, b, iv, local_beats, record_stat, local_stat=local_stat, interval_stat=interval_stat)
    return rr, sel


def ventricular_ectopy(W, y, sel, g: torch.Generator, q: float, pool: torch.Tensor, s_class: int = 1,
                       v_class: int = 2):
    """Turn the premature beats of some synthetic-ectopy sequences into ventricular ones.

    ``sel`` marks the sequences :func:`synthetic_ectopy` rewrote (their premature beats are
    labelled S and keep the patient's own QRS). Each, with probability ``q``, gets one donor
    V beat drawn from ``pool`` (V windows of the training patients, shape ``(n, L)``): every
    premature beat of the sequence takes that window (a unifocal PVC) and the label V. The
    RR series is untouched, so synthetic S and synthetic V beats share one timing
    distribution and only the shape tells them apart. DS1 cross-validation found V beats in
    bigeminy called S (record 106: p(S) 0.80 on average): a premature rhythm taught as
    atrial alone. Returns the new windows and labels.
    """
    if q <= 0 or not sel.any() or len(pool) == 0:
        return W, y
    W, y = W.clone(), y.clone()
    for b in sel.nonzero()[:, 0].tolist():
        if float(torch.rand(1, generator=g)) >= q:
            continue
        donor = pool[int(torch.randint(0, len(pool), (1,), generator=g))]
        ect = y[b] == s_class
        W[b, ect] = donor.to(W.dtype)
        y[b, ect] = v_class
    return W, y


def ventricular_shape(W, y, g: torch.Generator, p: float, r_index: int, v_class: int = 2):
    """Unfamiliar ventricular morphologies: per sequence, with probability ``p``, its V beats are
    inverted (about their window's edge baseline) and widened around R by ``U(1.0, 1.35)``.

    DS1 holds the V shapes of a few patients; a patient whose V beats look like none of them
    has them called S when they are premature (cross-validation on DS1: records 106 and 215).
    What carries across patients is that a V beat differs from the patient's own dominant beat
    (a wide QRS of either polarity), not any particular shape. Labels are untouched.
    """
    B = W.shape[0]
    sel = (torch.rand(B, generator=g) < p) & (y == v_class).any(1)
    if not sel.any():
        return W
    W = W.clone()
    for b in sel.nonzero()[:, 0].tolist():
        v = (y[b] == v_class).nonzero()[:, 0]
        x = W[b, v]                                                           # (nV, L)
        base = 0.5 * (x[:, :8].mean(1, keepdim=True) + x[:, -8:].mean(1, keepdim=True))
        if float(torch.rand(1, generator=g)) < 0.5:
            x = 2 * base - x
        f = 1.0 + 0.35 * torch.rand(1, 1, generator=g)
        W[b, v] = _warp(x, f.expand(len(v), 1), r_index)
    return W


#: Frequency band (Hz) of :func:`motion_noise`: electrode motion moves the baseline at the pace
#: of a step or a breath's muscle shift, in the band of the P and T waves and below the QRS's.
MOTION_BAND_HZ = (0.7, 8.0)


def motion_noise(W, med, g: torch.Generator, strength: float, fs: float, p: float = 0.5):
    """Electrode-motion-like artefact on a burst of consecutive beats (labels kept).

    W (n, T, L) windows, med (n, L) median beats. On each sequence with probability ``p``, a
    run of consecutive beats (10-60 % of the sequence, anywhere in it) gets, per window, a sum
    of four sinusoids with frequencies log-uniform in :data:`MOTION_BAND_HZ`, random phases and
    Gaussian weights, scaled to a standard deviation of ``strength * U(0, 1)`` times the
    sequence's median-beat peak-to-peak. Unlike ``baseline`` (slower than the 0.5 Hz high-pass)
    and ``emg`` (differenced white noise, mostly above the QRS band) this artefact survives
    the band-pass and is as large as the beats: what noisy stretches of MIT-BIH look like.
    Returns the new ``W``.
    """
    n, T, L = W.shape
    if n == 0 or strength <= 0:
        return W
    on = torch.rand(n, generator=g) < p
    length = torch.ceil(T * (0.1 + 0.5 * torch.rand(n, generator=g))).long().clamp(1, T)
    start = (torch.rand(n, generator=g) * (T - length + 1)).long()
    idx = torch.arange(T)[None, :]
    burst = on[:, None] & (idx >= start[:, None]) & (idx < (start + length)[:, None])  # (n, T)
    lo, hi = math.log(MOTION_BAND_HZ[0]), math.log(MOTION_BAND_HZ[1])
    freq = torch.exp(lo + (hi - lo) * torch.rand(n, T, 4, 1, generator=g))
    phase = 2 * math.pi * torch.rand(n, T, 4, 1, generator=g)
    weight = torch.randn(n, T, 4, 1, generator=g)
    t = torch.arange(L, dtype=W.dtype) / fs
    x = (weight * torch.sin(2 * math.pi * freq * t + phase)).sum(2)           # (n, T, L)
    x = x / (weight.square().sum(2) / 2).sqrt().clamp_min(1e-6)              # unit std (in expectation)
    ptp = (med.amax(-1) - med.amin(-1))[:, None, None]                       # (n, 1, 1)
    amp = strength * torch.rand(n, 1, 1, generator=g) * ptp
    return W + burst[..., None] * amp * x


def neighbour_overlap(W, pre_old, pre_new, fs_hz: float):
    """Windows that follow a rewritten RR series: neighbours brought closer appear in each other's window.

    The RR augmentations (:func:`synthetic_s`, :func:`synthetic_ectopy`, :func:`synthetic_af`) move
    beats in time but leave their windows as the record had them, so a synthetic premature beat
    shows a clean baseline and the patient's sinus P wave where a real one shows the end of the
    previous beat's T wave (often with its own P wave on it), and the beat before it does not
    show the early QRS coming. ECG is close to a superposition of beats, so: for every pair of
    consecutive beats whose interval shrank from ``pre_old`` to ``pre_new``, each window gains
    the part of its neighbour's window that the new interval puts inside it, where the old
    interval left the window free of that neighbour, and where the old interval already showed
    it, the neighbour's part at the old interval is swapped for its part at the new one. The
    neighbour enters relative to its own window edge (its last sample for the previous beat, its
    first for the next), so the added part meets the window continuously.

    W (B, T, L) windows, one beat's R at the same index in each; pre_old, pre_new (B, T) intervals
    to the previous beat in seconds; ``fs_hz`` the windows' rate. Returns new windows; draws nothing.
    """
    B, T, L = W.shape
    if T < 2:
        return W
    d_new = torch.round(pre_new[:, 1:] * fs_hz).long()[..., None]  # (B, T-1, 1) samples, pair (i-1, i)
    d_old = torch.round(pre_old[:, 1:] * fs_hz).long()[..., None]
    closer = (d_new < d_old) & (d_new < L)
    if not closer.any():
        return W
    j = torch.arange(L)                                             # (L,) window index
    prev, cur = W[:, :-1], W[:, 1:]                                 # (B, T-1, L)
    # into beat i: sample j of its window is sample j + d of the previous beat's (B, T-1, L)
    into_cur = closer & (j < L - d_new)
    was = torch.where(j + d_old < L, torch.gather(prev, 2, (j + d_old).clamp(max=L - 1)), prev[..., -1:])
    tail = torch.gather(prev, 2, (j + d_new).clamp(max=L - 1)) - was
    # into beat i-1: sample j of its window is sample j - d of the next beat's
    into_prev = closer & (j >= d_new)
    was = torch.where(j >= d_old, torch.gather(cur, 2, (j - d_old).clamp(min=0)), cur[..., :1])
    head = torch.gather(cur, 2, (j - d_new).clamp(min=0)) - was
    out = W.clone()
    out[:, 1:] += torch.where(into_cur, tail, torch.zeros(()))
    out[:, :-1] += torch.where(into_prev, head, torch.zeros(()))
    return out


#: ``hide_next_beat``: the next beat's P wave (and PR segment) starts this long before its R.
P_ONSET_S = 0.30


def hide_next_beat(W, post_old, post_new, r_index: int, fs_hz: float, cut_s: float, keep_p=None, no_p=None):
    """Stored windows made to agree with a rewritten post-RR, for a model that cuts them at the next beat.

    Such a model (``cut_next_s`` in its input contract) holds each window at its last value from
    ``cut_s`` before the next R, at the post-RR it is given. The stored windows show the next beat
    where the record had it (``post_old``), so once an augmentation has rewritten the intervals
    (``post_new``) they would show it where the rhythm no longer puts it. Per beat, every sample from
    the next beat's recorded cut on holds the value before it; where the interval grew by more
    than the P segment (``post_new - P_ONSET_S`` past the recorded cut) the next beat's P segment
    (``P_ONSET_S`` .. ``cut_s`` before its R) is moved to where the new interval puts it, and the
    flat baseline fills the time between. ``keep_p`` (B, T): beats whose grown interval is a 2:1 AV
    block interval, where the recorded P wave stays (a blocked P wave) and is also drawn again
    before the next, conducted beat. ``no_p`` (B, T): beats of an AF rhythm, where the next P wave
    is removed and none is drawn. Elsewhere the recorded next P wave is removed where a new one is
    drawn and kept where it is not (an interval that grew by less, or shrank: the model's cut moves
    before it).

    W (B, T, L) windows with the beat's R at ``r_index``; post_old, post_new (B, T) seconds. Returns new
    windows; draws nothing.
    """
    B, T, L = W.shape
    zeros = torch.zeros(B, T, dtype=torch.bool)
    keep_p = zeros if keep_p is None else keep_p
    no_p = zeros if no_p is None else no_p
    at = lambda post, before_r: r_index + torch.round((post - before_r) * fs_hz).long()  # noqa: E731
    a_old, c_old = at(post_old, P_ONSET_S), at(post_old, cut_s)   # (B, T) recorded P onset, recorded cut
    a_new = at(post_new, P_ONSET_S)
    n = c_old - a_old                                              # P segment length in samples
    move = (a_new >= c_old) & ~no_p & (a_old > r_index)            # room for the P segment at the new interval
    # first held sample: the recorded cut, or the recorded P onset where that P wave goes (never within
    # 0.2 s of the beat's own R: its T wave stays, and never past the recorded cut)
    drop_p = torch.minimum(a_old.clamp(min=r_index + round(0.2 * fs_hz)), c_old)
    held = torch.where(no_p | (move & ~keep_p), drop_p, c_old).clamp(r_index + 1, L)
    a_new = torch.where(move, a_new, torch.full_like(a_new, L))    # no move: nothing drawn
    j = torch.arange(L)
    held, a_new, a_old, n, c_old = (v[..., None] for v in (held, a_new, a_old, n, c_old))
    idx = torch.where(j < held, j, held - 1)                      # before the cut: as recorded; then hold
    idx = torch.where((j >= a_new) & (j < a_new + n), j - a_new + a_old, idx)  # the moved P segment
    idx = torch.where(j >= a_new + n, (c_old - 1).clamp(max=L - 1), idx)     # its PR segment, held
    return torch.gather(W, 2, idx.clamp(0, L - 1))


def training_batch(fit: dict, names: list[str], tc, spec: dict, margin: int, g: torch.Generator,
                   v_pool: torch.Tensor | None = None):
    """One training batch: random crops of the training records, then every augmentation of ``tc.augment``.

    Returns ``W, med, rr, y, shift, lead2``: windows, medians, RR features, labels (synthetic beats
    relabelled), each beat's crop offset and the second lead's ``(W2, med2)`` (None for one lead),
    ready for :func:`~ecgkit.inference.make_channels`. Draws only from ``g``.
    ``v_pool``: the training patients' V windows, for ``ventricular_ectopy``.
    """
    W, med, rr, y, lead2 = sample_batch(fit, names, tc.seq_len, tc.batch_size, g)
    rr, y = rr.clone(), y.clone()
    pre_recorded = rr[..., 0].clone()  # the record's own intervals, for neighbour_overlap
    post_recorded = rr[..., 1].clone()  # and for hide_next_beat
    cut_s = float(spec.get("cut_next_s", 0.0))
    blocked = torch.zeros_like(y, dtype=torch.bool)  # beats ending a synthetic 2:1 interval
    local_beats = spec.get("local_rr_beats", 10)
    record_stat = spec.get("record_rr_stat", "mean")
    local_stat = spec.get("local_rr_stat", "mean")
    interval_stat = spec.get("interval_rr_stat", "raw")
    rewritten = torch.zeros(len(y), dtype=torch.bool)  # sequences whose whole RR series is synthetic
    if tc.augment.synthetic_af > 0:  # first, so synthetic S never lands in an irregular context
        rr, rewritten = synthetic_af(rr, y, g, tc.augment.synthetic_af, local_beats, tc.augment.af_rate)
        if tc.augment.af_fibrillatory_p and rewritten.any():
            W[rewritten], med[rewritten] = fibrillatory_p(W[rewritten], med[rewritten], g,
                                                          margin + spec["before_samples"], spec["fs_hz"])
            if lead2 is not None:  # no P wave in any lead; f-waves are clearest in V1
                W2, med2 = lead2
                W2[rewritten], med2[rewritten] = fibrillatory_p(W2[rewritten], med2[rewritten], g,
                                                                margin + spec["before_samples"], spec["fs_hz"])
    keep = ~rewritten
    if tc.augment.synthetic_ectopy > 0:  # on N-only sequences the AF series left alone
        rr[keep], y[keep], ect = synthetic_ectopy(rr[keep], y[keep], g, tc.augment.synthetic_ectopy,
                                                  local_beats, record_stat)
        ect_full = torch.zeros_like(keep)  # the rewritten sequences, indexed over the whole batch
        ect_full[keep] = ect
        classes = list(spec["classes"])
        if tc.augment.ventricular_ectopy > 0:
            W, y = ventricular_ectopy(W, y, ect_full, g, tc.augment.ventricular_ectopy, v_pool,
                                      classes.index("S"), classes.index("V"))
        if tc.augment.ectopic_p:
            W, med = ectopic_p(W, med, y, ect_full, g, margin + spec["before_samples"], spec["fs_hz"],
                               classes.index("S"))
        keep[keep.clone()] = ~ect  # synthetic_s leaves the ectopy sequences alone too
    if tc.augment.synthetic_block > 0:  # on N-only sequences no other RR rewrite took
        rr[keep], blk, two = synthetic_block(rr[keep], y[keep], g, tc.augment.synthetic_block, local_beats,
                                             record_stat, doubled=True, local_stat=local_stat,
                                             interval_stat=interval_stat)
        blocked[keep] = two
        keep[keep.clone()] = ~blk  # a synthetic S beat inside 2:1 block could sit at the sinus rate
    if tc.augment.sinus_arrhythmia > 0:  # on N-only sequences no other RR rewrite took; synthetic_s may follow
        rr[keep], _ = synthetic_sinus_arrhythmia(rr[keep], y[keep], g, tc.augment.sinus_arrhythmia, local_beats,
                                                 record_stat, local_stat, interval_stat)
    if tc.augment.synthetic_s > 0:
        rr[keep], y[keep] = synthetic_s(rr[keep], y[keep], g, tc.augment.synthetic_s)
    if tc.augment.ventricular_shape > 0:
        W = ventricular_shape(W, y, g, tc.augment.ventricular_shape, margin + spec["before_samples"],
                              list(spec["classes"]).index("V"))
    if tc.augment.neighbour_overlap:  # after every RR edit, before gain, stretch and noise
        W = neighbour_overlap(W, pre_recorded, rr[..., 0], spec["fs_hz"])
        if lead2 is not None:
            lead2 = (neighbour_overlap(lead2[0], pre_recorded, rr[..., 0], spec["fs_hz"]), lead2[1])
    if cut_s > 0:  # the model cuts each window at the next beat: stored windows follow the new intervals
        hide = lambda X: hide_next_beat(X, post_recorded, rr[..., 1], margin + spec["before_samples"],  # noqa: E731
                                        spec["fs_hz"], cut_s, blocked, rewritten[:, None].expand_as(blocked))
        W = hide(W)
        if lead2 is not None:
            lead2 = (hide(lead2[0]), lead2[1])
    if lead2 is None:
        W, med, rr, shift = augment(W, med, rr, g, tc.augment, margin, spec["before_samples"],
                                    rate_scale=cut_s <= 0)
    else:
        W, med, rr, shift, lead2 = augment(W, med, rr, g, tc.augment, margin, spec["before_samples"], lead2,
                                           rate_scale=cut_s <= 0)
    if tc.augment.motion > 0:  # last, so that without it every other draw is what it was
        W = motion_noise(W, med, g, tc.augment.motion, spec["fs_hz"])
        if lead2 is not None:  # motion moves every electrode, each lead its own way
            lead2 = (motion_noise(lead2[0], lead2[1], g, tc.augment.motion, spec["fs_hz"]), lead2[1])
    return W, med, rr, y, shift, lead2


# --- evaluation during training --------------------------------------------------------------

def evaluate_beats(model, data: dict, spec: dict, seq_len: int) -> dict:
    ys, ps, recs = [], [], []
    for name, d in data.items():
        lp = predict_log_proba(model, d, spec, seq_len)
        ys.append(d["y"]); ps.append(lp.argmax(-1)); recs.append(np.full(len(d["y"]), name))
    return ec57_report(np.concatenate(ys), np.concatenate(ps), np.concatenate(recs))


def selection_score(report: dict, metric: str) -> float:
    if metric == "jk":
        return report["jk"]
    if metric == "accuracy":
        return report["accuracy"]
    f = [report["gross"][c]["F1"] for c in ("N", "S", "V")]  # macro_f1
    return float(np.nanmean(f))


# --- the loop --------------------------------------------------------------------------------

def _dist():
    """(rank, world_size), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def lr_at(step: int, total: int, peak: float, warmup: float = 0.15) -> float:
    """One-cycle: linear warm-up to ``peak`` over ``warmup`` of the steps, then cosine to ~0."""
    w = max(1, int(warmup * total))
    if step < w:
        return peak * (0.04 + 0.96 * step / w)
    p = (step - w) / max(1, total - w)
    return peak * (0.5 * (1 + math.cos(math.pi * min(p, 1.0)))) + peak * 1e-4


def train(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False, data_dir=None,
          log=print, show_progress: bool = True) -> Path:
    """Train ``cfg.model`` on ``cfg.data.train`` minus ``cfg.data.val``; return the best checkpoint's path.

    With validation patients, ``best.pt`` is the epoch that scores best on them. With
    ``data.val: []`` (a final fit on all training patients, once the recipe and epoch
    count were chosen on validation patients) ``best.pt`` is the last epoch.
    """
    if cfg.train.ensemble > 1:
        return train_ensemble(cfg, run_dir, resume, data_dir, log, show_progress)
    rank, world = _dist()
    run_dir = Path(run_dir or cfg.run_dir)
    tc = cfg.train
    torch.set_num_threads(tc.threads)
    torch.manual_seed(cfg.seed)

    params = dict(cfg.model.params)
    params.setdefault("seq_len", tc.seq_len)
    model = create("encoders", cfg.model.name, **params)
    with_postprocess(model, cfg)
    spec = input_spec(model)
    n_classes = len(spec["classes"])
    margin = min(tc.augment.shift_samples, MARGIN_MAX)
    check_channels(spec)
    if uses_second_lead(spec) and (tc.augment.ventricular_ectopy > 0 or tc.augment.ventricular_shape > 0
                                   or tc.augment.ectopic_p):
        raise ConfigError("train.augment.ventricular_ectopy, ventricular_shape and ectopic_p edit one lead only; "
                          "turn them off for a model that reads a second lead")

    data_root = data_dir or cfg.data.data
    train_paths = resolve_records(cfg.data.train, data_root)
    val_set = set(cfg.data.val)
    fit_paths = [p for p in train_paths if Path(p).name not in val_set]
    val_paths = [p for p in train_paths if Path(p).name in val_set]
    if not fit_paths:
        raise ConfigError("no training records left after removing the validation patients")

    from .progress import progress_bar

    with progress_bar(disable=not show_progress or rank != 0) as bar:
        task = bar.add_task("loading beats", total=len(train_paths))
        adv = lambda name: bar.update(task, advance=1, description=f"loading beats {name}")  # noqa: E731
        fit = load_beats(fit_paths, cfg, spec, margin, adv)
        val = load_beats(val_paths, cfg, spec, 0, adv)
    names = sorted(fit)
    v_pool = None
    if tc.augment.ventricular_ectopy > 0:  # donor V beats of the training patients
        if not {"S", "V"} <= set(spec["classes"]):
            raise ConfigError("train.augment.ventricular_ectopy needs a model with classes S and V")
        v_idx = list(spec["classes"]).index("V")
        v_pool = torch.from_numpy(np.concatenate([fit[n]["W"][fit[n]["y"] == v_idx] for n in names]))
    y_w = weight_labels(fit, names, tc, spec, margin, cfg.seed, v_pool)
    weights = class_weights(y_w, n_classes, tc.class_weight_power, tc.class_weight_cap)
    if rank == 0:
        log(f"class weights ({tc.class_weight_labels} labels): "
            + " ".join(f"{c} {w:.2f}" for c, w in zip(spec["classes"], weights.tolist())))

    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    ema = None
    if tc.ema > 0:  # averaged copy; it never feeds back into training, so the raw trajectory is unchanged
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema), use_buffers=True)
    start_epoch, history, best = 0, [], -float("inf")
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume:
        if not last_path.is_file():
            raise ConfigError(f"--resume: no checkpoint {last_path} to resume from")
        ck = read_checkpoint(last_path)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        if ema is not None:
            if "ema_state_dict" not in ck:
                raise ConfigError(f"--resume: {last_path} was trained without train.ema; cannot resume with it")
            ema.load_state_dict(ck["ema_state_dict"])
        start_epoch, history, best = ck["epoch"], json.loads(ck["history"]), ck["best_score"]
        log(f"resuming from epoch {start_epoch}")

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    total_steps = tc.epochs * tc.steps_per_epoch
    config_json = json.dumps(asdict(cfg))
    extra_common = {"config": config_json, "seed": cfg.seed, "licence": LICENCE}

    with progress_bar(disable=not show_progress or rank != 0) as bar:
        task = bar.add_task("training", total=total_steps, completed=start_epoch * tc.steps_per_epoch)
        for epoch in range(start_epoch, tc.epochs):
            # re-seed per epoch (and rank): resuming at an epoch boundary replays the same streams
            torch.manual_seed(cfg.seed * 100003 + epoch * 101 + rank)
            g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch * 101 + rank + 7)
            net.train()
            t0, loss_sum = time.time(), 0.0
            for it in range(tc.steps_per_epoch):
                step = epoch * tc.steps_per_epoch + it
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total_steps, tc.lr)
                W, med, rr, y, shift, lead2 = training_batch(fit, names, tc, spec, margin, g, v_pool)
                x = make_channels(W, med, spec["channels"], margin, spec["before_samples"] + spec["after_samples"],
                                  shift, lead2)
                logits = net(x, rr).reshape(-1, n_classes)           # (B*T, C)
                yf = y.reshape(-1)
                keep = yf >= 0
                logits, yf = logits[keep], yf[keep]
                if tc.loss == "focal":
                    lp = F.log_softmax(logits, -1).gather(1, yf[:, None])[:, 0]
                    wt = weights[yf]
                    loss = (-(1 - lp.exp()) ** tc.focal_gamma * lp * wt).sum() / wt.sum()
                else:
                    loss = F.cross_entropy(logits, yf, weight=weights)
                if hasattr(model, "auxiliary_loss"):  # an encoder's own training-only loss (e.g. a deep-supervision head)
                    loss = loss + model.auxiliary_loss(y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += loss.item()
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{tc.epochs} loss {loss.item():.3f}")
            epoch_s = time.time() - t0
            entry = {"epoch": epoch + 1, "loss": loss_sum / tc.steps_per_epoch, "seconds": epoch_s}
            if rank == 0:
                final = model if ema is None else ema.module  # the weights that are evaluated and shipped
                if val:
                    rep = evaluate_beats(final, val, spec, tc.seq_len)
                    score = selection_score(rep, tc.select_metric)
                    g_ = rep["gross"]
                    entry.update(val_accuracy=rep["accuracy"], val_jk=rep["jk"], val_score=score,
                                 val_S_F1=g_["S"]["F1"], val_V_F1=g_["V"]["F1"],
                                 val_S_Se=g_["S"]["Se"], val_S_P=g_["S"]["+P"],
                                 val_V_Se=g_["V"]["Se"], val_V_P=g_["V"]["+P"])
                else:  # no validation patients: the recipe fixed the epochs beforehand; keep the last
                    score = float(epoch + 1)
                history.append(entry)
                is_best = score > best
                best = max(best, score)
                extra = {**extra_common, "epoch": epoch + 1, "history": json.dumps(history), "best_score": best}
                if is_best:
                    save_checkpoint(best_path, final, encoder=cfg.model.name, params=params, extra=extra,
                                    dtype=tc.weights_dtype)
                resume_state = {"optimizer": opt.state_dict()}
                if ema is not None:
                    resume_state["ema_state_dict"] = ema.state_dict()
                # last.pt holds the raw (un-averaged) weights: what training resumes from
                save_checkpoint(last_path, model, encoder=cfg.model.name, params=params,
                                extra={**extra, **resume_state})
                _write_history(run_dir, history)
                log(_epoch_line(entry) + (" *" if is_best else ""))
            if world > 1:
                torch.distributed.barrier()
    if world > 1:
        torch.distributed.barrier()
    return best_path


def with_postprocess(model, cfg: RunConfig):
    """``model`` with core's inference-time steps of ``cfg`` in its input contract (saved with it)."""
    from .inference import VENTRICULAR_NEIGHBOURS

    if cfg.model.ventricular_neighbours:
        input_spec(model)[VENTRICULAR_NEIGHBOURS] = int(cfg.model.ventricular_neighbours)
    return model


def train_ensemble(cfg: RunConfig, run_dir=None, resume: bool = False, data_dir=None, log=print,
                   show_progress: bool = True) -> Path:
    """``train.ensemble: N``: train N members (seeds ``seed .. seed+N-1``, each in ``memberK/``), then
    write ``best.pt``, one checkpoint of encoder ``ensemble`` holding the members' best epochs.

    Member K is exactly the model ``train`` gives for the same config with seed ``seed+K-1``.
    """
    import copy

    from .checkpoint import load_model
    from .ensemble import Ensemble

    rank, world = _dist()
    run_dir = Path(run_dir or cfg.run_dir)
    n = cfg.train.ensemble
    if resume and not (run_dir / "member1" / "last.pt").is_file():
        raise ConfigError(f"--resume: no checkpoint {run_dir / 'member1' / 'last.pt'} to resume from")
    paths = []
    for i in range(n):
        c = copy.deepcopy(cfg)
        c.seed, c.train.ensemble, c.train.weights_dtype = cfg.seed + i, 1, "float32"
        mdir = run_dir / f"member{i + 1}"
        log(f"ensemble member {i + 1}/{n} (seed {c.seed})")
        paths.append(train(c, mdir, resume=resume and (mdir / "last.pt").is_file(), data_dir=data_dir,
                           log=log, show_progress=show_progress))
    best_path = run_dir / "best.pt"
    if rank == 0:
        loaded = [load_model(str(p)) for p in paths]
        model = with_postprocess(Ensemble([m for m, _ in loaded]), cfg)
        cks = [ck for _, ck in loaded]
        params = {"members": [{"encoder": ck["encoder"], "params": ck["params"]} for ck in cks]}
        extra = {"config": json.dumps(asdict(cfg)), "seed": cfg.seed, "member_seeds": [ck["seed"] for ck in cks],
                 "epoch": [ck["epoch"] for ck in cks], "licence": LICENCE}
        save_checkpoint(best_path, model, encoder="ensemble", params=params, extra=extra,
                        dtype=cfg.train.weights_dtype)
        history = [{**h, "member": i + 1} for i, ck in enumerate(cks) for h in json.loads(ck["history"])]
        _write_history(run_dir, history)
        log(f"ensemble of {n} written to {best_path}")
    if world > 1:
        torch.distributed.barrier()
    return best_path


def _epoch_line(e: dict) -> str:
    s = f"epoch {e['epoch']:3d} loss {e['loss']:.4f} ({e['seconds']:.0f} s)"
    if "val_jk" in e:
        s += (f" | val acc {100 * e['val_accuracy']:.1f} jk {e['val_jk']:.3f} "
              f"S F1 {100 * np.nan_to_num(e['val_S_F1']):.1f} V F1 {100 * np.nan_to_num(e['val_V_F1']):.1f}")
    return s


def _write_history(run_dir: Path, history: list[dict]) -> None:
    """metrics.json and a training-curve PNG in the run directory."""
    from .io import atomic_write

    atomic_write(run_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(history, indent=1)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for member in sorted({h.get("member", 0) for h in history}):  # an ensemble: one curve per member
        hs = [h for h in history if h.get("member", 0) == member]
        ep, tag = [h["epoch"] for h in hs], (f"member {member} " if member else "")
        ax[0].plot(ep, [h["loss"] for h in hs], marker="o", label=tag.strip() or None)
        if "val_jk" in hs[0]:
            for key, lab in (("val_jk", "jk"), ("val_S_F1", "SVEB F1"), ("val_V_F1", "VEB F1"), ("val_accuracy", "accuracy")):
                ax[1].plot(ep, [h[key] for h in hs], marker="o", label=tag + lab)
            ax[1].legend(fontsize=7)
    if any("member" in h for h in history):
        ax[0].legend(fontsize=7)
    ax[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    ax[1].set(xlabel="epoch", title="validation patients (held out of DS1)")
    fig.tight_layout()
    atomic_write(run_dir / "training_curve.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
