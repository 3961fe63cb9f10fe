"""Would a seed ensemble help? Pool the held-out predictions of several DS1 cross-validation runs.

    ecgkit evaluate --protocol kfold --split DS1 --folds 4 --config CONFIG --out RUN   # once per seed
    python benchmarks/ensemble_cv.py RUN1 RUN2 [RUN3 ...] [--data DIR] [--markdown] [--checkpoint last.pt] [--adapt-bn]

Each RUN is the ``--out`` directory of one ``ecgkit evaluate --protocol kfold`` run (its
``kfold/fold*/best.pt`` checkpoints record which patients each fold held out). Every
record is classified by, in each run, the fold model that never saw that patient; the
ensemble averages those models' per-beat log-probabilities. Prints each run's pooled EC57
figures (which reproduce that run's ``report.json``) and the ensemble's. DS1 only: this is
a selection tool, it never touches the test split.

``--adapt-bn`` re-estimates every BatchNorm's statistics on each record's own beats before
classifying it (AdaBN, unsupervised adaptation to the test patient; tried and not adopted,
see docs/experiments.md).

``--checkpoint last.pt`` scores each fold's raw last-epoch weights instead of ``best.pt``:
with ``train.ema`` and ``data.val: []``, ``best.pt`` is the weight average of the last
epoch and ``last.pt`` the raw weights of the same training run, so one set of runs
measures both.

``--compose ema:2,block_abs_rate:1`` (repeatable) scores every ensemble that draws that many runs of each
recipe (a run's recipe is its directory name without a trailing ``_s<seed>``: ``runs/ema_s0``
is ``ema``), one row each, and the mean of each figure over those compositions: how a mixed
ensemble does whichever seeds it gets. ``--per-record`` adds the ensemble's per-record counts
(S beats found, false S from N and from V beats, V beats found, false V).

``--segmenter pan-tompkins`` classifies the detector's beats instead of the reference beats, as
``ecgkit evaluate --segmenter pan-tompkins`` does on the test split: the held-out end-to-end figures
(reference beats the detector missed count as errors of their class).

``--ventricular-neighbours K`` (twenty-sixth release: ``examples/ablations/ventricular_neighbours.md``)
applies :func:`ecgkit.inference.share_ventricular_evidence` to the ensemble's mean log-probabilities
over each record's beats, as a checkpoint whose contract names it does; the per-run rows stay the
networks' own output. Off by default: the fold models' figures are the networks'.

``--save-calls FILE.npz`` writes the ensemble's class per reference beat (-2: not detected), and
``--compare A.npz B.npz`` (no runs) counts the beats detected in both whose class differs: run once
with each ``--segmenter``, how much the call depends on the segmenter that marked the beat
(twenty-seventh release, ``examples/ablations/recentring.md``).

``--record-prior POWER`` (twenty-fourth release, a probe: ``examples/ablations/record_prior.md``)
re-weights each record's posteriors to that record's own class prior, estimated from its
unlabelled beats by EM (Saerens et al. 2002), against the prior each ensemble was fitted to (its
mean posterior over its own training records, which this measures: about three times the
inference). ``--prior-pseudo BEATS`` shrinks the record's estimate towards that source prior.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ecgkit.checkpoint import read_checkpoint  # noqa: E402
from ecgkit.datasets import resolve_records  # noqa: E402
from ecgkit.datasets.mitdb import reference_beats  # noqa: E402
from ecgkit.evaluate import match_to_reference  # noqa: E402
from ecgkit.inference import (VENTRICULAR_NEIGHBOURS, predict_log_proba, prepare_record,  # noqa: E402
                              share_ventricular_evidence)
from ecgkit.io import read_annotations, read_record  # noqa: E402
from ecgkit.metrics import AAMI_CLASSES, MISSED, confusion_matrix, ec57_report  # noqa: E402
from ecgkit.models import load_any_model  # noqa: E402
from ecgkit.registry import create  # noqa: E402
from ecgkit.segment import detect_beats  # noqa: E402


def held_out_models(run: str, checkpoint: str = "best.pt") -> dict[str, str]:
    """record name -> checkpoint of the fold that held it out, for one kfold run directory."""
    out = {}
    for ck in sorted(glob.glob(str(Path(run) / "kfold" / "fold*" / checkpoint))):
        for rec in json.loads(read_checkpoint(ck)["config"])["data"]["test"]:
            out[rec] = ck
    if not out:
        raise SystemExit(f"Error: {run} holds no kfold/fold*/{checkpoint} (not an `evaluate --protocol kfold --out` directory)")
    return out


def report_row(name: str, rep: dict) -> str:
    """One markdown row of an EC57 report: accuracy, SVEB and VEB Se / +P / F1, jk."""
    return figures_row(name, report_figures(rep))


def run_group(run: str) -> str:
    """A run's recipe: its directory name without a trailing ``_s<seed>`` (``runs/ema_s0`` -> ``ema``)."""
    return re.sub(r"_s\d+$", "", Path(run).name)


