"""Make the figures of the documentation (docs/img/) from real runs.

    python docs/scripts/make_figures.py                      # every figure it can make
    python docs/scripts/make_figures.py --model runs/mitdb_inter_patient/train/best.pt
    python docs/scripts/make_figures.py --only ecg           # just the ECG trace

Figures:

* ``ecg_beats.png``: MIT-BIH record 100 (lead MLII, first 10 s) with its reference beats
  and the beats detected by the ``pan-tompkins`` segmenter. Needs the data only.
* ``ectopic_p.png``: real atrial premature beats of DS1 record 220 against its median beat,
  and a sinus beat of record 100 with the P waves ``train.augment.ectopic_p`` draws for it.
  Needs the data only.
* ``confusion_matrix.png``: copied from ``ecgkit evaluate --model MODEL --split DS2
  --out DIR`` (the command writes it). Needs a model: ``--model`` (a checkpoint or a
  registered name; default ``transnet`` when the plugin ships its weights).
* ``gradcam_V.png``: copied from ``ecgkit explain --method gradcam`` on a V beat of
  record 233 (a DS2 patient): the first one from beat 10 on that follows an N beat.
  Skipped, with a message, while the explain stage is not available.
* ``neighbour_overlap.png``: what ``train.augment.neighbour_overlap`` does: a real premature
  S beat of DS1 record 209 and the beat before it, beside a synthetic premature beat made
  from two consecutive N beats of record 100, without and with the key. Needs the data only.
* ``rhythm_stress.png``: the synthetic records of ``benchmarks/rhythm_stress.py``: DS1 record
  209 as recorded, rebuilt from its own beats as a sparse-S rhythm and as an S-majority
  rhythm (8 s each, reference labels). Needs the data only.
* ``block_rhythm.png``: DS1 record 115 rebuilt as the 2:1 AV block rhythm of
  ``benchmarks/rhythm_stress.py --block`` (every beat N), with each model's classes, one row per
  ``--block-model LABEL=MODEL`` (default: the ``--model``).

The data directory is ``--data``, else ``$ECGKIT_DATA``. Every figure is made by ecgkit's
own code paths; nothing is drawn from made-up numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1]
IMG = DOCS / "img"
MAX_BYTES = 150_000


def ecgkit_cmd() -> list[str]:
    """The ``ecgkit`` command of the running interpreter's environment."""
    exe = Path(sys.executable).parent / "ecgkit"
    return [str(exe)] if exe.is_file() else [sys.executable, "-c", "from ecgkit.cli import main; main()"]


def compact_png(path: Path, colors: int = 128) -> Path:
    """Palette-quantise a PNG in place when that makes it smaller (Pillow comes with matplotlib)."""
    try:
        from PIL import Image
    except ImportError:
        return path
    img = Image.open(path).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    tmp = path.with_name(path.stem + ".tmp.png")
    img.save(tmp, optimize=True)
    if tmp.stat().st_size < path.stat().st_size:
        os.replace(tmp, path)
    else:
        tmp.unlink()
    return path


