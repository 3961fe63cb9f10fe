"""QRS detection benchmark on the MIT-BIH Arrhythmia Database: Pan-Tompkins vs wfdb's XQRS.

    PYTHONPATH=src python benchmarks/qrs.py [--data DIR] [--records 100 105 ...] [--markdown]

Both detectors run on lead 0 of each record. Detections are matched to the reference beat
annotations (beat symbols only) with ``wfdb.processing.compare_annotations`` and a 150 ms
window. Per record: sensitivity Se = TP / (TP + FN), positive predictivity +P = TP / (TP + FP),
the missed (FN) and false (FP) detections, the share of the matched detections on their reference
mark's own sample ("at mark") and their mean distance from it ("offset", ms: fiducial jitter; a
classifier trained on windows cut at the reference marks sees other windows the further the
detector's marks fall), and the detector's run time. The gross rows sum TP,
FN and FP over all records; the second gross row leaves out the ventricular flutter /
fibrillation episodes (between the ``[`` and ``]`` annotations, record 207), whose flutter
waves carry no beat annotation, as beat-by-beat QRS scoring usually does.

The data directory is ``--data``, else ``$ECGKIT_DATA``, else ``../shared/data/mitdb`` next to
the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
try:
    import ecgkit  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))

import wfdb  # noqa: E402
from wfdb.processing import XQRS, compare_annotations  # noqa: E402

from ecgkit.detectors.pan_tompkins import pan_tompkins  # noqa: E402

#: MIT-BIH beat annotation symbols (the beats that count for QRS detection).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")
WINDOW_S = 0.150


def _xqrs(signal: np.ndarray, fs: float) -> np.ndarray:
    detector = XQRS(sig=signal, fs=fs)
    detector.detect(verbose=False)
    return np.asarray(detector.qrs_inds, dtype=np.int64)


DETECTORS = {"pan-tompkins": pan_tompkins, "xqrs": _xqrs}
LABELS = {"pan-tompkins": "PT", "xqrs": "XQRS"}


@dataclass
class Score:
    tp: int = 0
    fn: int = 0
    fp: int = 0
    seconds: float = 0.0
    records: int = 0
    at_mark: int = 0  #: matched detections on the reference mark's own sample
    offset_ms: float = 0.0  #: sum over the matched detections of |detection - reference mark|, in ms

    def add(self, other: "Score") -> None:
        self.tp += other.tp
        self.fn += other.fn
        self.fp += other.fp
        self.at_mark += other.at_mark
        self.offset_ms += other.offset_ms
        self.seconds += other.seconds
        self.records += other.records

    @property
    def se(self) -> float:
        return 100.0 * self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def ppv(self) -> float:
        return 100.0 * self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def at_mark_pct(self) -> float:
        return 100.0 * self.at_mark / self.tp if self.tp else float("nan")

    @property
    def mean_offset_ms(self) -> float:
        return self.offset_ms / self.tp if self.tp else float("nan")

    @property
    def sec_per_record(self) -> float:
        return self.seconds / self.records if self.records else float("nan")


@dataclass
class Row:
    name: str
    scores: dict[str, Score] = field(default_factory=dict)


def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("ECGKIT_DATA"):
        return Path(os.environ["ECGKIT_DATA"])
    return (REPO / ".." / "shared" / "data" / "mitdb").resolve()


def list_records(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.hea") if (directory / f"{p.stem}.atr").exists())


def _outside(samples: np.ndarray, episodes: list[tuple[int, int]]) -> np.ndarray:
    keep = np.ones(len(samples), dtype=bool)
    for start, end in episodes:
        keep &= ~((samples >= start) & (samples <= end))
    return samples[keep]


def score_detections(ref: np.ndarray, det: np.ndarray, window: int, fs: float = 360.0) -> Score:
    """TP / FN / FP of detections ``det`` against reference beats ``ref`` (samples), ``window`` samples apart
    at most (``wfdb.processing.compare_annotations``), and how far the matched detections sit from their
    reference marks (``fs``: the rate, for milliseconds); also used by ``benchmarks/noise.py``."""
    if len(ref) == 0 or len(det) == 0:
        return Score(tp=0, fn=len(ref), fp=len(det))
    c = compare_annotations(ref, det, window)
    d = np.abs(np.asarray(c.matched_test_sample, np.int64) - np.asarray(c.matched_ref_sample, np.int64))
    return Score(tp=int(c.tp), fn=int(c.fn), fp=int(c.fp), at_mark=int((d == 0).sum()),
                 offset_ms=float(d.sum() * 1000.0 / fs))


def evaluate(directory: Path, record: str, detectors: list[str]) -> tuple[Row, Row]:
    """Scores of one record, over the whole record and outside its VF episodes."""
    rec = wfdb.rdrecord(str(directory / record), channels=[0])
    ann = wfdb.rdann(str(directory / record), "atr")
    fs = float(rec.fs)
    signal = np.nan_to_num(rec.p_signal[:, 0].astype(np.float64))
    symbols = np.asarray(ann.symbol)
    samples = np.asarray(ann.sample, dtype=np.int64)
    ref = samples[np.isin(symbols, list(BEAT_SYMBOLS))]
    episodes = list(zip(samples[symbols == "["], samples[symbols == "]"]))
    window = int(round(WINDOW_S * fs))
    whole, no_vf = Row(record), Row(record)
    for name in detectors:
        start = time.perf_counter()
        det = np.asarray(DETECTORS[name](signal, fs), dtype=np.int64)
        seconds = time.perf_counter() - start
        whole.scores[name] = score_detections(ref, det, window, fs)
        no_vf.scores[name] = score_detections(_outside(ref, episodes), _outside(det, episodes), window, fs)
        for s in (whole.scores[name], no_vf.scores[name]):
            s.seconds, s.records = seconds, 1
    return whole, no_vf


def _cells(s: Score) -> list[str]:
    return [f"{s.se:.2f}", f"{s.ppv:.2f}", str(s.fn), str(s.fp), f"{s.at_mark_pct:.1f}", f"{s.mean_offset_ms:.2f}",
            f"{s.sec_per_record:.3f}"]


def _header(detectors: list[str]) -> list[str]:
    cols = ["record"]
    for d in detectors:
        cols += [f"{LABELS[d]} {c}" for c in ("Se %", "+P %", "FN", "FP", "at mark %", "offset ms", "s/rec")]
    return cols


def render_markdown(gross: list[Row], rows: list[Row], detectors: list[str]) -> str:
    header = _header(detectors)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in gross:
        cells = [f"**{row.name}**"] + [f"**{c}**" for d in detectors for c in _cells(row.scores[d])]
        lines.append("| " + " | ".join(cells) + " |")
    for row in rows:
        lines.append("| " + " | ".join([row.name] + [c for d in detectors
                                                     for c in _cells(row.scores[d])]) + " |")
    return "\n".join(lines)


def render_table(gross: list[Row], rows: list[Row], detectors: list[str], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        header = _header(detectors)
        print(title)
        print("  ".join(f"{h:>18s}" for h in header))
        for row in rows + gross:
            cells = [row.name] + [c for d in detectors for c in _cells(row.scores[d])]
            print("  ".join(f"{c:>18s}" for c in cells))
        return
    table = Table(title=title, caption="PT = pan-tompkins (ecgkit), XQRS = wfdb.processing.XQRS")
    table.add_column("record", no_wrap=True)
    for col in _header(detectors)[1:]:
        table.add_column(col, justify="right")
    for i, row in enumerate(rows):
        table.add_row(row.name, *[c for d in detectors for c in _cells(row.scores[d])],
                      end_section=i == len(rows) - 1)
    for row in gross:
        table.add_row(row.name, *[c for d in detectors for c in _cells(row.scores[d])],
                      style="bold")
    console = Console()
    console.width = max(console.width, 130)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="MIT-BIH directory (default $ECGKIT_DATA or ../shared/data/mitdb)")
    ap.add_argument("--records", nargs="+", help="record names (default: all in the directory)")
    ap.add_argument("--detectors", nargs="+", choices=list(DETECTORS), default=list(DETECTORS))
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)

    directory = data_dir(args.data)
    records = args.records or list_records(directory)
    if not records:
        print(f"no MIT-BIH records (.hea + .atr) found in {directory}", file=sys.stderr)
        return 2
    rows, gross_all, gross_no_vf = [], Row("gross"), Row("gross, VF excluded")
    for d in args.detectors:
        gross_all.scores[d], gross_no_vf.scores[d] = Score(), Score()
    for record in records:
        whole, no_vf = evaluate(directory, record, args.detectors)
        rows.append(whole)
        for d in args.detectors:
            gross_all.scores[d].add(whole.scores[d])
            gross_no_vf.scores[d].add(no_vf.scores[d])
        if not args.markdown:
            print(f"{record}: " + ", ".join(
                f"{d} Se {whole.scores[d].se:.2f} +P {whole.scores[d].ppv:.2f}"
                for d in args.detectors), file=sys.stderr)
    gross = [gross_all, gross_no_vf]
    if args.markdown:
        print(render_markdown(gross, rows, args.detectors))
        print(f"\nPT = pan-tompkins (ecgkit), XQRS = wfdb.processing.XQRS; MIT-BIH lead 0, "
              f"{WINDOW_S * 1000:.0f} ms matching window.")
    else:
        render_table(gross, rows, args.detectors,
                     f"QRS detection, MIT-BIH lead 0, {len(records)} records, "
                     f"{WINDOW_S * 1000:.0f} ms window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