def compositions(runs: list[str], spec: str) -> list[tuple[int, ...]]:
    """Indices into ``runs`` of every ensemble drawing ``k`` runs of each recipe, for ``spec`` ``"ema:2,b:1"``."""
    want = {}
    for part in spec.split(","):
        name, _, k = part.strip().partition(":")
        if not name or not k.isdigit() or int(k) < 1:
            raise SystemExit(f"Error: --compose takes RECIPE:K[,RECIPE:K...] with K >= 1, got {part.strip()!r}")
        want[name] = int(k)
    groups = {g: [i for i, r in enumerate(runs) if run_group(r) == g] for g in want}
    for g, k in want.items():
        if len(groups[g]) < k:
            have = sorted({run_group(r) for r in runs})
            raise SystemExit(f"Error: --compose asks for {k} run(s) of {g!r}, the runs hold {len(groups[g])} "
                             f"(recipes given: {', '.join(have)})")
    picks = itertools.product(*(itertools.combinations(groups[g], k) for g, k in want.items()))
    return [tuple(sorted(itertools.chain(*p))) for p in picks]


def report_figures(rep: dict) -> np.ndarray:
    """The figures of :func:`report_row` as numbers (percent; jk as is), for averaging reports."""
    g = rep["gross"]
    return np.array([100 * rep["accuracy"]] + [100 * g[c][m] for c in "SV" for m in ("Se", "+P", "F1")]
                    + [rep["jk"]])


def figures_row(name: str, f: np.ndarray) -> str:
    """:func:`report_row` of averaged :func:`report_figures`."""
    return (f"| {name} | {f[0]:.1f} | {f[1]:.1f} / {f[2]:.1f} / {f[3]:.1f} | "
            f"{f[4]:.1f} / {f[5]:.1f} / {f[6]:.1f} | {f[7]:.3f} |")


def per_record_table(y: np.ndarray, pred: np.ndarray, records: np.ndarray) -> list[str]:
    """Markdown rows: per record, S beats found, false S (N and V beats called S), V found, false V."""
    S, V, N = (AAMI_CLASSES.index(c) for c in "SVN")
    out = ["| record | beats | S found | false S (from N / V) | V found | false V |", "|---|---|---|---|---|---|"]
    for rec in sorted(set(records)):
        cm = confusion_matrix(y[records == rec], pred[records == rec])
        out.append(f"| {rec} | {cm.sum()} | {cm[S, S]} of {cm[S].sum()} | {cm[:, S].sum() - cm[S, S]} "
                   f"({cm[N, S]} / {cm[V, S]}) | {cm[V, V]} of {cm[V].sum()} | {cm[:, V].sum() - cm[V, V]} |")
    return out


def adapt_batchnorm(model, prep: dict, spec: dict):
    """A copy of ``model`` whose BatchNorm statistics are those of this record's beats (AdaBN).

    The record's beats are fed once, in consecutive sequences of the model's length, with only
    the BatchNorm layers in training mode (cumulative average over the sequences); no labels.
    """
    import copy

    import torch

    from ecgkit.inference import record_inputs

    m = copy.deepcopy(model).eval()
    bns = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    X, rr = record_inputs(prep, spec)
    n = len(rr)
    T = min(spec.get("seq_len", 64), n)
    with torch.no_grad():
        for s in range(0, n - T + 1, T):
            m(X[s:s + T][None], rr[s:s + T][None])
    return m.eval()


