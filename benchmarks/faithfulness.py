"""Faithfulness of the explainers: a deletion test on DS2 beats (the test split).

For each class N, S, V take up to ``--n`` DS2 beats that the model classifies correctly
(reference label == prediction, both from ``predict_log_proba`` over the record and from
the 64-beat sequence centred on the beat that the explanation uses; beats failing the
second check are skipped and counted). For each beat and method:

1. explain the predicted class (= the reference class) with the registered explainer;
2. rank the samples of the beat's own window by their attribution summed over the input
   channels (the net evidence a time sample carries for the class);
3. progressively delete the top-k % samples, k = 0, 5, ..., 50: the beat's signal is set
   to 0 (the z-scored baseline) there and the input channels are rebuilt from it with
   ``ecgkit.inference.make_channels`` (``beat`` = 0, ``beat_minus_record_median`` =
   -median beat), so both channels stay consistent; a model that reads a second lead
   loses the same samples of that lead too;
4. record the predicted-class probability after each step (deletion curve), and the same
   for random orders of the samples (``--random-repeats``, averaged).

The area under the deletion curve (trapezoid over k, divided by the range: the mean
probability) of the method divided by that of random deletion is the score: < 1 means
the attribution finds the samples the model relies on faster than chance (faithful).
``win`` is the share of beats whose method curve has a smaller area than its random one.

    python benchmarks/faithfulness.py                       # registered model ``transnet``, n = 200
    python benchmarks/faithfulness.py --model runs/x/best.pt --n 50 --markdown
    python benchmarks/faithfulness.py --quick               # a few records, 8 beats per class
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.integrate import trapezoid
import torch


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="transnet", help="registered model name or checkpoint file")
    ap.add_argument("--n", type=int, default=200, help="beats per class (N, S, V)")
    ap.add_argument("--methods", nargs="+", default=["gradcam", "shap", "ig"])
    ap.add_argument("--classes", nargs="+", default=["N", "S", "V"])
    ap.add_argument("--records", nargs="+", default=["DS2"], help="records or split (default DS2, the test split)")
    ap.add_argument("--data", default=None, help="data directory (default $ECGKIT_DATA)")
    ap.add_argument("--step", type=float, default=5.0, help="deletion step, percent")
    ap.add_argument("--max-frac", type=float, default=50.0, help="largest deleted share, percent")
    ap.add_argument("--random-repeats", type=int, default=2, help="random orders per beat")
    ap.add_argument("--ig-steps", type=int, default=None, help="override ig n_steps")
    ap.add_argument("--shap-nsamples", type=int, default=None, help="override shap nsamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=None,
                    help="beats of context around each explained beat (default: the model's seq_len)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the work is many small single-sequence passes, "
                         "where more threads mostly add contention; 0 = torch's default)")
    ap.add_argument("--quick", action="store_true",
                    help="small run: records 100 105 200 232 233, 8 beats per class, 10 %% steps, "
                         "ig 16 steps, shap 32 samples")
    ap.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    if a.quick:
        a.n = min(a.n, 8)
        a.records = ["100", "105", "200", "232", "233"] if a.records == ["DS2"] else a.records
        a.step = max(a.step, 10.0)
        a.ig_steps = a.ig_steps or 16
        a.shap_nsamples = a.shap_nsamples or 32
    return a


def candidates(model, spec, paths, classes, data, log):
    """Per class, the (record beats, beat) pairs of correctly classified beats (whole-record inference)."""
    from ecgkit.explain import load_record_beats
    from ecgkit.inference import predict_log_proba

    out = {c: [] for c in classes}
    counts = {c: [0, 0] for c in classes}  # [reference beats, correct]
    for p in paths:
        rb = load_record_beats(p, spec, data, "reference")
        pred = predict_log_proba(model, rb.prep, spec).argmax(-1)
        for c in classes:
            k = list(spec["classes"]).index(c)
            ref = rb.labels == k
            ok = np.flatnonzero(ref & (pred == k))
            counts[c][0] += int(ref.sum())
            counts[c][1] += ok.size
            out[c] += [(rb, int(i)) for i in ok]
        log(f"  {rb.record.name}: " + ", ".join(f"{c} {len(out[c])}" for c in classes))
    return out, counts


@torch.no_grad()
def deletion_curves(model, spec, rb, beat, windows, rr, bi, target, orders, fracs, batch=32):
    """Predicted-class probability after deleting the first ``round(f * S)`` samples of each order."""
    from ecgkit.inference import make_channels

    S = windows.shape[-1]
    leads = ["W", "W2"] if "W2" in rb.prep else ["W"]  # a second lead loses the same samples
    src = [torch.from_numpy(rb.prep[k][beat]) for k in leads]
    med = torch.from_numpy(rb.prep["med"])[None]
    counts = [int(round(f * S)) for f in fracs]
    variants, where = [], {}
    for i, order in enumerate(orders):
        for j, m in enumerate(counts):
            key = (i if m else -1, m)  # nothing deleted: the same input for every order
            if key not in where:
                ws = [x.clone() for x in src]
                for w in ws:
                    w[torch.from_numpy(order[:m].copy())] = 0.0
                where[key] = len(variants)
                variants.append(ws)
    V = [torch.stack([v[k] for v in variants])[None] for k in range(len(leads))]  # (1, K, S) per lead
    lead2 = (V[1], torch.from_numpy(rb.prep["med2"])[None]) if len(leads) == 2 else None
    own = make_channels(V[0], med, spec["channels"], 0, S, lead2=lead2)[0]  # (K, C, S)
    probs = []
    for k in range(0, len(own), batch):
        o = own[k:k + batch]
        w = windows.expand(len(o), -1, -1, -1).clone()
        w[:, bi] = o
        p = torch.softmax(model(w, rr.expand(len(o), -1, -1)).float()[:, bi], -1)[:, target]
        probs.append(p)
    p = torch.cat(probs).numpy()
    return np.array([[p[where[(i if m else -1, m)]] for m in counts] for i in range(len(orders))])


def auc(curves, fracs):
    return trapezoid(curves, fracs, axis=-1) / (fracs[-1] - fracs[0])


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from rich.console import Console
    from rich.table import Table

    from ecgkit.datasets import resolve_records
    from ecgkit.explain import _make_explainer
    from ecgkit.models import load_any_model

    console = Console(stderr=True)
    log = console.print
    model, spec, info = load_any_model(a.model)
    model.eval()
    classes = [c for c in a.classes if c in spec["classes"]]
    paths = resolve_records(a.records, a.data)
    params = {"ig": {"n_steps": a.ig_steps} if a.ig_steps else {},
              "shap": {"nsamples": a.shap_nsamples} if a.shap_nsamples else {}}
    explainers = {m: _make_explainer(m, model, a.data, **params.get(m, {})) for m in a.methods}
    fracs = np.round(np.arange(0.0, a.max_frac + 1e-9, a.step) / 100.0, 6)
    rng = np.random.default_rng(a.seed)

    log(f"[bold]faithfulness[/] of {', '.join(a.methods)} on {a.model} ({len(paths)} records); "
        f"finding correctly classified beats ...")
    t0 = time.time()
    cands, counts = candidates(model, spec, paths, classes, a.data, log)
    curves = {c: {m: [] for m in a.methods + ["random"]} for c in classes}
    secs = {m: [] for m in a.methods}
    setup = {}
    skipped = {c: 0 for c in classes}
    for c in classes:
        k = list(spec["classes"]).index(c)
        pool = cands[c]
        order = rng.permutation(len(pool))
        done = 0
        for j in order:
            if done >= a.n:
                break
            rb, beat = pool[j]
            windows, rr, bi, _ = rb.sequence(beat, a.seq_len)
            with torch.no_grad():
                p = torch.softmax(model(windows, rr)[0, bi].float(), -1)
            if int(p.argmax()) != k:  # must also be right in the sequence the explanation uses
                skipped[c] += 1
                continue
            S = windows.shape[-1]
            orders = []
            for m in a.methods:
                ts = time.perf_counter()
                attr = explainers[m](windows, rr, bi, k)
                dt = time.perf_counter() - ts
                if m not in setup:
                    setup[m] = dt  # first call: builds the explainer (shap: loads the DS1 background)
                else:
                    secs[m].append(dt)
                orders.append(np.argsort(-attr.sum(0), kind="stable"))
            orders += [rng.permutation(S) for _ in range(a.random_repeats)]
            cv = deletion_curves(model, spec, rb, beat, windows, rr, bi, k, orders, fracs)
            for i, m in enumerate(a.methods):
                curves[c][m].append(cv[i])
            curves[c]["random"].append(cv[len(a.methods):].mean(0))
            done += 1
            if done % 10 == 0:
                log(f"  {c}: {done} beats ({time.time() - t0:.0f} s)")

    rows = []
    for c in classes:
        if not curves[c]["random"]:
            continue
        rnd = np.array(curves[c]["random"])
        a_rnd = auc(rnd, fracs)
        for m in a.methods:
            cm = np.array(curves[c][m])
            a_m = auc(cm, fracs)
            rows.append({"class": c, "method": m, "n": len(cm), "auc": float(a_m.mean()),
                         "auc_random": float(a_rnd.mean()), "ratio": float(a_m.mean() / max(a_rnd.mean(), 1e-12)),
                         "win": float(np.mean(a_m < a_rnd)),
                         "p0": float(cm[:, 0].mean()),
                         "p_at_10": float(np.interp(0.10, fracs, cm.mean(0))),
                         "p_at_max": float(cm[:, -1].mean()), "p_random_at_max": float(rnd[:, -1].mean()),
                         "curve": cm.mean(0).tolist(), "curve_random": rnd.mean(0).tolist()})
    timing = {m: {"seconds_per_explanation": float(np.mean(secs[m])) if secs[m] else setup.get(m, float("nan")),
                  "first_call_seconds": setup.get(m)} for m in a.methods}
    result = {"model": a.model, "model_info": info, "records": [Path(p).name for p in paths],
              "fractions": fracs.tolist(), "random_repeats": a.random_repeats, "rows": rows, "timing": timing,
              "beats_available": {c: {"reference": counts[c][0], "correct": counts[c][1]} for c in classes},
              "skipped_not_correct_in_centred_sequence": skipped, "n_per_class_asked": a.n,
              "params": params, "seconds_total": time.time() - t0,
              "selection": "DS2 beats classified correctly (record-level inference and the centred sequence)"}
    if a.json_out:
        from ecgkit.io import atomic_write

        atomic_write(a.json_out, lambda t: t.write_text(json.dumps(result, indent=1)))

    note = (f"Deletion test on {', '.join(result['records']) if len(paths) <= 6 else f'{len(paths)} records'} "
            f"({a.model}); correctly classified beats only; k = 0..{a.max_frac:g} % in {a.step:g} % steps; "
            f"ratio = AUC(method) / AUC(random), < 1 = faithful; "
            f"context {a.seq_len or 'the model default'} beats per explained sequence; "
            f"ig {a.ig_steps or 'default'} steps, shap {a.shap_nsamples or 'default'} samples, "
            f"{a.random_repeats} random order(s) per beat.")
    if a.markdown:
        lines = [note, "", "| class | method | beats | AUC | AUC random | ratio | win % | p(k=0) | p(10 %) | "
                 f"p({a.max_frac:g} %) | random p({a.max_frac:g} %) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['class']} | {r['method']} | {r['n']} | {r['auc']:.3f} | {r['auc_random']:.3f} | "
                         f"**{r['ratio']:.2f}** | {100 * r['win']:.0f} | {r['p0']:.3f} | {r['p_at_10']:.3f} | "
                         f"{r['p_at_max']:.3f} | {r['p_random_at_max']:.3f} |")
        lines += ["", "| method | s / explanation | first call s |", "|---|---|---|"]
        for m, t in timing.items():
            lines.append(f"| {m} | {t['seconds_per_explanation']:.3f} | {t['first_call_seconds'] or 0:.2f} |")
        lines += ["", "Beats per class (reference / correctly classified in the records): " + ", ".join(
            f"{c} {v['reference']} / {v['correct']}" for c, v in result["beats_available"].items())]
        print("\n".join(lines))
    else:
        out = Console() if sys.stdout.isatty() else Console(width=160)
        t = Table(title="Faithfulness: deletion test (ratio < 1 = better than random)", caption=note)
        for col in ("class", "method", "beats", "AUC", "AUC random", "ratio", "win %", "p(k=0)", "p(10 %)",
                    f"p({a.max_frac:g} %)", f"random p({a.max_frac:g} %)"):
            t.add_column(col, justify="left" if col in ("class", "method") else "right")
        for r in rows:
            style = "green" if r["ratio"] < 0.95 else ("red" if r["ratio"] > 1.05 else "")
            t.add_row(r["class"], r["method"], str(r["n"]), f"{r['auc']:.3f}", f"{r['auc_random']:.3f}",
                      f"[{style}]{r['ratio']:.2f}[/]" if style else f"{r['ratio']:.2f}", f"{100 * r['win']:.0f}",
                      f"{r['p0']:.3f}", f"{r['p_at_10']:.3f}", f"{r['p_at_max']:.3f}", f"{r['p_random_at_max']:.3f}")
        out.print(t)
        tt = Table(title="Seconds per explanation")
        for col in ("method", "s / explanation", "first call s"):
            tt.add_column(col)
        for m, v in timing.items():
            tt.add_row(m, f"{v['seconds_per_explanation']:.3f}", f"{v['first_call_seconds'] or 0:.2f}")
        out.print(tt)
    for c in classes:
        got = len(curves[c]["random"])
        if got < a.n:
            log(f"note: class {c}: {got} beats (asked {a.n}; {counts[c][1]} correctly classified of "
                f"{counts[c][0]}, {skipped[c]} skipped: wrong in the centred sequence)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
