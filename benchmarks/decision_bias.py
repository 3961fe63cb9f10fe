"""Choose a class decision bias on DS1 cross-validation, and estimate honestly what it buys.

    ecgkit evaluate --protocol kfold --split DS1 --folds 4 --fold-seed 0 --config CONFIG --out RUN   # per seed
    python benchmarks/decision_bias.py RUN1 RUN2 RUN3 [--data DIR] [--grid=-3:1:0.1] [--class S] [--metric sveb_f1]

The ensemble's decision is ``argmax(log p + b * [class == C])``: a log-prior offset ``b`` on one
class ``C`` (default S, the supraventricular class; ``b < 0`` calls it less often), chosen for
the best ``--metric`` (SVEB F1 by default, or jk). The held-out predictions of the runs
(each record scored by the fold models that never saw its patient; ensemble = mean
log-probability, as ``ecgkit.ensemble`` does) give:

* ``b = 0``: the ensemble as trained;
* cross-fitted: for each fold, ``b`` chosen (best metric on the grid; ties -> nearest 0)
  on the *other* folds' patients and applied to this fold's: an unbiased estimate of the gain;
* all folds: the ``b`` chosen on every DS1 patient, the value a shipped model would carry
  (its in-sample figures are optimistic and printed only for reference).

DS1 only: a selection tool, it never touches the test split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ensemble_cv import decide, held_out_log_probs, report_row  # noqa: E402

from ecgkit.datasets.mitdb import AAMI_CLASSES as CLASSES  # noqa: E402  (the models' output order)
from ecgkit.metrics import ec57_report  # noqa: E402


def biased(lp: np.ndarray, b: float, cls: str = "S") -> np.ndarray:
    out = lp.copy()
    out[:, CLASSES.index(cls)] += b
    return out


def score(y, lp, rec, b, cls: str = "S", metric: str = "sveb_f1") -> float:
    rep = ec57_report(y, decide(biased(lp, b, cls)), rec)
    value = rep["gross"]["S"]["F1"] if metric == "sveb_f1" else rep["jk"]
    return -1.0 if np.isnan(value) else value


def choose(y, lp, rec, grid, cls: str = "S", metric: str = "sveb_f1") -> float:
    """The grid value with the best ``metric``; ties go to the value nearest 0."""
    scores = [(round(score(y, lp, rec, b, cls, metric), 12), -abs(b), b) for b in grid]
    return max(scores)[2]


def parse_grid(text: str) -> np.ndarray:
    lo, hi, step = (float(v) for v in text.split(":"))
    return np.round(np.arange(lo, hi + step / 2, step), 6)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="--out directories of `ecgkit evaluate --protocol kfold` runs")
    ap.add_argument("--data", default=None)
    ap.add_argument("--checkpoint", default="best.pt")
    ap.add_argument("--grid", default="-3:1:0.1", help="LO:HI:STEP of the log-prior offsets tried (write --grid=-3:1:0.1)")
    ap.add_argument("--class", dest="cls", choices=list(CLASSES), default="S", help="class whose log-prior is offset")
    ap.add_argument("--metric", choices=["sveb_f1", "jk"], default="sveb_f1", help="what the offset is chosen for")
    args = ap.parse_args(argv)

    grid = parse_grid(args.grid)
    y, rec, fold, each = held_out_log_probs(args.runs, args.data, args.checkpoint)
    lp = np.mean(each, axis=0)
    crossed = lp.copy()
    chosen = {}
    for f in sorted(set(fold)):
        inside = fold == f
        chosen[f] = choose(y[~inside], lp[~inside], rec[~inside], grid, args.cls, args.metric)
        crossed[inside] = biased(lp[inside], chosen[f], args.cls)
    b_all = choose(y, lp, rec, grid, args.cls, args.metric)

    print(f"{len(set(rec))} records, {y.size:,} beats, ensemble of {len(each)} runs; offset on {args.cls}, "
          f"chosen for {args.metric}, grid {args.grid}.\n")
    print("| decision | acc | SVEB Se / +P / F1 | VEB Se / +P / F1 | jk |")
    print("|---|---|---|---|---|")
    print(report_row("b = 0 (as trained)", ec57_report(y, decide(lp), rec)))
    bs = ", ".join(f"{chosen[f]:+.1f}" for f in sorted(chosen))
    print(report_row(f"cross-fitted (b per fold: {bs})", ec57_report(y, decide(crossed), rec)))
    print(report_row(f"b = {b_all:+.1f}, chosen on all folds (in-sample)",
                     ec57_report(y, decide(biased(lp, b_all, args.cls)), rec)))
    print(f"\nchosen on all DS1 folds: b = {b_all:+.1f}")


if __name__ == "__main__":
    main()
