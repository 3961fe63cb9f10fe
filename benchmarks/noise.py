"""Noise robustness: QRS detection and SVEB / VEB classification under calibrated, synthetic noise.

    python benchmarks/noise.py [--model transnet] [--records DS2] [--snr 24 18 12 6 0]
                               [--noise bw ma em] [--quick] [--minutes M] [--seed 0] [--markdown]

The MIT-BIH Noise Stress Test Database (nstdb) is not available here, so its three noise types
are synthesised, seeded (one realisation per record and noise type, only its gain changes with
the SNR, as in nstdb), at the record's own sampling rate:

* ``bw`` baseline wander: six sinusoids of 0.05-0.5 Hz with random phases and 1/sqrt(f)
  amplitudes, plus respiration (0.2-0.35 Hz, slowly amplitude-modulated);
* ``ma`` muscle artefact (EMG-like): Gaussian noise band-limited to 20-150 Hz (clipped at
  0.45 fs), multiplied by an envelope of a low floor plus random bursts of 0.3-2 s;
* ``em`` electrode motion: random baseline steps with exponential recoveries (tau 0.2-1.5 s)
  plus bursts of 0.5-10 Hz band-limited noise of 0.5-3 s.

SNR definition (modelled on the WFDB ``nst`` tool that built nstdb): the signal power
``S = pp**2 / 8``, where ``pp`` is the mean peak-to-peak amplitude of the clean lead within
+-60 ms of each reference beat (the 5 % smallest and 5 % largest removed); ``pp**2 / 8`` is the
power of a sinusoid with that peak-to-peak amplitude. The noise power ``N`` is the mean square
of the (zero-mean) noise over the whole record. The noise is scaled so that
``10 log10(S / N) = SNR``. Because S is measured on QRS amplitude, not the ECG's own variance, a
0 dB record has noise as large as its QRS complexes.

For every noise type and SNR, over the records: the Pan-Tompkins detector's Se / +P (reference
beats of any type, 150 ms window, ``wfdb.processing.compare_annotations``) and, end to end, the
model's SVEB and VEB Se / +P / F1: each noisy record is an in-memory ``ecgkit.io.Record``,
labelled by ``ecgkit.annotate.annotate_record(model, spec, record, detector)``, and each AAMI
reference beat takes the class of the nearest detection within 150 ms, or "missed" (counted as
an error of its class), exactly as ``ecgkit.evaluate.classify_records`` matches (the script
checks that it reproduces classify_records on the clean records). The "clean" rows are the
records without added noise.

``--quick``: three DS2 records (100; 200, rich in VEB; 232, rich in SVEB), SNR 12 and 0 dB.
``--minutes M`` keeps only the first M minutes of each record (development runs).
"""

from __future__ import annotations

import argparse
import math
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
try:
    import ecgkit  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))

if str(Path(__file__).resolve().parent) not in sys.path:  # benchmarks/qrs.py, when not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from scipy import signal as sps  # noqa: E402

NOISES = {"bw": "baseline wander", "ma": "muscle, EMG", "em": "electrode motion"}
SNRS = (24.0, 18.0, 12.0, 6.0, 0.0)
QUICK_RECORDS = ("100", "200", "232")
QUICK_SNRS = (12.0, 0.0)
TOLERANCE_S = 0.150
QRS_HALF_S = 0.060


# --- noise synthesis -------------------------------------------------------------------------

def _bursts(n: int, fs: float, rng, rate_s: float, dur_s: tuple[float, float], amp: tuple[float, float]):
    """Sum of Hann-shaped bursts at Poisson times (mean gap ``rate_s`` seconds)."""
    env = np.zeros(n)
    t = rng.exponential(rate_s)
    while t * fs < n:
        d = int(max(2, rng.uniform(*dur_s) * fs))
        i0 = int(t * fs)
        w = np.hanning(d) * rng.uniform(*amp)
        i1 = min(n, i0 + d)
        env[i0:i1] += w[: i1 - i0]
        t += d / fs + rng.exponential(rate_s)
    return env


def _band(x: np.ndarray, fs: float, lo: float, hi: float, order: int = 4) -> np.ndarray:
    hi = min(hi, 0.45 * fs)
    if len(x) < 3 * (2 * order + 1) + 1:
        return x - x.mean()
    sos = sps.butter(order, [lo, hi], btype="bandpass", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, x)


