"""Reading WFDB records and writing WFDB annotations, through ``wfdb`` only.

A record travels through ecgkit as a :class:`Record`: one lead in mV (the model's
first lead), its sampling rate, lead name and record name, and the record's other leads
(``others``) for models that read a second lead. Everything that can go wrong with a file on disk
becomes a one-line :class:`~ecgkit.errors.RecordError`.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import wfdb

from .errors import RecordError

#: Bytes per sample of the WFDB storage formats (used to detect truncated signal files).
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "61": 2, "80": 1, "160": 2, "212": 1.5, "24": 3, "32": 4,
                     "310": 4 / 3, "311": 4 / 3}


@dataclass
class Record:
    """A WFDB record: its chosen lead, plus the other leads.

    Attributes:
        signal: 1-D float64 array in the record's physical units (mV for ECG).
        fs: sampling rate in Hz.
        lead: name of the lead (e.g. ``MLII``).
        name: record name (file stem, e.g. ``100``).
        path: record path without extension (``str``), used to find annotation files.
        others: the record's other leads in header order, name -> 1-D float64 array like
            ``signal`` (same rate and length, mV); a lead with no valid sample is left out.
    """

    signal: np.ndarray
    fs: float
    lead: str
    name: str
    path: str
    units: str = "mV"
    meta: dict = field(default_factory=dict)
    others: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return len(self.signal) / self.fs


def _record_base(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix in (".hea", ".dat", ".atr"):
        p = p.with_suffix("")
    return p


def check_signal_files(header, base: Path) -> None:
    """Refuse missing or truncated signal files before wfdb trips over them."""
    if header.file_name is None:
        return
    per_file: dict[str, list[int]] = {}
    for fname, fmt, offset in zip(header.file_name, header.fmt, header.byte_offset or [None] * len(header.fmt)):
        per_file.setdefault(fname, [fmt, 0, offset or 0])
        per_file[fname][1] += 1
    for fname, (fmt, nsig, offset) in per_file.items():
        f = base.parent / fname
        if not f.is_file():
            raise RecordError(f"record {base.name}: signal file {f} named in the header is missing")
        bps = _BYTES_PER_SAMPLE.get(str(fmt))
        if bps is None or not header.sig_len:
            continue
        expected = int(np.ceil(header.sig_len * nsig * bps)) + int(offset)
        actual = f.stat().st_size
        if actual < expected - 2:  # format 212/310 may round the last frame
            raise RecordError(
                f"record {base.name}: signal file {f.name} is truncated "
                f"({actual} bytes, header implies {expected})"
            )


def read_header(path: str | os.PathLike):
    """The wfdb header of ``path``, or a clear RecordError."""
    base = _record_base(path)
    if base.is_dir():
        raise RecordError(f"{base} is a directory, not a record; give a record path without extension")
    hea = base.with_name(base.name + ".hea")
    if not hea.is_file():
        raise RecordError(f"record {base} not found (no {hea.name} in {base.parent or '.'})")
    if hea.stat().st_size == 0:
        raise RecordError(f"record {base}: header {hea.name} is empty")
    try:
        header = wfdb.rdheader(str(base))
    except Exception as exc:  # wfdb raises many types for a malformed header
        raise RecordError(f"record {base}: unreadable header {hea.name}: {exc or type(exc).__name__}") from None
    # wfdb silently replaces an fs it cannot parse ('-360', 'nan') by its 250 Hz default: check the token
    record_line = next((ln.split() for ln in hea.read_text(errors="replace").splitlines()
                        if ln.strip() and not ln.lstrip().startswith("#")), [])
    token = record_line[2].split("/")[0] if len(record_line) > 2 else None  # absent: WFDB's 250 Hz default
    try:
        fs_ok = token is None or (math.isfinite(float(token)) and float(token) > 0)
    except ValueError:
        fs_ok = False
    if not fs_ok or not (header.fs and math.isfinite(header.fs) and header.fs > 0):
        raise RecordError(f"record {base}: invalid sampling frequency {token!r} in {hea.name}")
    return header


def pick_lead(sig_names: list[str], lead: str | None) -> int:
    """Index of ``lead`` in ``sig_names``; default MLII, else the first channel."""
    names = list(sig_names or [])
    if not names:
        raise RecordError("record has no signals")
    if lead is None:
        return names.index("MLII") if "MLII" in names else 0
    if lead in names:
        return names.index(lead)
    upper = [n.upper() for n in names]
    if lead.upper() in upper:
        return upper.index(lead.upper())
    raise RecordError(f"lead {lead!r} not in record (leads: {', '.join(names)})")


def _physical(sig: np.ndarray, units: str | None) -> tuple[np.ndarray, str, int]:
    """One channel as float64 mV with invalid (NaN) samples interpolated: ``(signal, units, n_invalid)``."""
    sig = np.asarray(sig, dtype=np.float64).copy()
    bad = ~np.isfinite(sig)
    if bad.any() and not bad.all():  # wfdb marks invalid samples as NaN; fill them so filters stay finite
        idx = np.arange(sig.size)
        sig[bad] = np.interp(idx[bad], idx[~bad], sig[~bad])
    units = units or "mV"
    if units.lower() in ("uv", "µv"):
        sig, units = sig / 1000.0, "mV"
    return sig, units, int(bad.sum())


def read_record(path: str | os.PathLike, lead: str | None = None) -> Record:
    """Read a WFDB record (path without extension): its chosen lead and the others.

    ``lead`` is a lead name (case-insensitive); default MLII if present, else the first
    channel. The record's other leads land in :attr:`Record.others`. Raises
    :class:`RecordError` on a missing, malformed or truncated record.
    """
    base = _record_base(path)
    header = read_header(base)
    try:
        channel = pick_lead(header.sig_name, lead)
    except RecordError as exc:
        raise RecordError(f"record {base}: {exc}") from None
    check_signal_files(header, base)
    try:
        rec = wfdb.rdrecord(str(base), physical=True)
    except Exception as exc:
        raise RecordError(f"record {base}: unreadable signal file: {exc or type(exc).__name__}") from None
    if rec.p_signal is None or rec.p_signal.shape[0] == 0:
        raise RecordError(f"record {base}: signal is empty")
    units_all = list(rec.units or [])
    units_all += ["mV"] * (rec.p_signal.shape[1] - len(units_all))
    sig, units, n_bad = _physical(rec.p_signal[:, channel], units_all[channel])
    if n_bad == sig.size:
        raise RecordError(f"record {base}: lead {header.sig_name[channel]} has no valid samples")
    others = {}
    for c, name in enumerate(header.sig_name):
        if c == channel or name in others:
            continue
        x, _, bad = _physical(rec.p_signal[:, c], units_all[c])
        if bad < x.size:
            others[name] = x
    return Record(signal=sig, fs=float(rec.fs), lead=header.sig_name[channel], name=base.name,
                  path=str(base), units=units, meta={"n_invalid": n_bad}, others=others)


def read_annotations(path: str | os.PathLike, extension: str = "atr"):
    """``(samples, symbols)`` of the annotation file ``<path>.<extension>``."""
    base = _record_base(path)
    f = base.with_name(f"{base.name}.{extension}")
    if not f.is_file():
        raise RecordError(f"record {base}: annotation file {f.name} not found")
    try:
        ann = wfdb.rdann(str(base), extension)
    except Exception as exc:
        raise RecordError(f"record {base}: unreadable annotation file {f.name}: {exc}") from None
    return np.asarray(ann.sample, dtype=np.int64), list(ann.symbol)


def write_annotations(out_dir: str | os.PathLike, record_name: str, extension: str,
                      samples: np.ndarray, symbols: list[str], fs: float) -> Path:
    """Write ``<out_dir>/<record_name>.<extension>`` atomically (temp dir, then rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(samples, dtype=np.int64)
    final = out_dir / f"{record_name}.{extension}"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as tmp:
        if samples.size:
            wfdb.wrann(record_name, extension, samples, symbol=list(symbols), fs=fs, write_dir=tmp)
        else:  # wfdb refuses empty annotation sets; an empty file is a valid "no beats" answer
            Path(tmp, final.name).write_bytes(b"\x00\x00")
        os.replace(Path(tmp, final.name), final)
    return final


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so no partial file is ever left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
