"""AAMI EC57 statistics for heartbeat classification.

Per class (one-vs-rest over the 5 AAMI classes): sensitivity Se = TP/(TP+FN),
positive predictivity +P = TP/(TP+FP), false-positive rate FPR = FP/(FP+TN),
F1 = 2 Se +P / (Se + +P). "Gross" statistics pool the beats of all records;
"record average" statistics are the mean over the records in which the class occurs
(Se) or is predicted (+P). Cohen's kappa and the jk index of Mondejar-Guerra et al.
(2019), jk = kappa/2 + (Se_S + +P_S + Se_V + +P_V)/8, summarise the table.

Beats labelled -1 (no reference) are ignored. Figures are fractions in [0, 1]; the
report printers show percentages.
"""

from __future__ import annotations

import numpy as np

from .datasets.mitdb import AAMI_CLASSES


#: Prediction value of a reference beat the detector missed (counted as an error for its class).
MISSED = -2


def confusion_matrix(y_true, y_pred, n_classes: int = len(AAMI_CLASSES)) -> np.ndarray:
    """``cm[i, j]`` = beats of reference class i predicted as class j; ``cm[i, n_classes]`` = missed.

    Shape ``(n_classes, n_classes + 1)``: the last column counts reference beats that
    the segmenter did not detect (prediction ``MISSED``). Reference labels -1 are ignored.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    keep = y_true >= 0
    pred = np.where(y_pred[keep] == MISSED, n_classes, y_pred[keep])
    return np.bincount(y_true[keep] * (n_classes + 1) + pred,
                       minlength=n_classes * (n_classes + 1)).reshape(n_classes, n_classes + 1)


def _div(a, b):
    return float(a) / float(b) if b else float("nan")


def class_stats(cm: np.ndarray) -> dict[str, dict[str, float]]:
    """Se, +P, FPR, F1 and counts for every class of a confusion matrix."""
    total = cm.sum()
    out = {}
    for i, name in enumerate(AAMI_CLASSES[: cm.shape[0]]):
        tp = cm[i, i]
        fn = cm[i].sum() - tp          # includes missed beats
        fp = cm[:, i].sum() - tp
        tn = total - tp - fn - fp
        se, ppv = _div(tp, tp + fn), _div(tp, tp + fp)
        f1 = 2 * se * ppv / (se + ppv) if (se + ppv) > 0 else (0.0 if tp + fn else float("nan"))
        out[name] = {"Se": se, "+P": ppv, "FPR": _div(fp, fp + tn), "F1": f1,
                     "TP": int(tp), "FN": int(fn), "FP": int(fp), "n": int(tp + fn)}
    return out


def cohen_kappa(cm: np.ndarray) -> float:
    n = cm.shape[0]
    cm = np.concatenate([cm, np.zeros((cm.shape[1] - n, cm.shape[1]), cm.dtype)]) if cm.shape[1] > n else cm
    total = cm.sum()
    if total == 0:
        return float("nan")
    po = np.trace(cm) / total
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / total**2
    return (po - pe) / (1 - pe) if pe < 1 else float("nan")


def jk_index(kappa: float, stats: dict) -> float:
    """Mondejar-Guerra 2019: kappa/2 + (Se_S + +P_S + Se_V + +P_V)/8 (NaN terms count as 0)."""
    terms = [stats["S"]["Se"], stats["S"]["+P"], stats["V"]["Se"], stats["V"]["+P"]]
    return kappa / 2 + sum(0.0 if np.isnan(t) else t for t in terms) / 8


def ec57_report(y_true, y_pred, records=None) -> dict:
    """The full report: gross per-class stats, accuracy, kappa, jk, per-record and record-average stats."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred)
    stats = class_stats(cm)
    kappa = cohen_kappa(cm)
    report = {
        "classes": list(AAMI_CLASSES),
        "n_beats": int(cm.sum()),
        "accuracy": _div(np.trace(cm), cm.sum()),
        "kappa": kappa,
        "jk": jk_index(kappa, stats),
        "gross": stats,
        "confusion_matrix": cm.tolist(),
    }
    if records is not None:
        records = np.asarray(records)
        per_record = {}
        for r in sorted(set(records.tolist())):
            m = records == r
            rcm = confusion_matrix(y_true[m], y_pred[m])
            per_record[r] = {"n_beats": int(rcm.sum()), "accuracy": _div(np.trace(rcm), rcm.sum()),
                             "stats": class_stats(rcm)}
        report["per_record"] = per_record
        avg = {}
        for c in AAMI_CLASSES:
            se = [v["stats"][c]["Se"] for v in per_record.values() if v["stats"][c]["n"] > 0]
            pp = [v["stats"][c]["+P"] for v in per_record.values() if not np.isnan(v["stats"][c]["+P"])]
            avg[c] = {"Se": float(np.mean(se)) if se else float("nan"),
                      "+P": float(np.mean(pp)) if pp else float("nan")}
        report["record_average"] = avg
    return report


def summary_line(report: dict) -> str:
    """One line: accuracy, SVEB and VEB Se/+P/F1 in percent."""
    g = report["gross"]

    def pct(x):
        return "  nan" if x is None or np.isnan(x) else f"{100 * x:5.1f}"

    return (f"acc {pct(report['accuracy'])} | SVEB Se {pct(g['S']['Se'])} +P {pct(g['S']['+P'])} "
            f"F1 {pct(g['S']['F1'])} | VEB Se {pct(g['V']['Se'])} +P {pct(g['V']['+P'])} "
            f"F1 {pct(g['V']['F1'])} | jk {report['jk']:.3f}")