def tta_variants(spec: str | None) -> list[tuple[int, float]]:
    """``--tta`` -> the ``(shift, gain)`` inputs each network's log-probabilities are averaged over.

    ``None``: ``[(0, 1.0)]``, the input as it is. ``shift:S``: the beat windows cut ``S`` model
    samples early, centred and late (``-S, 0, +S``); ``gain:G``: the signal scaled by ``1/G, 1, G``.
    """
    if spec is None:
        return [(0, 1.0)]
    kind, _, value = spec.partition(":")
    try:
        v = float(value)
    except ValueError:
        raise SystemExit(f"Error: --tta must be shift:SAMPLES or gain:FACTOR, got {spec!r}") from None
    if kind == "shift" and v == int(v) and v > 0:
        return [(-int(v), 1.0), (0, 1.0), (int(v), 1.0)]
    if kind == "gain" and v > 1:
        return [(0, 1 / v), (0, 1.0), (0, v)]
    raise SystemExit(f"Error: --tta must be shift:SAMPLES (a positive integer) or gain:FACTOR (> 1), got {spec!r}")


def tta_log_proba(model, record, peaks: np.ndarray, spec: dict, variants=((0, 1.0),)) -> np.ndarray:
    """Mean log-probability per beat over the ``(shift, gain)`` input variants (:func:`tta_variants`).

    A shift moves every window's cut by that many model samples (the peaks by the same time, so
    the RR features are the same); a gain scales the windows and the median beat.
    """
    out = []
    for shift, gain in variants:
        prep = prepare_record(record, np.asarray(peaks) + shift * record.fs / spec["fs_hz"], spec)
        if gain != 1.0:
            prep = {k: (v * np.float32(gain) if k in ("W", "med", "W2", "med2") else v) for k, v in prep.items()}
        out.append(predict_log_proba(model, prep, spec, postprocess=False))
    return out[0] if len(out) == 1 else np.mean(out, axis=0)


def held_out_log_probs(runs: list[str], data=None, checkpoint: str = "best.pt", adapt_bn: bool = False,
                       record_rr_stat: str | None = None, local_rr_stat: str | None = None,
                       interval_rr_stat: str | None = None, blocked_p_min_run: int | None = None,
                       tta=((0, 1.0),), segmenter: str = "reference", neighbours: int | None = None,
                       ensemble_out: list | None = None):
    """Per reference beat of every record the runs all held out: ``(y, record, fold, [log-probs per run])``.

    ``record_rr_stat``: build every model's RR features with this record reference instead of
    the one in its input contract (an inference-time probe; the weights are unchanged);
    ``local_rr_stat`` and ``interval_rr_stat`` likewise for the local mean and the pre- and post-RR,
    ``blocked_p_min_run`` for the run of blocked P waves the atrial stats count them in.

    Each record is classified, in each run, by the fold model that never saw its patient (as
    ``evaluate.classify_records`` with the reference segmenter); ``fold`` is the fold directory of
    the first run that held it out. Reference beats without a detection get a row of NaN.

    Each network's own output is returned (no inference-time step). ``ensemble_out``: a list that
    receives, per record, the runs' mean log-probabilities after
    :func:`ecgkit.inference.share_ventricular_evidence` with ``neighbours`` look-alike beats (0: off;
    None: the first model's contract), applied over all the record's detected beats as
    ``predict_log_proba`` does for a shipped ensemble.
    """
    maps = [held_out_models(r, checkpoint) for r in runs]
    records = sorted(set(maps[0]).intersection(*maps[1:]))
    paths = dict(zip(records, resolve_records(records, data)))
    cache: dict[str, tuple] = {}
    detector = create("segmenters", segmenter)
    ys, rs, fs, each = [], [], [], [[] for _ in maps]
    for rec in records:
        r = read_record(paths[rec])
        ref_samples, labels = reference_beats(*read_annotations(r.path, "atr"))
        peaks = detect_beats(detector, r)
        idx = match_to_reference(ref_samples, peaks, np.arange(peaks.size), int(round(0.15 * r.fs)))[0]
        lps = []
        for i, m in enumerate(maps):
            if m[rec] not in cache:
                cache[m[rec]] = with_record_rr_stat(load_any_model(m[rec]), record_rr_stat, local_rr_stat,
                                                    interval_rr_stat, blocked_p_min_run)
            model, spec, _ = cache[m[rec]]
            if adapt_bn:
                prep = prepare_record(r, peaks, spec)
                lp = predict_log_proba(adapt_batchnorm(model, prep, spec), prep, spec, postprocess=False)
            else:
                lp = tta_log_proba(model, r, peaks, spec, tta)
            lps.append(lp)
            each[i].append(on_reference_beats(lp, idx))
        if ensemble_out is not None:
            spec = cache[maps[0][rec]][1]
            k = spec.get(VENTRICULAR_NEIGHBOURS, 0) if neighbours is None else neighbours
            lp = np.mean(lps, 0)
            if k:  # the windows only where the step runs (prepare_record also runs the blocked-P search)
                lp = share_ventricular_evidence(lp, prepare_record(r, peaks, spec)["W"], spec, k)
            ensemble_out.append(on_reference_beats(lp, idx))
        ys.append(labels)
        rs.append(np.full(labels.size, rec))
        fs.append(np.full(labels.size, Path(maps[0][rec]).parent.name))
    return np.concatenate(ys), np.concatenate(rs), np.concatenate(fs), [np.concatenate(e) for e in each]