def save_png(fig, path: Path, dpi: int = 100) -> Path:
    """Save ``fig`` as a compact PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return compact_png(path, colors=64)


def ecg_beats(data: Path, out: Path, record: str = "100", seconds: float = 10.0) -> Path:
    """Record 100, first ``seconds``: the MLII trace, reference beats and pan-tompkins detections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ecgkit
    from ecgkit.datasets.mitdb import BEAT_SYMBOLS
    from ecgkit.io import read_annotations, read_record
    from ecgkit.segment import detect_beats

    rec = read_record(data / record)  # lead MLII
    detected = detect_beats(ecgkit.create("segmenters", "pan-tompkins"), rec)  # the whole record, as `ecgkit segment`
    ref_samples, ref_symbols = read_annotations(rec.path, "atr")
    is_beat = np.array([s in BEAT_SYMBOLS for s in ref_symbols], dtype=bool)
    ref_samples, ref_symbols = ref_samples[is_beat], [s for s, b in zip(ref_symbols, is_beat) if b]

    n = int(seconds * rec.fs)
    t = np.arange(n) / rec.fs
    x = rec.signal[:n]
    ref_in = [(s, sym) for s, sym in zip(ref_samples, ref_symbols) if s < n]
    det_in = detected[detected < n]

    fig, ax = plt.subplots(figsize=(10, 3.0))
    ax.plot(t, x, color="0.15", lw=0.8, label=f"lead {rec.lead}")
    top = x.max() + 0.25
    for s, sym in ref_in:
        ax.text(s / rec.fs, top + 0.12, sym, ha="center", va="bottom", fontsize=8, color="tab:blue")
    ax.plot([s / rec.fs for s, _ in ref_in], [top] * len(ref_in), "v", color="tab:blue", ms=6,
            label="reference beats (.atr) with their symbol")
    ax.plot(det_in / rec.fs, x[det_in], "o", mfc="none", mec="tab:red", ms=9, mew=1.5,
            label="pan-tompkins detections")
    ax.set(xlim=(0, seconds), ylim=(x.min() - 0.6, top + 0.55), xlabel="time (s)", ylabel=f"{rec.units}",
           title=f"MIT-BIH record {rec.name}, first {seconds:g} s: {len(ref_in)} reference beats, "
                 f"{len(det_in)} detections")
    ax.legend(loc="lower right", fontsize=8, ncol=3, framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = save_png(fig, out / "ecg_beats.png")
    plt.close(fig)
    return path


def _registered_model(name: str) -> bool:
    from ecgkit.registry import collect

    try:
        return name in collect("models")
    except Exception:
        return False


def confusion_matrix(model: str, data: Path, out: Path) -> Path | None:
    """``ecgkit evaluate --model MODEL --split DS2 --out DIR``; copy its confusion_matrix.png."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ecgkit_cmd() + ["evaluate", "--model", model, "--split", "DS2", "--data", str(data), "--out", tmp]
        print("running: ecgkit", " ".join(cmd[cmd.index("evaluate"):]), file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"skipping the confusion matrix: ecgkit evaluate failed: {proc.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            return None
        print(proc.stdout.split("\n\n")[0], file=sys.stderr)
        dest = out / "confusion_matrix.png"
        shutil.copyfile(Path(tmp) / "confusion_matrix.png", dest)
        return compact_png(dest, colors=256)


def typical_beat_of_class(data: Path, record: str, cls: str, min_index: int = 10) -> int:
    """Index, among the record's reference beats (the ``reference`` segmenter), of a beat of class ``cls``.

    The first one from ``min_index`` on that follows an N beat: away from the record's
    start (where RR features are edge values) and premature against a normal rhythm.
    """
    from ecgkit.datasets.mitdb import BEAT_SYMBOLS, aami_class
    from ecgkit.io import read_annotations

    samples, symbols = read_annotations(data / record, "atr")
    beats = sorted({int(s): sym for s, sym in zip(samples, symbols) if sym in BEAT_SYMBOLS}.items())
    classes = [aami_class(sym) for _, sym in beats]
    for i in range(max(min_index, 1), len(classes)):
        if classes[i] == cls and classes[i - 1] == "N":
            return i
    raise ValueError(f"record {record} has no {cls} beat after an N beat")


def gradcam(model: str, data: Path, out: Path, record: str = "233", cls: str = "V") -> Path | None:
    """``ecgkit explain --method gradcam`` on a typical ``cls`` beat of ``record``; copy its PNG."""
    beat = typical_beat_of_class(data, record, cls)
    print(f"running: ecgkit explain --record {record} --beat {beat} --method gradcam", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ecgkit_cmd() + ["explain", "--model", model, "--record", record, "--beat", str(beat),
                              "--method", "gradcam", "--segmenter", "reference", "--data", str(data), "--out", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        pngs = sorted(Path(tmp).glob("**/*.png"))
        if proc.returncode != 0 or not pngs:
            why = (proc.stderr.strip().splitlines() or ["no PNG written"])[-1]
            print(f"skipping the Grad-CAM figure: the explain stage is not available yet ({why})", file=sys.stderr)
            return None
        dest = out / f"gradcam_{cls}.png"
        shutil.copyfile(pngs[0], dest)
        return compact_png(dest, colors=256)


def _windows(data: Path, record: str, spec: dict):
    """(beat windows at the model's rate, RR features, labels) of a record's reference beats."""
    from ecgkit.datasets.mitdb import reference_beats
    from ecgkit.inference import prepare_record
    from ecgkit.io import read_annotations, read_record

    rec = read_record(data / record)
    samples, labels = reference_beats(*read_annotations(rec.path, "atr"))
    prep = prepare_record(rec, samples, spec)
    return prep["W"], prep["rr"], labels


def neighbour_overlap_figure(data: Path, out: Path) -> Path:
    """A real premature S beat (209) and a synthetic one (100) without / with neighbour_overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ecgkit.train import neighbour_overlap

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    fs, b = spec["fs_hz"], spec["before_samples"]
    t = (np.arange(b + spec["after_samples"]) - b) / fs
    W, rr, y = _windows(data, "209", spec)
    # the first S beat at under 70 % of the local RR, between N beats
    i = next(k for k in range(11, len(y) - 1) if y[k] == 1 and y[k - 1] == 0 and y[k + 1] == 0
             and rr[k, 0] < 0.7 * rr[k, 2])
    panels = [("record 209: a real S beat (A)\nand the N beat before it", W[i - 1], W[i], float(rr[i, 0]))]
    W0, rr0, y0 = _windows(data, "100", spec)
    k = next(k for k in range(11, len(y0) - 1) if (y0[k - 1:k + 2] == 0).all())
    pre = torch.from_numpy(rr0[None, k - 1:k + 2, 0].copy())            # (1, 3) recorded intervals
    new = pre.clone()
    d = 0.4 * float(pre[0, 1])
    new[0, 1] -= d                                                     # beat k at 0.6 of the interval ...
    new[0, 2] += d                                                     # ... and the time given back after it
    seq = torch.from_numpy(W0[None, k - 1:k + 2].copy())
    moved = neighbour_overlap(seq, pre, new, fs)[0].numpy()
    panels.append(("record 100: an N beat made premature (0.6 x RR),\nwindows as recorded", W0[k - 1], W0[k],
                   float(new[0, 1])))
    panels.append(("the same with neighbour_overlap:\neach window shows its neighbour", moved[0], moved[1],
                   float(new[0, 1])))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
    for ax, (title, prev, cur, interval) in zip(axes, panels):
        ax.plot(t - interval, prev, color="0.55", lw=1.0, label="window of the beat before")
        ax.plot(t, cur, color="tab:red", lw=1.3, label="window of the premature beat")
        ax.axvspan(t[0], t[-1], color="tab:red", alpha=0.05)
        ax.set(title=title, xlabel="time from the premature beat's R (s)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("z-scored lead MLII")
    axes[0].legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    path = save_png(fig, out / "neighbour_overlap.png")
    plt.close(fig)
    return path


def ectopic_p_figure(data: Path, out: Path) -> Path:
    """Real S beats against their patient's median (220) beside what train.augment.ectopic_p draws (100)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ecgkit.inference import prepare_record
    from ecgkit.io import read_annotations, read_record
    from ecgkit.datasets.mitdb import reference_beats
    from ecgkit.train import ectopic_p

    spec = {"fs_hz": 180.0, "before_samples": 64, "after_samples": 80}
    fs, b = spec["fs_hz"], spec["before_samples"]
    t = (np.arange(b + spec["after_samples"]) - b) / fs
    a0, b0 = b - round(0.32 * fs), b - round(0.07 * fs)

    def prep(record):
        rec = read_record(data / record)
        samples, labels = reference_beats(*read_annotations(rec.path, "atr"))
        return prepare_record(rec, samples, spec), labels

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), sharey=True)
    d, y = prep("220")
    ax = axes[0]
    ax.plot(t, d["med"], color="0.2", lw=1.6, label="median beat (sinus)")
    for j, i in enumerate(np.flatnonzero(y == 1)[5:45:8]):
        ax.plot(t, d["W"][i], color="tab:red", lw=0.9, alpha=0.7, label="S beats (A)" if j == 0 else None)
    ax.set_title("record 220 (DS1): real atrial premature beats against the median beat", fontsize=9)
    d, y = prep("100")
    W = torch.from_numpy(np.stack([d["W"][100:104]] * 3))           # 3 sequences of 4 sinus beats
    med = torch.from_numpy(np.stack([d["med"]] * 3))
    yy = torch.ones(3, 4, dtype=torch.long)
    W2, _ = ectopic_p(W, med, yy, torch.ones(3, dtype=torch.bool), torch.Generator().manual_seed(5), b, fs)  # factors 0.25, -0.81, 0.36
    ax = axes[1]
    ax.plot(t, W[0, 0], color="0.2", lw=1.6, label="a sinus beat")
    for j in range(3):
        ax.plot(t, W2[j, 0], lw=0.9, color=("tab:red", "tab:orange", "tab:purple")[j],
                label="with ectopic_p, three foci" if j == 0 else None)
    ax.set_title("record 100: one sinus beat and the P waves ectopic_p gives it", fontsize=9)
    for ax in axes:
        ax.axvspan(t[a0], t[b0 - 1], color="tab:blue", alpha=0.07, label="P segment edited")
        ax.set(xlabel="time from R (s)", xlim=(t[0], 0.25))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower left")
    axes[0].set_ylabel("z-scored lead MLII")
    fig.tight_layout()
    path = save_png(fig, out / "ectopic_p.png")
    plt.close(fig)
    return path


def _rhythm_stress():
    """benchmarks/rhythm_stress.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rhythm_stress", DOCS.parent / "benchmarks" / "rhythm_stress.py")
    rs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rs)
    return rs


def rhythm_stress_figure(data: Path, out: Path, record: str = "209", seconds: float = 8.0) -> Path:
    """Record 209 as recorded and rebuilt into the two rhythms of benchmarks/rhythm_stress.py."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ecgkit.datasets.mitdb import AAMI_CLASSES, reference_beats
    from ecgkit.io import read_annotations, read_record

    rs = _rhythm_stress()
    rec = read_record(data / record)
    peaks, cls = reference_beats(*read_annotations(rec.path, "atr"))
    labels = np.array(AAMI_CLASSES)[cls]
    rng = np.random.default_rng([0, int(record)])   # the benchmark's draws for this record
    x = rs.source_signal(rec)
    sparse = rs.synthetic_record(rec, peaks, labels, "sparse", 1800, rng, x)
    majority = rs.synthetic_record(rec, peaks, labels, "majority", 1800, rng, x)
    rows = [("as recorded (band-passed)", rs.rebuilt(rec, peaks, x), peaks, labels, 52.0),
            ("sparse: sinus rhythm, about 1 beat in 10 an S beat at its recorded coupling interval", *sparse, 30.0),
            ("majority: runs of S beats, each run ended by a pause and one N beat", *majority, 30.0)]
    fig, axes = plt.subplots(3, 1, figsize=(12, 6.2), sharey=True)
    n = int(seconds * rec.fs)
    for ax, (title, r, p, y, start) in zip(axes, rows):
        a = int(start * rec.fs)
        t = np.arange(n) / rec.fs
        ax.plot(t, r.signal[a:a + n], color="0.2", lw=0.9)
        for q, lab in zip(p, y):
            if a <= q < a + n:
                ax.text((q - a) / rec.fs, 1.05 * r.signal[a:a + n].max(), lab, ha="center", fontsize=9,
                        color="tab:red" if lab == "S" else "0.3", fontweight="bold" if lab == "S" else None)
        ax.set_title(f"record {record}, {title}", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    axes[1].set_ylabel(f"lead {rec.lead} (mV)")
    fig.tight_layout()
    path = save_png(fig, out / "rhythm_stress.png")
    plt.close(fig)
    return path


def block_rhythm_figure(data: Path, out: Path, models: list[tuple[str, str]], record: str = "115",
                        seconds: float = 24.0) -> Path:
    """DS1 record 115 rebuilt as the 2:1 block rhythm of ``rhythm_stress.py --block``, classified by ``models``.

    The first 1:1 stretch that follows a 2:1 stretch is shown from a few beats before it begins; each
    row is one model's classes (S in red). Every beat is N. ``models``: ``(label, name or path)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ecgkit.datasets.mitdb import AAMI_CLASSES, reference_beats
    from ecgkit.inference import predict_log_proba, prepare_record
    from ecgkit.io import read_annotations, read_record
    from ecgkit.models import load_any_model

    rs = _rhythm_stress()
    rec = read_record(data / record)
    peaks, cls = reference_beats(*read_annotations(rec.path, "atr"))
    labels = np.array(AAMI_CLASSES)[cls]
    rng = np.random.default_rng([0, int(record), 2])   # the benchmark's draws for this record
    r, p, blocked = rs.block_record(rec, peaks, labels, 1800, rng)
    first = next(i for i in range(1, len(blocked)) if blocked[i - 1] and not blocked[i])
    a = int(p[max(first - 6, 0)] - 0.5 * rec.fs)
    n = int(seconds * rec.fs)
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 2.3 * len(models) + 0.4), sharey=True, squeeze=False)
    t = np.arange(n) / rec.fs
    for ax, (label, m) in zip(axes[:, 0], models):
        model, mspec, _ = load_any_model(m)
        pred = np.array(AAMI_CLASSES)[predict_log_proba(model, prepare_record(r, p, mspec), mspec).argmax(1)]
        seg = r.signal[a:a + n]
        ax.plot(t, seg, color="0.2", lw=0.9)
        inside = (p >= a) & (p < a + n)
        for q, c in zip(p[inside], pred[inside]):
            ax.text((q - a) / rec.fs, 1.05 * seg.max(), c, ha="center", fontsize=9,
                    color="tab:red" if c == "S" else "0.3", fontweight="bold" if c == "S" else None)
        called = 100 * np.mean(pred[~blocked] == "S")
        ax.set_title(f"{label}: classes (every beat is N); {called:.1f} % of the record's 1:1 beats called S",
                     fontsize=9, loc="left", pad=16)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s): 2:1 conduction (every other P wave blocked), then 1:1 conduction")
    axes[0, 0].set_ylabel(f"lead {rec.lead} (mV)")
    fig.suptitle(f"DS1 record {record} rebuilt from its own N beats with stretches of 2:1 AV block "
                 "(benchmarks/rhythm_stress.py --block)", fontsize=10)
    fig.tight_layout()
    path = save_png(fig, out / "block_rhythm.png")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("ECGKIT_DATA"), help="MIT-BIH directory (default $ECGKIT_DATA)")
    ap.add_argument("--model", default=None, help="checkpoint or registered model (default: transnet if registered)")
    ap.add_argument("--only", default="ecg,overlap,ectopic,stress,block,confusion,gradcam",
                    help="comma-separated subset of ecg,overlap,ectopic,stress,block,confusion,gradcam")
    ap.add_argument("--block-model", action="append", default=[], metavar="LABEL=MODEL",
                    help="a row of block_rhythm.png (repeatable; default: the --model, or transnet)")
    ap.add_argument("--out", default=str(IMG), help="output directory (default docs/img)")
    args = ap.parse_args(argv)
    if not args.data:
        ap.error("no data directory: pass --data or set ECGKIT_DATA")
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {s.strip() for s in args.only.split(",")}
    made = []
    if "ecg" in only:
        made.append(ecg_beats(data, out))
    if "overlap" in only:
        made.append(neighbour_overlap_figure(data, out))
    if "ectopic" in only:
        made.append(ectopic_p_figure(data, out))
    if "stress" in only:
        made.append(rhythm_stress_figure(data, out))
    model = args.model or ("transnet" if _registered_model("transnet") else None)
    if only & {"confusion", "gradcam"} and model is None:
        print("skipping the confusion matrix and Grad-CAM figures: no model (pass --model CHECKPOINT)",
              file=sys.stderr)
    elif model is not None:
        if "confusion" in only:
            made.append(confusion_matrix(model, data, out))
        if "gradcam" in only:
            made.append(gradcam(model, data, out))
    if "block" in only:
        rows = [tuple(b.split("=", 1)) for b in args.block_model] or ([(model, model)] if model else [])
        if rows:
            made.append(block_rhythm_figure(data, out, rows))
    for p in filter(None, made):
        size = p.stat().st_size
        print(f"wrote {p} ({size / 1024:.0f} KB){'  WARNING: over 150 KB' if size > MAX_BYTES else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
