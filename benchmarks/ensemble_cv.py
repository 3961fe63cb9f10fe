"""Would a seed ensemble help? Pool the held-out predictions of several DS1 cross-validation runs.

    ecgkit evaluate --protocol kfold --split DS1 --folds 4 --config CONFIG --out RUN   # once per seed
    python benchmarks/ensemble_cv.py RUN1 RUN2 [RUN3 ...] [--data DIR] [--markdown] [--checkpoint last.pt]

Each RUN is the ``--out`` directory of one ``ecgkit evaluate --protocol kfold`` run (its
``kfold/fold*/best.pt`` checkpoints record which patients each fold held out). Every
record is classified by, in each run, the fold model that never saw that patient; the
ensemble averages those models' per-beat log-probabilities. Prints each run's pooled EC57
figures (which reproduce that run's ``report.json``) and the ensemble's. DS1 only: this is
a selection tool, it never touches the test split.

``--checkpoint last.pt`` scores each fold's raw last-epoch weights instead of ``best.pt``:
with ``train.ema`` and ``data.val: []``, ``best.pt`` is the weight average of the last
epoch and ``last.pt`` the raw weights of the same training run, so one set of runs
measures both.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ecgkit.checkpoint import read_checkpoint  # noqa: E402
from ecgkit.datasets import resolve_records  # noqa: E402
from ecgkit.datasets.mitdb import reference_beats  # noqa: E402
from ecgkit.evaluate import match_to_reference  # noqa: E402
from ecgkit.inference import predict_log_proba, prepare_record  # noqa: E402
from ecgkit.io import read_annotations, read_record  # noqa: E402
from ecgkit.metrics import ec57_report  # noqa: E402
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
    g = rep["gross"]
    f = lambda c: f"{100 * g[c]['Se']:.1f} / {100 * g[c]['+P']:.1f} / {100 * g[c]['F1']:.1f}"  # noqa: E731
    return f"| {name} | {100 * rep['accuracy']:.1f} | {f('S')} | {f('V')} | {rep['jk']:.3f} |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="--out directories of `ecgkit evaluate --protocol kfold` runs")
    ap.add_argument("--data", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--checkpoint", default="best.pt",
                    help="file scored in each kfold/fold*/ (last.pt = raw weights of an EMA run)")
    args = ap.parse_args(argv)

    maps = [held_out_models(r, args.checkpoint) for r in args.runs]
    records = sorted(set(maps[0]).intersection(*maps[1:]))
    paths = dict(zip(records, resolve_records(records, args.data)))
    cache: dict[str, tuple] = {}
    detector = create("segmenters", "reference")
    ys, rs, each, ens = [], [], [[] for _ in maps], []
    for rec in records:  # as evaluate.classify_records with the reference segmenter, keeping log-probabilities
        r = read_record(paths[rec])
        ref_samples, labels = reference_beats(*read_annotations(r.path, "atr"))
        peaks = detect_beats(detector, r)
        tol = int(round(0.15 * r.fs))
        lps = []
        for i, m in enumerate(maps):
            if m[rec] not in cache:
                cache[m[rec]] = load_any_model(m[rec])
            model, spec, _ = cache[m[rec]]
            lp = predict_log_proba(model, prepare_record(r, peaks, spec), spec)
            lps.append(lp)
            each[i].append(match_to_reference(ref_samples, peaks, lp.argmax(1), tol)[0])
        ens.append(match_to_reference(ref_samples, peaks, np.mean(lps, axis=0).argmax(1), tol)[0])
        ys.append(labels)
        rs.append(np.full(labels.size, rec))
    y, rr = np.concatenate(ys), np.concatenate(rs)

    def row(name, pred):
        return report_row(name, ec57_report(y, np.concatenate(pred), rr))

    print(f"{len(records)} records, {y.size:,} beats; each scored only by models that held its patient out.\n")
    print("| run | acc | SVEB Se / +P / F1 | VEB Se / +P / F1 | jk |")
    print("|---|---|---|---|---|")
    for run, pred in zip(args.runs, each):
        print(row(Path(run).name, pred))
    print(row(f"**ensemble of {len(maps)}** (mean log-probability)", ens))


if __name__ == "__main__":
    main()
