"""Does a model still find S beats when they are the record's majority rhythm? A DS1-only check.

    python benchmarks/rhythm_stress.py RUN0 [RUN1 ...] [--data DIR] [--beats 1800] [--seed 0] [--block [--blocked-p]]

Each RUN is the ``--out`` directory of one ``ecgkit evaluate --protocol kfold`` run over DS1.
Every DS1 record with at least 30 S beats is rebuilt, at the signal level, into two synthetic
records of about ``--beats`` beats made only of that patient's own recorded beats (both
leads), and classified by the fold models that never saw the patient (the runs' mean
log-probability is the ensemble):

* ``sparse``: sinus rhythm at the record's own N-N interval, about 1 beat in 10 an S beat
  at its own recorded coupling interval (the rhythm DS1's S beats mostly come in);
* ``majority``: S beats in runs (mean run 3.5 beats), each at its own recorded coupling
  interval, every run ended by a pause of 2.5 times that interval and one N beat: about 78 %
  S, the pattern of a slow sinus rhythm overrun by atrial ectopy (record 232 of DS2 holds
  three quarters of DS2's S beats and looks like this; the check was written after a model
  chosen on DS1 lost that record, so that the next one is not chosen blind to it).

Both synthetic records go through the models' own preprocessing (band-pass, z-score, record
median beat, RR features), so the record-level statistics are those of the new rhythm. The
source signal is band-passed first (the models band-pass again: the record rebuilt in its own
order and timing, ``identity``, must be classified like the record itself, and the share of
beats whose class agrees is printed). Each beat keeps its recorded samples around its R peak,
from 40 % of the way back to its recorded predecessor (its P wave) to 60 % of the way to its
successor (its T wave), as far as its new neighbours allow; a pause longer than the recorded
interval is bridged by a straight line, and 10 ms cross-fades remove the steps at the joins.

Prints, per record and pooled: S beats found (Se), N beats called S, and V beats called S, for
``real``, ``sparse`` and ``majority``. DS1 only: it never reads DS2.

``--block`` adds a third rhythm, on every DS1 record with at least 100 N beats: sinus rhythm
whose stretches of 1:1 conduction alternate with stretches of 2:1 AV block (every other P
wave not conducted, so the interval doubles), all beats N; it prints the share of N beats
called S. Written in the ninth release (session 10), from domain knowledge: DS1 holds no 2:1 block, DS2's record
231 does, and the default model calls 686 of its 1,571 beats S there (the largest single
source of false S on DS2, measured in an earlier session). Its own draws, so ``--block``
changes no figure of the other rhythms. ``--blocked-p`` (thirteenth release) also draws each
blocked P wave, a copy of the conducted beat's own P segment half an interval before it; without
it the long intervals are bridged flat and the check tests the rate cue alone (the shipped
model's window does not reach a blocked P wave: 47.2 % with, 47.4 % without, seed 0).

How it is used (written in session 8, before any held-out fold model had been scored by it):
a recipe change is adopted only if, besides its DS1 cross-validation rule, its held-out
3-seed ensemble finds, pooled, no fewer than 5 points under the paired baseline's share of
``majority`` S beats and of ``sparse`` S beats. The first question put to it: would it have
stopped the session-7 two-lead recipe, which passed DS1 and lost DS2's record 232? It would
have if that recipe's ``majority`` share is more than 5 points under the baseline's.

``--compose ema:2,block_abs_rate:1`` (as in ``ensemble_cv.py``, repeatable) adds, for every ensemble drawing
that many runs of each recipe, the pooled S found (real / sparse / majority) and, with
``--block``, the block rhythm's N->S share, and the mean of each over the compositions.

``--ventricular-neighbours K`` (twenty-sixth release) applies
``ecgkit.inference.share_ventricular_evidence`` to the ensemble's mean over each (real or rebuilt)
record's beats, as a checkpoint whose contract names it does; the per-run rows stay the networks'
own output. Off by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ecgkit.datasets import resolve_records  # noqa: E402
from ecgkit.datasets.mitdb import AAMI_CLASSES, reference_beats  # noqa: E402
from ecgkit.inference import prepare_record, share_ventricular_evidence  # noqa: E402
from ecgkit.io import Record, read_annotations, read_record  # noqa: E402
from ecgkit.models import load_any_model  # noqa: E402
from ecgkit.preprocess import bandpass  # noqa: E402
from ecgkit.train import P_ONSET_S  # noqa: E402
from ensemble_cv import (SourcePriors, add_record_prior_args, check_ventricular_neighbours, compositions,  # noqa: E402
                         held_out_models, record_prior_em, tta_log_proba, tta_variants, with_record_rr_stat)

MIN_S = 30


#: Where the boundary between two consecutive beats lies, as a fraction of their interval from the
#: earlier one: late enough that the earlier beat keeps its T wave, early enough for the later one's P wave.
SPLIT = 0.6


def resequence(x: np.ndarray, src: np.ndarray, order: np.ndarray, out_peaks: np.ndarray, n_out: int,
               fade: int = 0) -> np.ndarray:
    """A new signal ``(n_out, leads)`` whose beat ``i`` is source beat ``order[i]`` with its R peak at ``out_peaks[i]``.

    ``x`` (n, leads) is the source signal, ``src`` its R peaks (sorted). Every beat owns the samples
    between the boundaries to its neighbours (at :data:`SPLIT` of each interval), in the source
    and in the output. Output beat ``i`` copies the source samples at the same offsets from the
    source R peak, as far as the source beat's own boundaries; where the output interval is longer
    than the recorded one, the gap between the two beats' last copied samples is a straight line.
    ``fade`` samples each side of every join are cross-faded between the two beats' continuations
    where both have them. With ``order`` the identity and ``out_peaks == src`` the output is ``x``.
    """
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    src = np.asarray(src, np.int64)
    order = np.asarray(order, np.int64)
    out_peaks = np.asarray(out_peaks, np.int64)
    n = len(x)

    def bounds(p, length):
        cut = p[:-1] + np.floor(SPLIT * np.diff(p)).astype(np.int64)
        return np.concatenate([[0], cut]), np.concatenate([cut, [length]])

    lo_src, hi_src = bounds(src, n)
    lo_out, hi_out = bounds(out_peaks, n_out)

    def take(i, ts):
        """Source samples of output beat ``i`` at output times ``ts``; NaN beyond its source territory."""
        j = order[i]
        s = src[j] + (ts - out_peaks[i])
        ok = (s >= lo_src[j]) & (s < hi_src[j])
        v = np.full((ts.size, x.shape[1]), np.nan)
        v[ok] = x[s[ok]]
        return v

    t = np.arange(n_out)
    y = np.empty((n_out, x.shape[1]))
    for i in range(len(order)):
        seg = t[lo_out[i]:hi_out[i]]
        y[seg] = take(i, seg)
    if fade > 0:
        w = (np.arange(-fade, fade) + 0.5) / (2 * fade) + 0.5  # weight of the later beat, 0 -> 1
        for i in range(len(order) - 1):
            m = hi_out[i]
            ts = np.arange(max(m - fade, 0), min(m + fade, n_out))
            a, b = take(i, ts), take(i + 1, ts)
            both = ~np.isnan(a[:, 0]) & ~np.isnan(b[:, 0])
            ww = w[ts - (m - fade)][:, None]
            y[ts[both]] = ((1 - ww) * a + ww * b)[both]
    gap = np.isnan(y[:, 0])
    if gap.any() and (~gap).any():
        for k in range(y.shape[1]):
            y[gap, k] = np.interp(t[gap], t[~gap], y[~gap, k])
    return y


def compose(peaks: np.ndarray, labels: np.ndarray, fs: float, kind: str, n_beats: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, out_peaks, out_labels)`` of a synthetic rhythm built from one record's beats.

    Source N beats are those with N neighbours both sides (clean sinus complexes); source S
    beats are all S beats, each placed at its own recorded coupling (pre-RR) interval, jittered
    by 3 %. ``kind``: ``sparse`` or ``majority`` (see the module docstring).
    """
    peaks = np.asarray(peaks, np.int64)
    pre = np.diff(peaks, prepend=peaks[0] - (peaks[1] - peaks[0]))
    n_ok = np.zeros(len(peaks), bool)
    n_ok[1:-1] = (labels[1:-1] == "N") & (labels[:-2] == "N") & (labels[2:] == "N")
    pool_n = np.flatnonzero(n_ok)
    pool_s = np.flatnonzero((labels == "S") & (np.arange(len(peaks)) > 0))
    if pool_n.size < 10 or pool_s.size < 10:
        raise ValueError("need at least 10 clean N beats and 10 S beats")
    rr_n = float(np.median(pre[pool_n]))
    order, intervals = [], []
    while len(order) < n_beats:
        if kind == "sparse":
            if order and labels[order[-1]] != "S" and rng.random() < 0.1:
                j = rng.choice(pool_s)
                rr = pre[j]
            else:
                j = rng.choice(pool_n)
                # after an S beat, a compensatory-free return to sinus at the N-N interval
                rr = rr_n
        elif kind == "majority":
            if not order or (labels[order[-1]] == "S" and rng.random() < 1 / 3.5):
                j = rng.choice(pool_n)
                last_s = order[-1] if order else rng.choice(pool_s)
                rr = 2.5 * pre[last_s] * rng.uniform(0.85, 1.15)
            else:
                j = rng.choice(pool_s)
                rr = pre[j]
        else:
            raise ValueError(f"unknown rhythm {kind!r}")
        order.append(int(j))
        intervals.append(float(rr) * (1 + 0.03 * rng.standard_normal()))
    order = np.array(order)
    start = int(round(2 * fs))
    out_peaks = start + np.round(np.cumsum([0.0] + intervals[1:])).astype(np.int64)
    return order, out_peaks, labels[order]


