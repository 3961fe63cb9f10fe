"""Edge deployment: the fp32 model beside its int8 quantization, in one run.

    python benchmarks/speed.py [--model transnet] [--int8 FILE] [--data DIR] [--markdown] [--quick]

``--model`` is the fp32 model (registered name or checkpoint file). Without ``--int8`` it is first quantized here with
``ecgkit.quantize.quantize`` (calibrated on DS1 beats, never DS2). Each variant is then measured in
its own fresh subprocess (so peak RSS is its own), in this order:

* **end to end**: ``ecgkit.annotate.annotate`` over all DS2 records in one call (load model, read,
  band-pass + resample, Pan-Tompkins detection, classify, write WFDB), at 1 and 2 threads
  (``--e2e-threads``; torch's and onnxruntime's intra-op threads); wall time per record and overall,
  as a real-time factor (seconds of ECG per second of wall time); the time to start Python and import
  ecgkit is reported apart. Peak RSS is the process's peak resident set size (VmHWM) after these runs.
* **throughput**: beats per second of ``predict_log_proba`` (whole records, ``seq_len``-beat sequences
  overlapping by half, so every beat goes through the model twice) at 1 and 2 threads, on the reference beats of
  the ``--speed-records`` (default 100, 203, 208, 233; ``--quick``: 100).
* **agreement**: the share of those ``--speed-records`` beats that int8 gives the same class as fp32 (from the
  1-thread throughput run's predictions): measured on these few records (by default DS1's 203, 208 and DS2's
  100, 233), not on the whole of DS2.
* **batch-1 latency**: one model call on one sequence of ``seq_len`` consecutive beats, i.e.
  the new beat and the ``seq_len`` - 1 before it as context: the call a streaming annotator makes for each new
  beat (the transformer looks at the whole sequence, so nothing can be cached). 1 thread,
  p50 / p99 over ``--latency-calls`` calls after a warm-up.
* **DS2 figures**: ``ecgkit.evaluate.evaluate`` on DS2 with the reference beats (the literature's
  protocol): accuracy, SVEB and VEB Se / +P / F1.

Timings on a shared machine are noisy: each throughput figure is the best of ``--repeats`` runs,
and the ratios int8/fp32 matter more than absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

QUICK_RECORDS = ["100", "203", "233"]


# ---------------------------------------------------------------------------------------------------
# worker: one variant, in its own process
# ---------------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    """Peak resident set size of this process image (VmHWM: reset at exec, unlike getrusage's ru_maxrss,
    which Linux carries over from the parent that forked us)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _e2e(model_ref: str, paths: list[str], out_dir: str) -> dict:
    """One ``annotate`` call over ``paths``; per-record wall times between successive classifications.

    ``annotate`` reads, filters, detects and classifies every record, then writes all the
    files (so an error leaves none): a record's time runs from the end of the previous
    record's classification to the end of its own; the writes are in the total only.
    """
    import ecgkit.annotate as A
    import ecgkit.models as M

    stamps: list[tuple[str, float]] = []
    real_load, real_classify = M.load_any_model, A.annotate_record

    def load(ref):
        out = real_load(ref)
        stamps.append(("<load>", time.perf_counter()))
        return out

    def classify(model, spec, record, detector):
        out = real_classify(model, spec, record, detector)
        stamps.append((record.name, time.perf_counter()))
        return out

    M.load_any_model, A.annotate_record = load, classify
    try:
        t0 = time.perf_counter()
        rows = A.annotate(paths, model_ref, "pan-tompkins", out_dir, show_progress=False)
        total = time.perf_counter() - t0
    finally:
        M.load_any_model, A.annotate_record = real_load, real_classify
    per = {}
    for (_, prev), (name, t), row in zip(stamps, stamps[1:], rows):
        per[name] = {"seconds_ecg": row["seconds"], "wall_s": t - prev, "beats": row["beats"]}
    return {"total_s": total, "load_s": stamps[0][1] - t0, "records": per,
            "seconds_ecg": sum(r["seconds"] for r in rows), "beats": sum(r["beats"] for r in rows)}


def _throughput(model_ref: str, preps: list, threads: int, repeats: int) -> tuple[float, list]:
    """Beats per second of ``predict_log_proba`` over ``preps`` (best of ``repeats`` runs, at least one) and
    the predicted classes of the last run, one list per record."""
    import torch

    from ecgkit.inference import predict_log_proba
    from ecgkit.models import load_any_model

    torch.set_num_threads(threads)
    model, spec, _ = load_any_model(model_ref)  # onnxruntime takes its thread count at load
    n = sum(len(p["rr"]) for p in preps)
    predict_log_proba(model, preps[0], spec)  # warm-up
    best, outs = float("inf"), []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        outs = [predict_log_proba(model, p, spec) for p in preps]
        best = min(best, time.perf_counter() - t)
    return n / best, [o.argmax(-1).tolist() for o in outs]


