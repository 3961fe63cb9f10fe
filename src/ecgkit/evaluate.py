"""Evaluation: the AAMI EC57 report of a model on a set of records.

With the ``reference`` segmenter the model classifies the reference beats (the
literature's protocol). With a detector (``pan-tompkins``) it runs end to end:
detected beats are matched to reference beats within 150 ms; reference beats the
detector missed count as errors of their class (column "missed"), and detections
with no reference beat are reported as extra detections.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .datasets import resolve_records
from .datasets.mitdb import AAMI_CLASSES, reference_beats
from .errors import ConfigError
from .inference import predict_log_proba, prepare_record
from .io import atomic_write, read_annotations, read_record
from .metrics import MISSED, ec57_report, summary_line
from .registry import create


def match_to_reference(ref_samples: np.ndarray, peaks: np.ndarray, pred: np.ndarray, tol: int):
    """Each reference beat takes the prediction of the nearest detection within ``tol`` samples.

    Reference beats with no detection that close get ``MISSED``. Returns ``(y_pred,
    extra_detections)``, the latter counting detections matched to no reference beat.
    """
    from .segment import match_labels

    # the nearest-neighbour search of segment.match_labels, run from the reference beats' side
    best = match_labels(ref_samples, peaks, np.arange(peaks.size), tol)  # detection index, -1 if none
    ok = best >= 0
    y_pred = np.full(ref_samples.size, MISSED, dtype=np.int64)
    y_pred[ok] = pred[best[ok]]
    return y_pred, int(peaks.size - np.unique(best[ok]).size)


def classify_records(model, spec: dict, paths, segmenter: str = "reference", lead=None, progress=None,
                     tolerance_s: float = 0.15):
    """Reference labels, predictions and record names over ``paths`` (missed beats -> ``MISSED``)."""
    from .segment import detect_beats

    detector = create("segmenters", segmenter)
    ys, ps, rs = [], [], []
    extra = 0
    for path in paths:
        rec = read_record(path, lead)
        ref_s, ref_sym = read_annotations(rec.path, "atr")
        ref_samples, ref_labels = reference_beats(ref_s, ref_sym)
        peaks = detect_beats(detector, rec)
        pred = predict_log_proba(model, prepare_record(rec, peaks, spec), spec).argmax(-1)
        y_pred, n_extra = match_to_reference(ref_samples, peaks, pred, int(round(tolerance_s * rec.fs)))
        extra += n_extra
        ys.append(ref_labels); ps.append(y_pred); rs.append(np.full(ref_labels.size, rec.name))
        if progress:
            progress(rec.name)
    return np.concatenate(ys), np.concatenate(ps), np.concatenate(rs), extra


def evaluate(model_ref: str, records, data=None, segmenter: str = "reference", lead=None,
             out_dir=None, show_progress: bool = True) -> dict:
    """EC57 report of ``model_ref`` (registered name or file) on ``records``; files in ``out_dir``."""
    from .models import load_any_model
    from .progress import progress_bar

    model, spec, info = load_any_model(model_ref)
    paths = resolve_records(records, data)
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task(f"evaluating ({segmenter})", total=len(paths))
        y, p, r, extra = classify_records(model, spec, paths, segmenter, lead,
                                          lambda n: bar.update(task, advance=1, description=f"evaluating {n}"))
    report = ec57_report(y, p, r)
    report.update(model=str(model_ref), segmenter=segmenter, records=[Path(x).name for x in paths],
                  extra_detections=extra, missed_beats=int((p == MISSED).sum()), model_info=info)
    if out_dir:
        write_report(report, Path(out_dir))
    return report


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def markdown(report: dict) -> str:
    """The report as markdown: gross table, summary figures and the per-record table."""
    lines = [f"**{report.get('model', '')}** on {len(report.get('records', []))} records, segmenter "
             f"`{report.get('segmenter', '')}`: {report['n_beats']} beats, accuracy {_pct(report['accuracy'])} %, "
             f"kappa {report['kappa']:.3f}, jk {report['jk']:.3f}", "",
             "| class | n | Se | +P | FPR | F1 |", "|---|---|---|---|---|---|"]
    for c in AAMI_CLASSES:
        s = report["gross"][c]
        lines.append(f"| {c} | {s['n']} | {_pct(s['Se'])} | {_pct(s['+P'])} | {_pct(s['FPR'])} | {_pct(s['F1'])} |")
    if "record_average" in report:
        lines += ["", "Record average: " + ", ".join(
            f"{c} Se {_pct(v['Se'])} +P {_pct(v['+P'])}" for c, v in report["record_average"].items() if c in "SV")]
    if "per_record" in report:
        lines += ["", "| record | beats | acc | S n | S Se | S +P | V n | V Se | V +P |", "|---|---|---|---|---|---|---|---|---|"]
        for name, v in report["per_record"].items():
            s, vv = v["stats"]["S"], v["stats"]["V"]
            lines.append(f"| {name} | {v['n_beats']} | {_pct(v['accuracy'])} | {s['n']} | {_pct(s['Se'])} | "
                         f"{_pct(s['+P'])} | {vv['n']} | {_pct(vv['Se'])} | {_pct(vv['+P'])} |")
    return "\n".join(lines) + "\n"


def confusion_png(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion_matrix"])
    cols = list(AAMI_CLASSES) + ["missed"]
    if cm[:, -1].sum() == 0:
        cm, cols = cm[:, :-1], cols[:-1]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{100 * norm[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(AAMI_CLASSES)), AAMI_CLASSES)
    ax.set(xlabel="predicted", ylabel="reference",
           title=f"{report.get('segmenter', '')}: acc {_pct(report['accuracy'])} %")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> None:
    """``report.json``, ``report.md`` and ``confusion_matrix.png`` in ``out_dir`` (atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "report.json", lambda t: t.write_text(json.dumps(report, indent=1, default=float)))
    atomic_write(out_dir / "report.md", lambda t: t.write_text(markdown(report)))
    confusion_png(report, out_dir / "confusion_matrix.png")


