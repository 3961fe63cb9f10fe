"""Inter-patient results table: the shipped model on DS2 beside the published results.

    python benchmarks/inter_patient.py [--model transnet] [--data DIR] [--markdown]

Evaluates the model on DS2 (trained on DS1 only; model selection on DS1 patients) with
the reference beat positions (the literature's protocol) and end to end with the
Pan-Tompkins detector, and prints them under the published rows (from their papers,
de Chazal AAMI mapping, DS1 -> DS2).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ecgkit.evaluate import evaluate, markdown  # noqa: E402

#: (method, acc, SVEB Se, +P, F1, VEB Se, +P, F1) in percent; None where the paper gives no figure.
PUBLISHED = [
    ("de Chazal 2004 (LDA, RR + morphology)", 85.9, 75.9, 38.5, None, 77.7, 81.9, None),
    ("Mar 2011", 89.0, 83.2, 33.5, None, 86.8, 75.9, None),
    ("Zhang 2014", 86.7, 79.1, 36.0, None, 85.5, 92.7, None),
    ("Lin & Yang 2014", 93.0, 81.0, 31.0, None, 86.0, 73.0, None),
    ("Garcia 2017 (TVCG + SVM)", 92.4, 62.0, 53.0, None, 87.3, 59.4, None),
    ("Mondejar-Guerra 2019 (SVM ensemble, jk 0.773)", 94.5, None, None, None, None, None, None),
    ("Sellami & Hwang 2019 (CNN)", 88.3, 82.0, 38.0, None, 92.0, 72.0, None),
    ("Niu 2020 (symbolic + multi-perspective CNN)", 96.4, None, None, 76.6, None, None, 89.7),
]


def f1(se, pp):
    return None if se is None or pp is None else 2 * se * pp / (se + pp)


def row_of(rep: dict) -> tuple:
    g = rep["gross"]
    pct = lambda x: None if x is None or math.isnan(x) else 100 * x  # noqa: E731
    return (pct(rep["accuracy"]), pct(g["S"]["Se"]), pct(g["S"]["+P"]), pct(g["S"]["F1"]),
            pct(g["V"]["Se"]), pct(g["V"]["+P"]), pct(g["V"]["F1"]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="transnet")
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", default="DS2")
    ap.add_argument("--segmenters", nargs="+", default=["reference", "pan-tompkins"])
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)

    rows = []
    for m, *vals in PUBLISHED:
        acc, sse, spp, sf1, vse, vpp, vf1 = vals
        rows.append((m, acc, sse, spp, sf1 if sf1 is not None else f1(sse, spp),
                     vse, vpp, vf1 if vf1 is not None else f1(vse, vpp), None))
    reports = {}
    for seg in args.segmenters:
        t0 = time.time()
        rep = reports[seg] = evaluate(args.model, [args.split], args.data, seg, show_progress=not args.markdown)
        rows.append((f"**ecgkit {args.model}** ({seg} beats)", *row_of(rep), rep["jk"]))
        print(f"# {seg}: {time.time() - t0:.0f} s", file=sys.stderr)

    head = ["method", "acc", "SVEB Se", "SVEB +P", "SVEB F1", "VEB Se", "VEB +P", "VEB F1", "jk"]
    if args.markdown:
        first = next(iter(reports.values()))
        print(f"Measured with `python benchmarks/inter_patient.py --markdown` (model `{args.model}`; "
              f"{args.split}, all {first['n_beats']:,} reference beats; published rows from their papers, "
              "F1 computed from Se and +P where the paper gives none).\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join([r[0]] + [("" if v is None else f"{v:.1f}") for v in r[1:8]]
                                    + ["" if r[8] is None else f"{r[8]:.3f}"]) + " |")
        seg = args.segmenters[0]
        print(f"\nPer record (`ecgkit evaluate --model {args.model} --split {args.split} --out DIR`, {seg} beats):\n")
        md = markdown(reports[seg])  # the per-record table of ecgkit evaluate's report.md, verbatim
        print(md[md.index("| record |"):], end="")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Inter-patient, DS1 -> {args.split} (published rows from their papers)")
    for h in head:
        t.add_column(h)
    for r in rows:
        t.add_row(r[0], *[("" if v is None else f"{v:.1f}") for v in r[1:8]], "" if r[8] is None else f"{r[8]:.3f}")
    Console().print(t)


if __name__ == "__main__":
    main()