def _latency(model_ref: str, prep: dict, calls: int) -> dict:
    import numpy as np
    import torch

    from ecgkit.inference import record_inputs
    from ecgkit.models import load_any_model

    torch.set_num_threads(1)
    model, spec, _ = load_any_model(model_ref)
    T = int(spec.get("seq_len", 64))
    X, rr = record_inputs(prep, spec)
    n = len(rr)
    ends = np.linspace(T, n, calls + 20).astype(int)  # a new beat each call, its T - 1 predecessors as context
    times = []
    with torch.inference_mode():
        for i, e in enumerate(ends):
            x, r = X[e - T:e][None].contiguous(), rr[e - T:e][None].contiguous()
            t = time.perf_counter()
            logits = model(x, r)
            int(logits[0, -1].argmax())
            if i >= 20:
                times.append(time.perf_counter() - t)
    ms = 1e3 * np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "calls": len(ms), "seq_len": T}


def _accuracy(model_ref: str, records, data) -> dict:
    from ecgkit.evaluate import evaluate

    t = time.perf_counter()
    rep = evaluate(model_ref, records, data, "reference", show_progress=False)
    g = rep["gross"]
    return {"accuracy": rep["accuracy"], "n_beats": rep["n_beats"], "jk": rep["jk"], "wall_s": time.perf_counter() - t,
            **{f"{c}_{k}": g[c][k] for c in "SV" for k in ("Se", "+P", "F1")}}


def worker(args) -> None:
    t_import = time.perf_counter()
    import ecgkit.annotate  # noqa: F401  (what `ecgkit annotate` imports before it starts)
    import ecgkit.inference  # noqa: F401
    import_s = time.perf_counter() - t_import
    from ecgkit.datasets import resolve_records
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_record
    from ecgkit.models import load_any_model
    from ecgkit.registry import create
    from ecgkit.segment import detect_beats

    import torch

    out: dict = {"import_s": import_s, "size_bytes": Path(args.file).stat().st_size,
                 "default_threads": torch.get_num_threads()}
    paths = resolve_records(args.records, args.data)
    if not args.skip_e2e:
        out["e2e"] = {}
        for t in args.e2e_threads:
            torch.set_num_threads(t)
            with tempfile.TemporaryDirectory(prefix="ecgkit-speed-") as tmp:
                out["e2e"][str(t)] = _e2e(args.ref, paths, tmp)
        torch.set_num_threads(out["default_threads"])
    out["peak_rss_mb"] = _rss_mb()
    # prepared inputs of the throughput records (reference beats), shared by the remaining measurements
    _, spec, info = load_any_model(args.ref)
    out["info"] = info
    ref = create("segmenters", "reference")
    preps = []
    for p in resolve_records(args.speed_records, args.data):
        rec = read_record(p)
        preps.append(prepare_record(rec, detect_beats(ref, rec), spec))
    out["speed_beats"] = sum(len(p["rr"]) for p in preps)
    out["beats_per_s"], classes = {}, {}
    for t in (1, 2):
        out["beats_per_s"][str(t)], classes[t] = _throughput(args.ref, preps, t, args.repeats)
    out["latency"] = _latency(args.ref, preps[0], args.latency_calls)
    if not args.skip_accuracy:
        out["ds2"] = _accuracy(args.ref, args.records, args.data)
    out["predictions"] = classes[1]  # for the fp32 / int8 agreement: the 1-thread run's classes
    print("@@RESULT " + json.dumps(out))