def on_reference_beats(lp: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-detection rows ``lp`` as rows of the reference beats: ``idx`` their detection, -1 (NaN row) if none."""
    out = np.full((idx.size, lp.shape[1]), np.nan)
    out[idx >= 0] = lp[idx[idx >= 0]]
    return out


def check_ventricular_neighbours(args) -> None:
    """Refuse a negative ``--ventricular-neighbours``, or one given with ``--compose`` / ``--record-prior``."""
    if args.ventricular_neighbours < 0:
        raise SystemExit("Error: --ventricular-neighbours must be >= 0")
    if args.ventricular_neighbours and (args.compose or args.record_prior is not None):
        raise SystemExit("Error: --ventricular-neighbours acts on the whole ensemble's mean; give it without "
                         "--compose or --record-prior")


def with_record_rr_stat(loaded: tuple, stat: str | None, local: str | None = None,
                        interval: str | None = None, min_run: int | None = None) -> tuple:
    """``load_any_model``'s ``(model, spec, meta)`` with ``spec["record_rr_stat"]`` set to ``stat``,
    ``spec["local_rr_stat"]`` to ``local``, ``spec["interval_rr_stat"]`` to ``interval`` and
    ``spec["blocked_p_min_run"]`` to ``min_run`` (None: as is)."""
    if stat is None and local is None and interval is None and min_run is None:
        return loaded
    from ecgkit.segment import INTERVAL_RR_STATS, LOCAL_RR_STATS, RECORD_RR_STATS

    if stat is not None and stat not in RECORD_RR_STATS:
        raise SystemExit(f"Error: --record-rr-stat must be one of {', '.join(RECORD_RR_STATS)}, got {stat!r}")
    if local is not None and local not in LOCAL_RR_STATS:
        raise SystemExit(f"Error: --local-rr-stat must be one of {', '.join(LOCAL_RR_STATS)}, got {local!r}")
    if interval is not None and interval not in INTERVAL_RR_STATS:
        raise SystemExit(f"Error: --interval-rr-stat must be one of {', '.join(INTERVAL_RR_STATS)}, got {interval!r}")
    model, spec, meta = loaded
    new = {k: v for k, v in (("record_rr_stat", stat), ("local_rr_stat", local), ("interval_rr_stat", interval),
                             ("blocked_p_min_run", min_run)) if v is not None}
    spec = {**spec, **new}
    from ecgkit.errors import ConfigError
    from ecgkit.inference import check_channels

    try:
        check_channels(spec)
    except ConfigError as e:
        raise SystemExit(f"Error: {e}") from None
    return model, spec, meta


def normalise(log_probs: np.ndarray) -> np.ndarray:
    """Rows of (mean) log-probabilities renormalised to log-posteriors (NaN rows stay NaN)."""
    from scipy.special import logsumexp

    return log_probs - logsumexp(log_probs, axis=1, keepdims=True)


def record_prior_em(log_probs: np.ndarray, log_src: np.ndarray, power: float = 1.0, pseudo: float = 0.0,
                    rounds: int = 100, tol: float = 1e-6, min_src: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One record's log-posteriors re-weighted to its own class prior, estimated by EM (Saerens 2002).

    ``log_probs`` (n, C): the classifier's (mean) log-probabilities of the record's beats, NaN rows
    for missed beats; ``log_src`` (C,): the log class prior the classifier was fitted to. Each round
    sets ``q'(c|x) ∝ q(c|x) (pi(c) / pi_src(c)) ** power`` and ``pi`` to the mean of ``q'`` over the
    beats, shrunk towards ``pi_src`` by ``pseudo`` beats' worth; returns ``(log q', pi)``. A class
    whose source prior is under ``min_src`` keeps it (EM runs away to a class with almost no
    evidence); the others share the rest in proportion to their estimates.
    """
    ok = ~np.isnan(log_probs).all(1)
    z = normalise(log_probs[ok])
    src = np.exp(log_src)
    held = src < min_src
    pi = src.copy()
    for _ in range(rounds):
        a = normalise(z + power * (np.log(np.maximum(pi, 1e-300)) - log_src))
        new = (np.exp(a).sum(0) + pseudo * src) / (len(a) + pseudo)
        new[~held] *= (1 - src[held].sum()) / new[~held].sum()
        new[held] = src[held]
        done = np.abs(new - pi).max() < tol
        pi = new
        if done:
            break
    out = np.full(log_probs.shape, np.nan)
    out[ok] = normalise(z + power * (np.log(np.maximum(pi, 1e-300)) - log_src))
    return out, pi


class SourcePriors:
    """The class prior each fold model or ensemble was fitted to: its mean posterior over its own
    training records (reference beats), measured once per checkpoint and cached."""

    def __init__(self, data=None):
        self.data, self.lps = data, {}

    def training_log_probs(self, ck: str) -> np.ndarray:
        if ck not in self.lps:
            train = sorted(json.loads(read_checkpoint(ck)["config"])["data"]["train"])
            model, spec, _ = load_any_model(ck)
            detector = create("segmenters", "reference")
            out = []
            for path in resolve_records(train, self.data):
                r = read_record(path)
                out.append(predict_log_proba(model, prepare_record(r, detect_beats(detector, r), spec), spec))
            self.lps[ck] = np.concatenate(out)
        return self.lps[ck]

    def log_prior(self, cks) -> np.ndarray:
        """Log of the mean ensemble posterior of ``cks`` (checkpoints with the same training records)."""
        lps = [self.training_log_probs(ck) for ck in cks]
        if len({lp.shape for lp in lps}) > 1:
            raise SystemExit("Error: --record-prior needs ensemble members fitted to the same records")
        return np.log(np.exp(normalise(np.mean(lps, 0))).mean(0))


def adapt_by_record(log_probs: np.ndarray, records: np.ndarray, members: dict, priors: SourcePriors,
                    power: float, pseudo: float = 0.0, min_src: float = 0.0) -> np.ndarray:
    """:func:`record_prior_em` applied record by record; ``members``: record -> its checkpoints."""
    out = np.empty_like(log_probs)
    for rec in np.unique(records):
        sel = records == rec
        out[sel] = record_prior_em(log_probs[sel], priors.log_prior(members[rec]), power, pseudo,
                                   min_src=min_src)[0]
    return out


def add_record_prior_args(ap: argparse.ArgumentParser) -> None:
    """The ``--record-prior`` probe's options (here and in ``rhythm_stress.py``)."""
    ap.add_argument("--record-prior", type=float, default=None, metavar="POWER",
                    help="re-weight each record's posteriors to its own class prior, estimated by EM from its "
                         "unlabelled beats, at this strength (an inference-time probe)")
    ap.add_argument("--prior-pseudo", type=float, default=0.0, metavar="BEATS",
                    help="with --record-prior: shrink each record's prior towards the source prior by this many beats")
    ap.add_argument("--prior-min-src", type=float, default=0.0, metavar="P",
                    help="with --record-prior: a class whose source prior is under P keeps it")


def decide(log_probs: np.ndarray) -> np.ndarray:
    """Class per beat (argmax); a beat with no detection (NaN row) is ``MISSED``."""
    pred = np.nan_to_num(log_probs, nan=-np.inf).argmax(1)
    pred[np.isnan(log_probs).all(1)] = MISSED
    return pred


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="--out directories of `ecgkit evaluate --protocol kfold` runs")
    ap.add_argument("--data", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--checkpoint", default="best.pt",
                    help="file scored in each kfold/fold*/ (last.pt = raw weights of an EMA run)")
    ap.add_argument("--adapt-bn", action="store_true", help="re-estimate BatchNorm statistics per record (AdaBN)")
    ap.add_argument("--compose", action="append", default=[], metavar="RECIPE:K,...",
                    help="score every ensemble drawing K runs of each recipe (run directory name without _sN); "
                         "repeatable, one table each")
    ap.add_argument("--segmenter", default="reference",
                    help="beats to classify: the reference beats (default) or a detector's (pan-tompkins), "
                         "matched to the reference beats within 150 ms as `ecgkit evaluate --segmenter` does")
    ap.add_argument("--ventricular-neighbours", type=int, default=0, metavar="K",
                    help="share each beat's V evidence with its K look-alike beats in the record, on the ensemble's "
                         "mean (ecgkit.inference.share_ventricular_evidence; default 0: the networks' own output)")
    ap.add_argument("--per-record", action="store_true", help="also print the ensemble's per-record counts")
    ap.add_argument("--save-calls", default=None, metavar="FILE.npz",
                    help="write the ensemble's class per reference beat (-2: not detected)")
    ap.add_argument("--compare", nargs=2, default=None, metavar=("A.npz", "B.npz"),
                    help="count the beats detected in both --save-calls files whose class differs, and stop")
    ap.add_argument("--record-rr-stat", default=None, metavar="STAT",
                    help="score every model with this record RR reference (mean, median, atrial) instead of its "
                         "own: an inference-time probe, weights unchanged")
    ap.add_argument("--local-rr-stat", default=None, metavar="STAT",
                    help="likewise for the local RR mean (mean, atrial)")
    ap.add_argument("--interval-rr-stat", default=None, metavar="STAT",
                    help="likewise for the pre- and post-RR (raw, atrial)")
    ap.add_argument("--blocked-p-min-run", type=int, default=None, metavar="N",
                    help="likewise for the run of consecutive intervals a blocked P wave is counted in")
    ap.add_argument("--tta", default=None, metavar="shift:S|gain:G",
                    help="average each network over input variants: windows cut S model samples early, centred "
                         "and late, or the signal scaled by 1/G, 1, G (an inference-time probe)")
    add_record_prior_args(ap)
    args = ap.parse_args(argv)
    if args.compare:
        if args.runs:
            raise SystemExit("Error: --compare reads two --save-calls files; give it without runs")
        print(compare_calls(*args.compare))
        return
    if not args.runs:
        raise SystemExit("Error: give the runs to score (or --compare A.npz B.npz)")
    specs = [(spec, compositions(args.runs, spec)) for spec in args.compose]
    tta = tta_variants(args.tta)
    if args.adapt_bn and len(tta) > 1:
        raise SystemExit("Error: --adapt-bn and --tta are separate probes; give one")

    if args.record_prior is not None and (args.compose or args.adapt_bn or len(tta) > 1 or args.record_rr_stat
                                          or args.local_rr_stat or args.interval_rr_stat or args.blocked_p_min_run):
        raise SystemExit("Error: --record-prior is a probe of its own; give it without --compose, --adapt-bn, "
                         "--tta or the RR-stat options")
    check_ventricular_neighbours(args)
    ens = []
    y, rr, _, each = held_out_log_probs(args.runs, args.data, args.checkpoint, args.adapt_bn, args.record_rr_stat,
                                        args.local_rr_stat, args.interval_rr_stat, args.blocked_p_min_run, tta,
                                        args.segmenter, args.ventricular_neighbours, ens)
    mean_lp = np.concatenate(ens)
    if args.record_prior is not None:
        maps = [held_out_models(r, args.checkpoint) for r in args.runs]
        priors = SourcePriors(args.data)
        recs = np.unique(rr)
        each = [adapt_by_record(lp, rr, {r: (m[r],) for r in recs}, priors, args.record_prior, args.prior_pseudo,
                                args.prior_min_src) for lp, m in zip(each, maps)]
        mean_lp = adapt_by_record(mean_lp, rr, {r: tuple(m[r] for m in maps) for r in recs}, priors,
                                  args.record_prior, args.prior_pseudo, args.prior_min_src)

    def row(name, lp):
        return report_row(name, ec57_report(y, decide(lp), rr))

    print(f"{len(set(rr))} records, {y.size:,} beats; each scored only by models that held its patient out.\n")
    print("| run | acc | SVEB Se / +P / F1 | VEB Se / +P / F1 | jk |")
    print("|---|---|---|---|---|")
    for run, lp in zip(args.runs, each):
        print(row(Path(run).name, lp))
    print(row(f"**ensemble of {len(each)}** (mean log-probability)", mean_lp))
    for spec, comps in specs:
        print(f"\nEnsembles drawing {spec} ({len(comps)} compositions):\n")
        print("| members | acc | SVEB Se / +P / F1 | VEB Se / +P / F1 | jk |")
        print("|---|---|---|---|---|")
        figs = []
        for c in comps:
            rep = ec57_report(y, decide(np.mean([each[i] for i in c], axis=0)), rr)
            figs.append(report_figures(rep))
            print(report_row(" + ".join(Path(args.runs[i]).name for i in c), rep))
        print(figures_row(f"**mean of {len(comps)} compositions**", np.mean(figs, axis=0)))
    if args.per_record:
        print(f"\nPer record, ensemble of {len(each)}:\n")
        print("\n".join(per_record_table(y, decide(mean_lp), rr)))
    if args.save_calls:
        save_calls(args.save_calls, y, rr, decide(mean_lp))