__all__ = ["classify_records", "evaluate", "markdown", "summary_line", "write_report"]


def kfold(cfg, k: int = 5, data=None, out_dir=None, show_progress: bool = True, records=None,
          fold_seed: int | None = None, resume: bool = False) -> dict:
    """Patient-wise k-fold: train ``cfg`` on k-1 folds, evaluate on the held-out fold, pool the beats.

    Every non-paced record is tested exactly once, by a model that never saw its patient.
    Validation patients of each fold (for picking its epoch) come out of that fold's training
    records: a fifth of them. With ``data.val: []`` in ``cfg`` (a recipe whose epoch count is
    fixed, as in a final fit) each fold trains on all its training records and keeps the
    last epoch: the estimate then scores exactly the protocol that makes the shipped model.

    ``fold_seed`` (default: ``cfg.seed``) shuffles the patients into folds (and picks the
    validation patients). Fixing it while varying ``cfg.seed`` measures the spread due to
    training alone, with the same patients in every fold.

    ``resume``: a fold whose directory holds a ``last.pt`` continues from it (a finished fold
    is only re-scored), so an interrupted cross-validation ends as an uninterrupted one would.
    The checkpoint must come from the same recipe and fold (same config), or it is an error.
    """
    import copy
    from dataclasses import asdict

    from .checkpoint import read_checkpoint
    from .datasets.mitdb import SPLITS, patient_kfold
    from .models import load_any_model
    from .train import train

    ys, ps, rs = [], [], []
    base = Path(out_dir or cfg.run_dir) / "kfold"
    fold_seed = cfg.seed if fold_seed is None else fold_seed
    for i, (train_recs, test_recs) in enumerate(patient_kfold(records or SPLITS["all"], k, fold_seed)):
        c = copy.deepcopy(cfg)
        n_val = 0 if not cfg.data.val else min(max(1, len(train_recs) // 5), len(train_recs) - 1)  # lone patient: none
        rng = np.random.default_rng(fold_seed + i)
        c.data.train = list(train_recs)
        c.data.val = sorted(rng.choice(train_recs, n_val, replace=False).tolist())
        c.data.test = list(test_recs)
        fold_dir = base / f"fold{i + 1}"
        member = copy.deepcopy(c)  # what the first checkpoint of the fold was trained with
        if c.train.ensemble > 1:   # train_ensemble: member 1 = the config with ensemble 1, float32
            member.train.ensemble, member.train.weights_dtype = 1, "float32"
        last = fold_dir / ("member1" if c.train.ensemble > 1 else "") / "last.pt"
        if resume and last.is_file():
            ck = read_checkpoint(last)
            if json.loads(ck["config"]) != json.loads(json.dumps(asdict(member))):
                raise ConfigError(f"--resume: {last} was trained with another config or fold assignment "
                                  "(same --config, --folds and --fold-seed needed)")
            if c.train.ensemble == 1 and ck["epoch"] >= c.train.epochs and (fold_dir / "best.pt").is_file():
                best = fold_dir / "best.pt"  # finished: score it again, train nothing
            else:
                best = train(c, run_dir=fold_dir, resume=True, data_dir=data, show_progress=show_progress)
        else:
            best = train(c, run_dir=fold_dir, data_dir=data, show_progress=show_progress)
        model, spec, _ = load_any_model(str(best))
        y, p, r, _ = classify_records(model, spec, resolve_records(list(test_recs), data), "reference")
        ys.append(y); ps.append(p); rs.append(r)
    report = ec57_report(np.concatenate(ys), np.concatenate(ps), np.concatenate(rs))
    report.update(model=f"{cfg.model.name} ({k}-fold, patient-wise, fold seed {fold_seed})", segmenter="reference",
                  records=sorted(set(np.concatenate(rs).tolist())))
    if out_dir:
        write_report(report, Path(out_dir))
    return report