# ---------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------
def run_variant(name: str, ref: str, file: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--_worker", "--_ref", ref, "--_file", str(file), "--records", *args.records,
           "--speed-records", *args.speed_records, "--repeats", str(args.repeats),
           "--latency-calls", str(args.latency_calls), "--e2e-threads", *map(str, args.e2e_threads)]
    cmd += ["--data", args.data] if args.data else []
    cmd += ["--skip-e2e"] if args.skip_e2e else []
    cmd += ["--skip-accuracy"] if args.skip_accuracy else []
    print(f"# measuring {name}: {ref}", file=sys.stderr)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"worker for {name} failed (exit {proc.returncode})")
    res = json.loads(lines[-1][len("@@RESULT "):])
    print(f"# {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return res


def _fmt(v, spec=".1f", suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _ratio(a, b, spec=".2f"):
    return "-" if a is None or b is None or not b else f"{a / b:{spec}}x"


def build_tables(res: dict, args) -> tuple[list, list, list]:
    f, q = res["fp32"], res["int8"]
    pct = lambda x: None if x is None else 100 * x  # noqa: E731
    rows = [
        ("file size (KB)", _fmt(f["size_bytes"] / 1024, ".0f"), _fmt(q["size_bytes"] / 1024, ".0f"),
         _ratio(q["size_bytes"], f["size_bytes"])),
        ("runtime", f["info"].get("runtime", "torch"), q["info"].get("runtime", "?"), ""),
    ]
    for t in ("1", "2"):
        rows.append((f"throughput, {t} thread{'s' if t != '1' else ''} (beats/s)", _fmt(f["beats_per_s"][t], ".0f"),
                     _fmt(q["beats_per_s"][t], ".0f"), _ratio(q["beats_per_s"][t], f["beats_per_s"][t])))
    for k, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        rows.append((f"batch-1 latency {label} (ms, 1 x {f['latency']['seq_len']} beats, 1 thread)",
                     _fmt(f["latency"][k], ".2f"), _fmt(q["latency"][k], ".2f"), _ratio(q["latency"][k], f["latency"][k])))
    rows.append(("peak RSS, annotate process (MB)", _fmt(f["peak_rss_mb"], ".0f"), _fmt(q["peak_rss_mb"], ".0f"),
                 _ratio(q["peak_rss_mb"], f["peak_rss_mb"])))
    if "e2e" in f:
        for t in f["e2e"]:
            fe, qe = f["e2e"][t], q["e2e"][t]
            th = f"{t} thread{'s' if t != '1' else ''}"
            rows += [
                (f"annotate {len(fe['records'])} records, one call, {th} (s)", _fmt(fe["total_s"], ".2f"),
                 _fmt(qe["total_s"], ".2f"), _ratio(qe["total_s"], fe["total_s"])),
                (f"annotate real-time factor, {th} (x)", _fmt(fe["seconds_ecg"] / fe["total_s"], ".0f"),
                 _fmt(qe["seconds_ecg"] / qe["total_s"], ".0f"), _ratio(fe["total_s"], qe["total_s"])),
            ]
        t0 = next(iter(f["e2e"]))
        fe, qe = f["e2e"][t0], q["e2e"][t0]
        rows += [
            ("  model load (s)", _fmt(fe["load_s"], ".2f"), _fmt(qe["load_s"], ".2f"), ""),
            ("  python start-up imports (s, not in the above)", _fmt(f["import_s"], ".2f"), _fmt(q["import_s"], ".2f"), ""),
        ]
    if "ds2" in f:
        fd, qd = f["ds2"], q["ds2"]
        rows.append((f"DS2 accuracy (%, {fd['n_beats']} reference beats)", _fmt(pct(fd["accuracy"]), ".2f"),
                     _fmt(pct(qd["accuracy"]), ".2f"), _fmt(100 * (qd["accuracy"] - fd["accuracy"]), "+.2f", " pt")))
        for c, name in (("S", "SVEB"), ("V", "VEB")):
            for k in ("Se", "+P", "F1"):
                a, b = fd[f"{c}_{k}"], qd[f"{c}_{k}"]
                rows.append((f"DS2 {name} {k} (%)", _fmt(pct(a), ".2f"), _fmt(pct(b), ".2f"),
                             _fmt(None if a is None or b is None else 100 * (b - a), "+.2f", " pt")))
        rows.append(("DS2 jk", _fmt(fd["jk"], ".3f"), _fmt(qd["jk"], ".3f"), _fmt(qd["jk"] - fd["jk"], "+.3f")))
    pf = [x for r in f["predictions"] for x in r]
    pq = [x for r in q["predictions"] for x in r]
    agree = sum(a == b for a, b in zip(pf, pq)) / max(len(pf), 1)
    rows.append((f"same class as fp32 ({len(pf)} beats of {', '.join(args.speed_records)})", "100.00",
                 _fmt(100 * agree, ".2f"), ""))
    per = []
    if "e2e" in f:
        t0 = next(iter(f["e2e"]))
        fe, qe = f["e2e"][t0], q["e2e"][t0]
        for name, a in fe["records"].items():
            b = qe["records"].get(name, {})
            per.append((name, _fmt(a["seconds_ecg"], ".0f"), str(a["beats"]), _fmt(a["wall_s"], ".2f"),
                        _fmt(a["seconds_ecg"] / a["wall_s"], ".0f"), _fmt(b.get("wall_s"), ".2f"),
                        _fmt(b["seconds_ecg"] / b["wall_s"] if b else None, ".0f"), _ratio(a["wall_s"], b.get("wall_s"))))
        per.append(("all", _fmt(fe["seconds_ecg"], ".0f"), str(fe["beats"]), _fmt(fe["total_s"], ".2f"),
                    _fmt(fe["seconds_ecg"] / fe["total_s"], ".0f"), _fmt(qe["total_s"], ".2f"),
                    _fmt(qe["seconds_ecg"] / qe["total_s"], ".0f"), _ratio(fe["total_s"], qe["total_s"])))
    head = ["", "fp32", "int8", "int8/fp32"]
    per_head = ["record", "ECG (s)", "beats", "fp32 wall (s)", "fp32 RTF (x)", "int8 wall (s)", "int8 RTF (x)",
                "speed-up"]
    return head, rows, (per_head, per)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="transnet", help="fp32 model: registered name or checkpoint")
    ap.add_argument("--int8", default=None, help="int8 file to compare (default: quantize --model here, on DS1)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--records", nargs="+", default=["DS2"], help="records for annotate and accuracy (default DS2)")
    ap.add_argument("--speed-records", nargs="+", default=["100", "203", "208", "233"],
                    help="records (reference beats) for throughput, latency and agreement")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--latency-calls", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help=f"records {' '.join(QUICK_RECORDS)} only, fewer calls")
    ap.add_argument("--e2e-threads", nargs="+", type=int, default=[1, 2],
                    help="thread counts of the annotate runs (the per-record table shows the first)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", default=None, help="also write the raw measurements here")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_ref", help=argparse.SUPPRESS)
    ap.add_argument("--_file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        args.ref, args.file = args._ref, args._file
        return worker(args)
    if args.quick:
        args.records, args.speed_records, args.latency_calls, args.repeats = QUICK_RECORDS, QUICK_RECORDS[:1], 100, 1

    from ecgkit.checkpoint import resolve_model_path
    from ecgkit.datasets import resolve_records

    fp32_file = resolve_model_path(args.model)
    for p in resolve_records(args.records, args.data):  # warm the page cache: no variant pays the first read
        for ext in (".dat", ".hea", ".atr"):
            if Path(p + ext).is_file():
                Path(p + ext).read_bytes()
    tmp = tempfile.TemporaryDirectory(prefix="ecgkit-speed-")
    quant_s = None
    if args.int8:
        int8 = Path(args.int8)
    else:
        from ecgkit.quantize import quantize

        print(f"# quantizing {args.model} (calibration: DS1)", file=sys.stderr)
        t = time.perf_counter()
        int8 = quantize(args.model, Path(tmp.name) / "model.int8.onnx", data=args.data)
        quant_s = time.perf_counter() - t
    load0 = os.getloadavg()[0]
    res = {"fp32": run_variant("fp32", args.model, fp32_file, args),
           "int8": run_variant("int8", str(int8), int8, args)}
    res["quantize_s"] = quant_s
    res["loadavg"] = [load0, os.getloadavg()[0]]
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    head, rows, (per_head, per) = build_tables(res, args)
    title = (f"fp32 vs int8: {args.model} ({res['fp32']['info'].get('encoder')}), int8 = {int8.name}"
             + (f" (quantized in {quant_s:.0f} s)" if quant_s else ""))
    seq = int(res["fp32"]["latency"]["seq_len"])
    note = (f"{os.cpu_count()} CPUs, 1-min load average {res['loadavg'][0]:.1f} at start, {res['loadavg'][1]:.1f} at end "
            f"(other jobs share the CPUs: the 2-thread figures suffer most); throughput = beats/s of predict_log_proba on {res['fp32']['speed_beats']} beats "
            f"(every beat runs twice: {seq}-beat sequences overlap by half); latency = one model call on 1 sequence of "
            f"{seq} beats (the new beat + {seq - 1} beats of context); annotate = load + read + filter + Pan-Tompkins + "
            f"classify + write; peak RSS = VmHWM of the variant's process after its annotate runs.")
    if args.markdown:
        print(f"**{title}**\n")
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        if per:
            print(f"\nEnd to end per record (`ecgkit annotate`, Pan-Tompkins, {args.e2e_threads[0]} thread(s)):")
            print("\n| " + " | ".join(per_head) + " |\n|" + "---|" * len(per_head))
            for r in per:
                print("| " + " | ".join(r) + " |")
        print(f"\n{note}")
    else:
        from rich.console import Console
        from rich.table import Table

        con = Console()
        t = Table(title=title, caption=note)
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        con.print(t)
        if per:
            t = Table(title=f"end to end, per record (ecgkit annotate, Pan-Tompkins, {args.e2e_threads[0]} thread(s))")
            for i, h in enumerate(per_head):
                t.add_column(h, justify="left" if i == 0 else "right")
            for r in per:
                t.add_row(*r)
            con.print(t)
    tmp.cleanup()


if __name__ == "__main__":
    main()