def baseline_wander(n: int, fs: float, rng) -> np.ndarray:
    t = np.arange(n) / fs
    f = rng.uniform(0.05, 0.5, size=6)
    a = rng.uniform(0.5, 1.0, size=6) / np.sqrt(f / 0.05)
    ph = rng.uniform(0, 2 * np.pi, size=6)
    x = (a[:, None] * np.sin(2 * np.pi * f[:, None] * t[None, :] + ph[:, None])).sum(0)
    fr = rng.uniform(0.2, 0.35)
    drift = 1 + 0.05 * np.sin(2 * np.pi * 0.005 * t + rng.uniform(0, 2 * np.pi))  # breathing rate wanders
    am = 1 + 0.3 * np.sin(2 * np.pi * 0.02 * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(fr * drift) / fs + rng.uniform(0, 2 * np.pi)
    return x + a.mean() * am * np.sin(phase)


def muscle(n: int, fs: float, rng) -> np.ndarray:
    w = _band(rng.normal(size=n), fs, 20.0, 150.0)
    env = 0.25 + _bursts(n, fs, rng, rate_s=4.0, dur_s=(0.3, 2.0), amp=(0.5, 2.0))
    return w * env


def electrode_motion(n: int, fs: float, rng) -> np.ndarray:
    steps = np.zeros(n)
    t = rng.exponential(8.0)
    while t * fs < n:
        i0, tau = int(t * fs), rng.uniform(0.2, 1.5)
        span = min(n - i0, int(6 * tau * fs))
        steps[i0:i0 + span] += rng.normal() * np.exp(-np.arange(span) / (tau * fs))
        t += rng.exponential(8.0)
    lf = _band(rng.normal(size=n), fs, 0.5, 10.0, order=2)
    lf *= _bursts(n, fs, rng, rate_s=6.0, dur_s=(0.5, 3.0), amp=(0.5, 1.5))
    s = steps / (steps.std() or 1.0)
    b = lf / (lf.std() or 1.0)
    return s + b


GENERATORS = {"bw": baseline_wander, "ma": muscle, "em": electrode_motion}


def make_noise(kind: str, n: int, fs: float, seed: int, record: str) -> np.ndarray:
    """Zero-mean, unit-power noise of ``kind``; one realisation per (seed, record, kind)."""
    rng = np.random.default_rng([seed, zlib.crc32(record.encode()), list(GENERATORS).index(kind)])
    x = GENERATORS[kind](n, fs, rng)
    x = x - x.mean()
    p = float(np.mean(x ** 2))
    return x / math.sqrt(p) if p > 0 else x


def signal_power(x: np.ndarray, beats: np.ndarray, fs: float) -> float:
    """nst-style S = pp**2 / 8 from the trimmed mean QRS peak-to-peak amplitude (+-60 ms)."""
    h = int(round(QRS_HALF_S * fs))
    pp = np.array([np.ptp(x[max(0, b - h): b + h + 1]) for b in beats if b - h >= 0 and b + h < len(x)])
    if pp.size == 0:
        raise ValueError("no reference beats to measure the QRS amplitude")
    lo, hi = np.percentile(pp, [5, 95])
    pp = pp[(pp >= lo) & (pp <= hi)]
    return float(pp.mean() ** 2 / 8)


def add_noise(x: np.ndarray, noise: np.ndarray, s_power: float, snr_db: float) -> np.ndarray:
    """``x + a * noise`` with ``a`` such that 10 log10(S / (a**2 * mean(noise**2))) = snr_db."""
    a = math.sqrt(s_power / (10 ** (snr_db / 10) * float(np.mean(noise ** 2))))
    return x + a * noise


# --- scoring ----------------------------------------------------------------------------------

@dataclass
class Cell:
    """Pooled results of one (noise, SNR) condition over the records."""

    tp: int = 0
    fn: int = 0
    fp: int = 0
    y: list = field(default_factory=list)
    p: list = field(default_factory=list)
    r: list = field(default_factory=list)

    def add(self, ref_all, peaks, ref_samples, ref_labels, pred, fs, name):
        from qrs import score_detections  # benchmarks/qrs.py: the same QRS Se / +P scoring

        from ecgkit.evaluate import match_to_reference

        tol = int(round(TOLERANCE_S * fs))
        q = score_detections(ref_all, peaks, tol)
        self.tp += q.tp; self.fn += q.fn; self.fp += q.fp

        y_pred, _ = match_to_reference(ref_samples, peaks, pred, tol)
        self.y.append(ref_labels); self.p.append(y_pred); self.r.append(np.full(ref_labels.size, name))

    def row(self) -> dict:
        from ecgkit.metrics import ec57_report

        rep = ec57_report(np.concatenate(self.y), np.concatenate(self.p), np.concatenate(self.r))
        g = rep["gross"]
        return {"Se": _div(self.tp, self.tp + self.fn), "+P": _div(self.tp, self.tp + self.fp),
                "S_Se": g["S"]["Se"], "S_P": g["S"]["+P"], "S_F1": g["S"]["F1"],
                "V_Se": g["V"]["Se"], "V_P": g["V"]["+P"], "V_F1": g["V"]["F1"],
                "acc": rep["accuracy"], "n": rep["n_beats"]}


def _div(a, b) -> float:
    return a / b if b else float("nan")


# --- the run ----------------------------------------------------------------------------------

def run(model_ref: str, records, snrs, noises, data=None, seed: int = 0, minutes: float | None = None,
        lead=None, progress=None) -> tuple[dict, dict]:
    """``({(noise, snr): row}, info)``; noise ``"clean"`` with snr ``inf`` is the baseline."""
    from ecgkit.annotate import annotate_record
    from ecgkit.datasets import iter_records
    from ecgkit.datasets.mitdb import BEAT_SYMBOLS, reference_beats
    from ecgkit.evaluate import classify_records
    from ecgkit.inference import second_lead, uses_second_lead
    from ecgkit.io import Record, read_annotations
    from ecgkit.models import load_any_model
    from ecgkit.registry import create

    model, spec, info = load_any_model(model_ref)
    detector = create("segmenters", "pan-tompkins")
    stream = iter_records(records, data, lead)  # fails fast on a bad record name
    cells: dict = {}
    checked = []
    for rec in stream:
        if minutes:
            rec.signal = rec.signal[: int(minutes * 60 * rec.fs)]
        n, fs = len(rec.signal), rec.fs
        ref_s, ref_sym = read_annotations(rec.path, "atr")
        inside = ref_s < n
        ref_s, ref_sym = ref_s[inside], [s for s, k in zip(ref_sym, inside) if k]
        ref_all = ref_s[[s in BEAT_SYMBOLS for s in ref_sym]]
        ref_samples, ref_labels = reference_beats(ref_s, ref_sym)
        s_power = signal_power(rec.signal, ref_all, fs)
        # a model reading a second lead gets that lead noisy too: its own realisation, scaled to its own QRS power
        lead2 = second_lead(rec)[0] if uses_second_lead(spec) else None
        if lead2 is not None:
            x2 = rec.others[lead2][:n]
            s_power2 = signal_power(x2, ref_all, fs)

        def score(key, sig, others=None):
            noisy = Record(signal=sig, fs=fs, lead=rec.lead, name=rec.name, path=rec.path, units=rec.units,
                           others=others if others is not None else ({lead2: x2} if lead2 else {}))
            peaks, symbols, _ = annotate_record(model, spec, noisy, detector)
            pred = np.array([spec["classes"].index(s) for s in symbols], dtype=np.int64)
            cell = cells.setdefault(key, Cell())
            cell.add(ref_all, peaks, ref_samples, ref_labels, pred, fs, rec.name)
            return cell

        clean = score(("clean", math.inf), rec.signal)
        if not minutes:  # the in-memory path must agree with ecgkit's own evaluation on the clean record
            y, p, _, _ = classify_records(model, spec, [rec.path], "pan-tompkins", lead)
            checked.append(bool(np.array_equal(y, clean.y[-1]) and np.array_equal(p, clean.p[-1])))
        for kind in noises:
            noise = make_noise(kind, n, fs, seed, rec.name)
            noise2 = make_noise(kind, n, fs, seed, rec.name + "/" + lead2) if lead2 else None
            for snr in snrs:
                others = {lead2: add_noise(x2, noise2, s_power2, float(snr))} if lead2 else None
                score((kind, float(snr)), add_noise(rec.signal, noise, s_power, float(snr)), others)
                if progress:
                    progress(f"{rec.name} {kind} {snr:g} dB")
    rows = {k: c.row() for k, c in cells.items()}
    info = {**info, "records": [Path(p).name for p in stream.paths], "seed": seed, "minutes": minutes,
            "matches_classify_records": all(checked) if checked else None}
    return rows, info


# --- output -----------------------------------------------------------------------------------

COLUMNS = ("noise", "SNR dB", "QRS Se", "QRS +P", "SVEB Se", "SVEB +P", "SVEB F1", "VEB Se", "VEB +P", "VEB F1",
           "acc")


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _cells(key, row) -> list[str]:
    kind, snr = key
    return [kind if kind == "clean" else f"{kind} ({NOISES[kind]})", "-" if math.isinf(snr) else f"{snr:g}",
            *(_pct(row[k]) for k in ("Se", "+P", "S_Se", "S_P", "S_F1", "V_Se", "V_P", "V_F1", "acc"))]


def _order(rows: dict) -> list:
    return sorted(rows, key=lambda k: (k[0] != "clean", list(NOISES).index(k[0]) if k[0] in NOISES else -1, -k[1]))


def caption(info: dict) -> str:
    m = f", first {info['minutes']:g} min" if info.get("minutes") else ""
    check = {True: "; clean rows reproduce ecgkit.evaluate.classify_records",
             False: "; WARNING: clean rows differ from ecgkit.evaluate.classify_records", None: ""}
    return (f"{len(info['records'])} records ({', '.join(info['records'])}{m}), seed {info['seed']}; "
            f"pan-tompkins, 150 ms; SNR = 10 log10(S/N), S = (QRS p-p)^2/8, N = noise mean square"
            f"{check[info.get('matches_classify_records')]}")


def render_markdown(rows: dict, info: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|"]
    lines += ["| " + " | ".join(_cells(k, rows[k])) + " |" for k in _order(rows)]
    return "\n".join(lines) + f"\n\n{caption(info)}. Figures in %.\n"


def render_table(rows: dict, info: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption(info))
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
    keys = _order(rows)
    for i, k in enumerate(keys):
        nxt = keys[i + 1][0] if i + 1 < len(keys) else None
        table.add_row(*_cells(k, rows[k]), end_section=nxt != k[0])
    console = Console()
    console.width = max(console.width, 140)
    console.print(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="transnet", help="registered model name or checkpoint file")
    ap.add_argument("--records", nargs="+", default=None, help="record names, paths or a split (default DS2)")
    ap.add_argument("--snr", nargs="+", type=float, default=None, help="SNRs in dB (default 24 18 12 6 0)")
    ap.add_argument("--noise", nargs="+", choices=list(NOISES), default=None, help="noise types (default all)")
    ap.add_argument("--quick", action="store_true", help=f"records {' '.join(QUICK_RECORDS)}, SNR 12 and 0 dB")
    ap.add_argument("--minutes", type=float, default=None, help="use only the first M minutes of each record")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="MIT-BIH directory (default $ECGKIT_DATA)")
    ap.add_argument("--lead", default=None)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table instead")
    args = ap.parse_args(argv)

    records = args.records or (list(QUICK_RECORDS) if args.quick else ["DS2"])
    snrs = args.snr or (list(QUICK_SNRS) if args.quick else list(SNRS))
    noises = args.noise or list(NOISES)

    from ecgkit.datasets import resolve_records
    from ecgkit.errors import EcgkitError
    from ecgkit.progress import progress_bar

    try:
        total = len(resolve_records(records, args.data)) * len(noises) * len(snrs)
        with progress_bar() as bar:
            task = bar.add_task("noise stress", total=total)
            rows, info = run(args.model, records, snrs, noises, args.data, args.seed, args.minutes, args.lead,
                             progress=lambda d: bar.update(task, advance=1, description=d))
    except EcgkitError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if args.markdown:
        print(render_markdown(rows, info))
    else:
        render_table(rows, info, f"Noise robustness of {args.model} (synthetic nstdb-like noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
