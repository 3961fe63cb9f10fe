"""``ecgkit run CONFIG.yaml``: every stage of a run into one run directory, with a report.

Stages (config key ``stages``, in this order): ``segment`` (QRS detection of the
test records, scored against the reference), ``train``, ``quantize``, ``evaluate``
(the test split with each configured segmenter) and ``explain``. Each stage writes
into ``<run_dir>/<stage>/`` and the run ends with ``<run_dir>/report.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import RunConfig, to_dict
from .datasets import resolve_records
from .io import atomic_write


def stage_segment(cfg: RunConfig, run_dir: Path, data, log) -> dict:
    """Detect beats of the test records with each non-reference segmenter; score Se/+P (150 ms)."""
    from wfdb import processing

    from .datasets import iter_records
    from .datasets.mitdb import BEAT_SYMBOLS
    from .io import read_annotations, read_record
    from .segment import segment_records

    out = {}
    for seg in [s for s in cfg.evaluate.segmenters if s != "reference"]:
        seg_dir = run_dir / "segment" / seg
        t0 = time.time()
        segment_records(iter_records(cfg.data.test, data, cfg.data.lead), seg, seg_dir)
        tp = fp = fn = 0
        for path in resolve_records(cfg.data.test, data):
            rec = read_record(path, cfg.data.lead)
            ref, sym = read_annotations(rec.path)
            ref = ref[[s in BEAT_SYMBOLS for s in sym]]
            det, _ = read_annotations(seg_dir / rec.name, "qrs")
            cmp = processing.compare_annotations(ref, det, int(0.15 * rec.fs))
            tp += cmp.tp; fp += cmp.fp; fn += cmp.fn
        out[seg] = {"Se": tp / max(tp + fn, 1), "+P": tp / max(tp + fp, 1), "seconds": time.time() - t0}
        log(f"segment {seg}: Se {100 * out[seg]['Se']:.2f} +P {100 * out[seg]['+P']:.2f}")
    return out


def preflight(cfg: RunConfig, data=None) -> None:
    """Check every component name and record the stages will use, before anything is written."""
    from .datasets import iter_records
    from .registry import create, get

    if "train" in cfg.stages:
        params = dict(cfg.model.params)
        params.setdefault("seq_len", cfg.train.seq_len)
        from .inference import check_channels

        model = create("encoders", cfg.model.name, **params)  # names and parameter types, as train() will build it
        check_channels(getattr(model, "input_spec", None) or {})
        get("segmenters", cfg.data.segmenter)
        iter_records(cfg.data.train, data, cfg.data.lead)
    for seg in cfg.evaluate.segmenters:
        get("segmenters", seg)
    if {"segment", "evaluate", "explain"} & set(cfg.stages):
        iter_records(cfg.data.test, data, cfg.data.lead)


def run_pipeline(cfg: RunConfig, data=None, log=print) -> Path:
    """Run the configured stages; return the path of the run report."""
    from .evaluate import evaluate, markdown
    from .metrics import summary_line
    from .train import train

    data = data or cfg.data.data
    preflight(cfg, data)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.json", lambda t: t.write_text(json.dumps(to_dict(cfg), indent=1)))
    selection = (f"minus validation patients {cfg.data.val}; the epoch was picked on them only"
                 if cfg.data.val else "(all of them; recipe and epochs fixed beforehand, last epoch kept)")
    sections = [f"# ecgkit run: {run_dir.name}", "",
                f"seed {cfg.seed}; train {cfg.data.train} {selection}; test {cfg.data.test}, "
                "reported only.", ""]
    model_ref = None
    timings = {}
    if "segment" in cfg.stages:
        t0 = time.time()
        seg = stage_segment(cfg, run_dir, data, log)
        timings["segment"] = time.time() - t0
        sections += ["## QRS detection on the test records (150 ms window)", "",
                     "| segmenter | Se | +P |", "|---|---|---|"]
        sections += [f"| {k} | {100 * v['Se']:.2f} | {100 * v['+P']:.2f} |" for k, v in seg.items()] + [""]
    if "train" in cfg.stages:
        t0 = time.time()
        model_ref = str(train(cfg, run_dir=run_dir / "train", data_dir=data,
                              log=lambda m: log(m)))
        timings["train"] = time.time() - t0
        sections += ["## Training", "", f"best checkpoint `{model_ref}`; curve: `train/training_curve.png`", ""]
    model_ref = model_ref or cfg.model.name
    if "quantize" in cfg.stages:
        from .quantize import quantize

        t0 = time.time()
        qpath = quantize(model_ref, run_dir / "quantize" / "model.int8.pt", data=data)
        timings["quantize"] = time.time() - t0
        sections += ["## Quantization", "", f"int8 model `{qpath}`", ""]
    if "evaluate" in cfg.stages:
        for seg in cfg.evaluate.segmenters:
            t0 = time.time()
            split = cfg.data.test
            rep = evaluate(model_ref, cfg.data.test, data, seg,
                           cfg.data.lead, run_dir / "evaluate" / seg)
            timings[f"evaluate ({seg})"] = time.time() - t0
            sections += [f"## Evaluation on {split}, segmenter `{seg}`", "", markdown(rep), ""]
            log(f"evaluate {seg}: " + summary_line(rep))
    if "explain" in cfg.stages:
        from .explain import explain_examples

        t0 = time.time()
        figs = explain_examples(model_ref, run_dir / "explain", data=data)
        timings["explain"] = time.time() - t0
        sections += ["## Explanations", ""] + [f"![{Path(f).stem}](explain/{Path(f).name})" for f in figs] + [""]
    sections += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    sections += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    report = run_dir / "report.md"
    atomic_write(report, lambda t: t.write_text("\n".join(sections) + "\n"))
    return report


__all__ = ["run_pipeline"]