def save_calls(path, y: np.ndarray, records: np.ndarray, pred: np.ndarray) -> None:
    """``y``, ``records`` and the ensemble's classes ``pred`` per reference beat, to ``path`` (.npz), whole or not at all."""
    from ecgkit.io import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, y=y, records=records.astype(str), pred=pred)

    atomic_write(path, write)


def compare_calls(a_path, b_path) -> str:
    """One line: the reference beats detected in both files whose class differs, how many turned S in B and left S
    in A, and the records with the most."""
    try:
        a, b = np.load(a_path), np.load(b_path)
        ya, yb, ra, rb, pa, pb = a["y"], b["y"], a["records"], b["records"], a["pred"], b["pred"]
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"Error: cannot read the --save-calls files: {e}") from None
    if ya.shape != yb.shape or not (np.array_equal(ya, yb) and np.array_equal(ra, rb)):
        raise SystemExit("Error: the two files hold different reference beats (other runs or records)")
    both = (pa != MISSED) & (pb != MISSED)
    d = both & (pa != pb)
    s = AAMI_CLASSES.index("S")
    recs, cnt = np.unique(ra[d], return_counts=True)
    top = ", ".join(f"{r} {c}" for r, c in sorted(zip(recs, cnt), key=lambda t: (-t[1], t[0]))[:8])
    return (f"{int(d.sum())} of {int(both.sum()):,} beats detected in both change class "
            f"(to S in B: {int((d & (pb == s)).sum())}, from S in A: {int((d & (pa == s)).sum())}); by record: {top or '-'}")


if __name__ == "__main__":
    main()