def compose_block(peaks: np.ndarray, labels: np.ndarray, fs: float, n_beats: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(order, out_peaks, out_labels, blocked)`` of a sinus rhythm with stretches of 2:1 AV block.

    Only the record's clean N beats are used (N neighbours both sides). Stretches of 1:1
    conduction (20-150 beats, at the record's median N-N interval) alternate with stretches
    of 2:1 conduction (20-100 beats, every other sinus P wave blocked: twice that interval),
    every interval jittered by 3 %. Every beat is N (AAMI labels conducted sinus beats N,
    whatever the block). ``blocked[i]``: beat ``i`` ends a 2:1 interval. The blocked P wave
    itself is not drawn (the interval is bridged like any pause), so this tests the rhythm
    cue alone: a regular rate that doubles and halves.
    """
    peaks = np.asarray(peaks, np.int64)
    pre = np.diff(peaks, prepend=peaks[0] - (peaks[1] - peaks[0]))
    n_ok = np.zeros(len(peaks), bool)
    n_ok[1:-1] = (labels[1:-1] == "N") & (labels[:-2] == "N") & (labels[2:] == "N")
    pool_n = np.flatnonzero(n_ok)
    if pool_n.size < 10:
        raise ValueError("need at least 10 clean N beats")
    rr_n = float(np.median(pre[pool_n]))
    factors: list[float] = []
    two_to_one = bool(rng.random() < 0.5)
    while len(factors) < n_beats:
        n = int(rng.integers(20, 101)) if two_to_one else int(rng.integers(20, 151))
        factors += [2.0 if two_to_one else 1.0] * n
        two_to_one = not two_to_one
    factors = np.array(factors[:n_beats])
    intervals = rr_n * factors * (1 + 0.03 * rng.standard_normal(n_beats))
    order = rng.choice(pool_n, n_beats)
    start = int(round(2 * fs))
    out_peaks = start + np.round(np.cumsum(np.concatenate([[0.0], intervals[1:]]))).astype(np.int64)
    return order, out_peaks, labels[order], factors > 1.5


def source_signal(rec: Record) -> np.ndarray:
    """The record's leads, band-passed as the models do, ``(n, leads)``: what the rhythms are cut from."""
    return np.stack([bandpass()(s, rec.fs)[0] for s in [rec.signal, *rec.others.values()]], 1)


def _as_record(rec: Record, y: np.ndarray, kind: str) -> Record:
    return Record(signal=y[:, 0], fs=rec.fs, lead=rec.lead, name=f"{rec.name}-{kind}", path=rec.path,
                  units=rec.units, others={name: y[:, k + 1] for k, name in enumerate(rec.others)})


def synthetic_record(rec: Record, peaks, labels, kind: str, n_beats: int, rng,
                     x: np.ndarray | None = None) -> tuple[Record, np.ndarray, np.ndarray]:
    """A :class:`Record` (both leads) of the ``kind`` rhythm, with its R peaks and AAMI labels.

    ``x``: the record's :func:`source_signal`, when the caller already has it.
    """
    x = source_signal(rec) if x is None else x
    order, out_peaks, out_labels = compose(peaks, labels, rec.fs, kind, n_beats, rng)
    return _rebuild(rec, x, peaks, order, out_peaks, kind), out_peaks, out_labels


def block_record(rec: Record, peaks, labels, n_beats: int, rng,
                 x: np.ndarray | None = None, blocked_p: bool = False) -> tuple[Record, np.ndarray, np.ndarray]:
    """A :class:`Record` of :func:`compose_block`'s 2:1 block rhythm, its R peaks and its ``blocked`` mask.

    ``blocked_p``: draw each blocked P wave, half way through its 2:1 interval (see :func:`draw_blocked_p`).
    """
    x = source_signal(rec) if x is None else x
    order, out_peaks, _, blocked = compose_block(peaks, labels, rec.fs, n_beats, rng)
    r = _rebuild(rec, x, peaks, order, out_peaks, "block")
    if blocked_p:
        r = draw_blocked_p(r, x, peaks, order, out_peaks, blocked)
    return r, out_peaks, blocked


#: The P segment :func:`draw_blocked_p` copies: from this long before a beat's R (where training's
#: ``hide_next_beat`` takes the next beat's P wave to start) ...
P_FROM_S = P_ONSET_S
#: ... to this long before it (the P wave, no QRS).
P_TO_S = 0.10


def draw_blocked_p(rec: Record, x: np.ndarray, peaks, order, out_peaks, blocked) -> Record:
    """The block rhythm with its blocked P waves drawn (every lead).

    In 2:1 AV block the atria beat twice per interval: the conducted beat's own P wave sits before
    its QRS, and the blocked one a half interval earlier (the P-P interval is half the R-R one).
    Each beat ending a 2:1 interval lends a copy of its own recorded P segment (``P_FROM_S`` to
    ``P_TO_S`` before its R, both ends brought to zero by removing the straight line between them,
    so only the wave is added), placed a half interval before its own and added to the bridged gap.
    """
    fs = rec.fs
    a, b = int(round(P_FROM_S * fs)), int(round(P_TO_S * fs))
    y = np.stack([rec.signal, *rec.others.values()], 1).copy()
    ramp = np.linspace(0.0, 1.0, a - b)[:, None]
    for i in np.flatnonzero(blocked):
        if i == 0:
            continue
        src = int(peaks[order[i]])
        if src - a < 0:
            continue
        seg = x[src - a:src - b]
        seg = seg - (seg[:1] + ramp * (seg[-1:] - seg[:1]))
        t0 = int(out_peaks[i]) - a - int(round((out_peaks[i] - out_peaks[i - 1]) / 2))
        if t0 >= 0:
            y[t0:t0 + a - b] += seg
    return dataclasses.replace(rec, signal=y[:, 0], others={name: y[:, k + 1] for k, name in enumerate(rec.others)})


def _rebuild(rec: Record, x: np.ndarray, peaks, order, out_peaks, kind: str) -> Record:
    n_out = int(out_peaks[-1] + 2 * rec.fs)
    return _as_record(rec, resequence(x, peaks, order, out_peaks, n_out, fade=int(round(0.01 * rec.fs))), kind)


def rebuilt(rec: Record, peaks, x: np.ndarray | None = None) -> Record:
    """The record passed through :func:`synthetic_record`'s construction in its own order and timing."""
    x = source_signal(rec) if x is None else x
    peaks = np.asarray(peaks, np.int64)
    y = resequence(x, peaks, np.arange(peaks.size), peaks, len(x), fade=int(round(0.01 * rec.fs)))
    return _as_record(rec, y, "identity")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="--out directories of `ecgkit evaluate --protocol kfold` runs over DS1")
    ap.add_argument("--model", action="append", default=[],
                    help="score with this model (name or file) on every record instead of held-out fold models; "
                         "a model trained on DS1 has seen these patients, so this only calibrates the check")
    ap.add_argument("--data", default=None)
    ap.add_argument("--beats", type=int, default=1800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", action="store_true",
                    help="also rebuild every record with >= 100 N beats as sinus rhythm with stretches of "
                         "2:1 AV block (all N) and print the share of N beats called S")
    ap.add_argument("--blocked-p", action="store_true",
                    help="with --block: draw the blocked P waves, a copy of each conducted beat's own P wave half "
                         "way through its 2:1 interval (models whose window reaches it can see the block)")
    ap.add_argument("--record-rr-stat", default=None, metavar="STAT",
                    help="score every model with this record RR reference (mean, median, atrial) instead of its "
                         "own: an inference-time probe, weights unchanged")
    ap.add_argument("--local-rr-stat", default=None, metavar="STAT",
                    help="likewise for the local RR mean (mean, atrial)")
    ap.add_argument("--interval-rr-stat", default=None, metavar="STAT",
                    help="likewise for the pre- and post-RR (raw, atrial)")
    ap.add_argument("--blocked-p-min-run", type=int, default=None, metavar="N",
                    help="likewise for the run of consecutive intervals a blocked P wave is counted in")
    ap.add_argument("--ventricular-neighbours", type=int, default=0, metavar="K",
                    help="share each beat's V evidence with its K look-alike beats, on the ensemble's mean "
                         "(ecgkit.inference.share_ventricular_evidence; default 0: the networks' own output)")
    ap.add_argument("--compose", action="append", default=[], metavar="RECIPE:K,...",
                    help="also score every ensemble drawing K runs of each recipe (as in ensemble_cv.py); repeatable")
    ap.add_argument("--tta", default=None, metavar="shift:S|gain:G",
                    help="average each network over input variants, as in ensemble_cv.py (an inference-time probe)")
    add_record_prior_args(ap)   # each (synthetic) record re-weighted to its own class prior, as in ensemble_cv.py
    args = ap.parse_args(argv)
    tta = tta_variants(args.tta)
    check_ventricular_neighbours(args)
    if args.record_prior is not None and (args.model or args.compose or len(tta) > 1):
        raise SystemExit("Error: --record-prior takes kfold run directories, without --model, --compose or --tta")
    priors = SourcePriors(args.data)

    if bool(args.runs) == bool(args.model):
        raise SystemExit("Error: give kfold run directories or --model, not both or neither")
    if args.model:
        from ecgkit.datasets.mitdb import split_records

        ds1 = split_records("DS1")
        maps = [dict.fromkeys(ds1, m) for m in args.model]
        args.runs = args.model
    else:
        maps = [held_out_models(r) for r in args.runs]
    specs = [(spec, compositions(args.runs, spec)) for spec in args.compose]
    records = sorted(set(maps[0]).intersection(*maps[1:]))
    s_idx = AAMI_CLASSES.index("S")
    paths = dict(zip(records, resolve_records(records, args.data)))
    models: dict[str, tuple] = {}
    kinds = ("real", "sparse", "majority")
    tallies = {k: {} for k in kinds + ("identity",)}  # kind -> record -> (y, pred ensemble, [log-probs per run])
    blocks = {}  # record -> (blocked mask, real N->S share, pred ensemble, [log-probs per run]) of the block rhythm

    def classify(rec_name, r, p):
        lps = []
        for m in maps:
            if m[rec_name] not in models:
                models[m[rec_name]] = with_record_rr_stat(load_any_model(m[rec_name]), args.record_rr_stat,
                                                                 args.local_rr_stat, args.interval_rr_stat,
                                                                 args.blocked_p_min_run)
            model, spec, _ = models[m[rec_name]]
            lps.append(tta_log_proba(model, r, p, spec, tta))
        if args.record_prior is not None:
            cks = [m[rec_name] for m in maps]
            ens = record_prior_em(np.mean(lps, 0), priors.log_prior(cks), args.record_prior, args.prior_pseudo,
                                  min_src=args.prior_min_src)[0]
            lps = [record_prior_em(lp, priors.log_prior((ck,)), args.record_prior, args.prior_pseudo,
                                   min_src=args.prior_min_src)[0]
                   for lp, ck in zip(lps, cks)]
            return ens.argmax(1), lps
        ens = np.mean(lps, 0)
        if args.ventricular_neighbours:
            spec0 = models[maps[0][rec_name]][1]
            ens = share_ventricular_evidence(ens, prepare_record(r, p, spec0)["W"], spec0, args.ventricular_neighbours)
        return ens.argmax(1), lps

    for rec_name in records:
        peaks, cls = reference_beats(*read_annotations(paths[rec_name], "atr"))
        labels = np.array(AAMI_CLASSES)[cls]
        if not args.block and (labels == "S").sum() < MIN_S:
            continue
        rec = read_record(paths[rec_name])
        x = source_signal(rec)
        n = labels == "N"
        with_s = (labels == "S").sum() >= MIN_S
        real = classify(rec_name, rec, peaks)
        if args.block and n.sum() >= 100:  # its own draws: adding it changes no other rhythm's draw
            r, p, blocked = block_record(rec, peaks, labels, args.beats,
                                         np.random.default_rng([args.seed, int(rec_name), 2]), x,
                                         blocked_p=args.blocked_p)
            blocks[rec_name] = (blocked, 100 * np.mean(real[0][n] == s_idx), *classify(rec_name, r, p))
        if not with_s:
            continue
        rng = np.random.default_rng([args.seed, int(rec_name)])
        tallies["real"][rec_name] = (labels, *real)
        for kind in ("identity", "sparse", "majority"):
            if kind == "identity":
                r, p, y = rebuilt(rec, peaks, x), peaks, labels
            else:
                r, p, y = synthetic_record(rec, peaks, labels, kind, args.beats, rng, x)
            tallies[kind][rec_name] = (y, *classify(rec_name, r, p))

    def cell(y, pred):
        s, nn, v = y == "S", y == "N", y == "V"
        f = lambda m: f"{100 * np.mean(pred[m] == s_idx):.1f}" if m.any() else "—"  # noqa: E731
        return f"{f(s)} | {f(nn)} | {f(v)}"

    who = ("by the given model(s), which may have seen the patient (calibration only)" if args.model else
           "by the fold models that held its patient out")
    print(f"{len(tallies['real'])} DS1 records with >= {MIN_S} S beats; each scored {who} "
          f"({len(args.runs)} run(s), ensemble = mean log-probability).\n")
    head = " | ".join(f"{k}: S found | N->S | V->S" for k in kinds)
    print(f"| record | {head} |")
    print("|---" * (1 + 3 * len(kinds)) + "|")
    for rec_name in tallies["real"]:
        cells = " | ".join(cell(*tallies[k][rec_name][:2]) for k in kinds)
        n_s = {k: int((tallies[k][rec_name][0] == 'S').sum()) for k in kinds}
        print(f"| {rec_name} (S: {n_s['real']} / {n_s['sparse']} / {n_s['majority']}) | {cells} |")

    def pooled(kind, which=None):
        ys = np.concatenate([t[0] for t in tallies[kind].values()])
        ps = np.concatenate([t[1] if which is None else t[2][which].argmax(1) for t in tallies[kind].values()])
        return cell(ys, ps)

    agree = np.mean(np.concatenate([tallies["identity"][r][1] == tallies["real"][r][1] for r in tallies["real"]]))
    print(f"| **pooled, ensemble** | {' | '.join(pooled(k) for k in kinds)} |")
    if len(args.runs) > 1:
        for i, run in enumerate(args.runs):
            print(f"| pooled, {Path(run).name} | {' | '.join(pooled(k, i) for k in kinds)} |")
    if blocks:
        print(f"\n2:1 block rhythm ({args.beats} beats per record, all N): share of N beats called S, "
              "in the record as recorded and in the rebuilt rhythm (1:1 beats / beats after a 2:1 interval).\n")
        print("| record | real: N->S | block: N->S | after 1:1 | after 2:1 |")
        print("|---|---|---|---|---|")

        def bcell(blocked, pred):
            s = pred == s_idx
            return f"{100 * s.mean():.1f} | {100 * s[~blocked].mean():.1f} | {100 * s[blocked].mean():.1f}"

        for rec_name, (blocked, real_ns, pred, _) in blocks.items():
            print(f"| {rec_name} | {real_ns:.1f} | {bcell(blocked, pred)} |")
        bl = np.concatenate([b[0] for b in blocks.values()])
        print(f"| **pooled, ensemble** | | {bcell(bl, np.concatenate([b[2] for b in blocks.values()]))} |")
        if len(args.runs) > 1:
            for i, run in enumerate(args.runs):
                pr = np.concatenate([b[3][i].argmax(1) for b in blocks.values()])
                print(f"| pooled, {Path(run).name} | | {bcell(bl, pr)} |")

    def found(kind, c):
        ys = np.concatenate([t[0] for t in tallies[kind].values()])
        ps = np.concatenate([np.mean([t[2][i] for i in c], 0).argmax(1) for t in tallies[kind].values()])
        return 100 * np.mean(ps[ys == "S"] == s_idx)

    for spec, comps in specs:
        print(f"\nEnsembles drawing {spec} ({len(comps)} compositions): pooled S found (real / sparse "
              f"/ majority){' and the block rhythm: N->S (1:1 beats)' if blocks else ''}.\n")
        print("| members | real | sparse | majority |" + (" block N->S (1:1) |" if blocks else ""))
        print("|---|---|---|---|" + ("---|" if blocks else ""))

        figs = []
        for c in comps:
            f = [found(k, c) for k in kinds]
            if blocks:
                pr = np.concatenate([np.mean([b[3][i] for i in c], 0).argmax(1) for b in blocks.values()]) == s_idx
                f += [100 * pr.mean(), 100 * pr[~bl].mean()]
            figs.append(f)
            cells = " | ".join(f"{v:.1f}" for v in f[:3]) + (f" | {f[3]:.1f} ({f[4]:.1f})" if blocks else "")
            print(f"| {' + '.join(Path(args.runs[i]).name for i in c)} | {cells} |")
        m = np.mean(figs, 0)
        cells = " | ".join(f"{v:.1f}" for v in m[:3]) + (f" | {m[3]:.1f} ({m[4]:.1f})" if blocks else "")
        print(f"| **mean of {len(comps)} compositions** | {cells} |")
    print(f"\nRebuilt in its own order and timing, the records keep the ensemble's class for {100 * agree:.2f} % "
          f"of their beats (the cost of building records this way).")


if __name__ == "__main__":
    main()
