"""WFDB reading and annotation writing: exact values, lead choice, clear errors, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgkit.errors import EcgkitError, RecordError
from ecgkit.io import (Record, atomic_write, pick_lead, read_annotations, read_header, read_record,
                       write_annotations)


def rewrite_header(src: Path, dest: Path, *, names=None, dat=None) -> Path:
    """Copy ``src.hea`` as ``dest.hea`` with other lead names and/or another signal file name."""
    lines = Path(f"{src}.hea").read_text().splitlines()
    rec = lines[0].split()
    rec[0] = dest.name
    out = [" ".join(rec)]
    n_sig = int(rec[1])
    for i, line in enumerate(lines[1:1 + n_sig]):
        parts = line.split()
        if dat is not None:
            parts[0] = dat
        if names is not None:
            parts[-1] = names[i]
        out.append(" ".join(parts))
    out.extend(lines[1 + n_sig:])
    Path(f"{dest}.hea").write_text("\n".join(out) + "\n")
    return dest


# --- reading -------------------------------------------------------------------------------

def test_read_record_matches_wfdb_exactly(data_dir):
    rec = read_record(data_dir / "100")
    ref = wfdb.rdrecord(str(data_dir / "100"))
    mlii = ref.sig_name.index("MLII")
    assert isinstance(rec, Record)
    assert rec.lead == "MLII" and rec.name == "100" and rec.units == "mV"
    assert rec.fs == 360.0
    assert rec.signal.dtype == np.float64 and rec.signal.ndim == 1
    assert rec.signal.shape == (650000,)
    np.testing.assert_array_equal(rec.signal, ref.p_signal[:, mlii])
    assert rec.duration_s == pytest.approx(650000 / 360)
    assert rec.path == str(data_dir / "100")


def test_read_record_accepts_a_header_path(data_dir):
    a = read_record(data_dir / "100.hea")
    assert a.name == "100" and a.path == str(data_dir / "100")


def test_lead_by_name_is_case_insensitive(data_dir):
    ref = wfdb.rdrecord(str(data_dir / "100"), channels=[1])
    rec = read_record(data_dir / "100", lead="v5")
    assert rec.lead == "V5"
    np.testing.assert_array_equal(rec.signal, ref.p_signal[:, 0])
    assert read_record(data_dir / "100", lead="mlii").lead == "MLII"


def test_default_lead_is_mlii_wherever_it_is(mitdb_record, tmp_path):
    src = mitdb_record("100")
    # channel 0 renamed V1, channel 1 renamed MLII: the default must pick channel 1
    swapped = rewrite_header(src, tmp_path / "swapped", names=["V1", "MLII"], dat="100.dat")
    rec = read_record(swapped)
    assert rec.lead == "MLII"
    ch1 = wfdb.rdrecord(str(src), channels=[1]).p_signal[:, 0]
    np.testing.assert_array_equal(rec.signal, ch1)


def test_default_lead_without_mlii_is_the_first_channel(mitdb_record, tmp_path):
    src = mitdb_record("100")
    other = rewrite_header(src, tmp_path / "other", names=["V1", "V2"], dat="100.dat")
    rec = read_record(other)
    assert rec.lead == "V1"
    ch0 = wfdb.rdrecord(str(src), channels=[0]).p_signal[:, 0]
    np.testing.assert_array_equal(rec.signal, ch0)


def test_pick_lead():
    assert pick_lead(["V1", "MLII"], None) == 1
    assert pick_lead(["V1", "V2"], None) == 0
    assert pick_lead(["MLII", "V5"], "V5") == 1
    assert pick_lead(["MLII", "V5"], "mlii") == 0
    with pytest.raises(RecordError, match="no signals"):
        pick_lead([], None)


def test_invalid_samples_are_interpolated_and_microvolts_converted(tmp_path):
    x = np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 3.0], [3.0, 4.0]]) * 1000.0
    wfdb.wrsamp("tiny", fs=250, units=["uV", "uV"], sig_name=["I", "II"], p_signal=x, fmt=["16", "16"],
                write_dir=str(tmp_path))
    rec = read_record(tmp_path / "tiny", lead="II")
    assert rec.fs == 250.0 and rec.units == "mV"
    assert np.all(np.isfinite(rec.signal))
    np.testing.assert_allclose(rec.signal, [1.0, 2.0, 3.0, 4.0], atol=1e-3)  # NaN -> linear interpolation
    assert rec.meta["n_invalid"] == 1
    np.testing.assert_allclose(read_record(tmp_path / "tiny").signal, [0, 1, 2, 3], atol=1e-3)


def test_read_header(data_dir):
    h = read_header(data_dir / "100")
    assert h.fs == 360 and h.sig_name == ["MLII", "V5"] and h.sig_len == 650000


# --- errors --------------------------------------------------------------------------------

def expect_record_error(path, *fragments, lead=None) -> str:
    with pytest.raises(RecordError) as exc:
        read_record(path, lead)
    msg = str(exc.value)
    assert "\n" not in msg, "error messages are one line"
    assert "Traceback" not in msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    assert isinstance(exc.value, EcgkitError)
    return msg


def test_missing_record(tmp_path):
    expect_record_error(tmp_path / "999", "999", "not found", "999.hea")


def test_directory_instead_of_record(data_dir):
    expect_record_error(data_dir, "is a directory, not a record")


def test_empty_header(tmp_path):
    (tmp_path / "empty.hea").write_text("")
    expect_record_error(tmp_path / "empty", "is empty", "empty.hea")


def test_garbage_header(tmp_path):
    (tmp_path / "junk.hea").write_text("this is ~ not a header !!\n\x00\x01 12 zz\n")
    expect_record_error(tmp_path / "junk", "unreadable header", "junk.hea")


def test_header_pointing_at_a_missing_signal_file(mitdb_record, tmp_path):
    src = mitdb_record("100")
    rec = rewrite_header(src, tmp_path / "nodat", dat="gone.dat")
    expect_record_error(rec, "gone.dat", "missing")


def test_truncated_signal_file(mitdb_record):
    rec = mitdb_record("100")
    with open(f"{rec}.dat", "r+b") as f:
        f.truncate(1000)
    expect_record_error(rec, "100.dat", "truncated", "1000 bytes")


def test_slightly_truncated_signal_file(mitdb_record):
    rec = mitdb_record("100")
    size = os.path.getsize(f"{rec}.dat")
    with open(f"{rec}.dat", "r+b") as f:
        f.truncate(size - 300)
    expect_record_error(rec, "truncated")


def test_unknown_lead(data_dir):
    expect_record_error(data_dir / "100", "'V1'", "MLII", "V5", lead="V1")


def test_missing_annotation_file(mitdb_record):
    rec = mitdb_record("100", extensions=("hea", "dat"))
    with pytest.raises(RecordError, match="annotation file 100.atr not found"):
        read_annotations(rec)


# --- writing -------------------------------------------------------------------------------

def test_write_annotations_round_trips_through_wfdb(tmp_path, data_dir):
    samples = np.array([10, 370, 731, 1100, 64999])
    symbols = ["N", "V", "N", "A", "N"]
    path = write_annotations(tmp_path / "out", "100", "qrs", samples, symbols, 360.0)
    assert path == tmp_path / "out" / "100.qrs" and path.is_file()
    ann = wfdb.rdann(str(tmp_path / "out" / "100"), "qrs")
    np.testing.assert_array_equal(ann.sample, samples)
    assert list(ann.symbol) == symbols
    assert ann.fs == 360.0
    s, sym = read_annotations(tmp_path / "out" / "100", "qrs")
    np.testing.assert_array_equal(s, samples)
    assert sym == symbols
    assert sorted(os.listdir(tmp_path / "out")) == ["100.qrs"]  # no temp leftovers


def test_write_annotations_of_the_real_reference_beats(tmp_path, data_dir):
    ann = wfdb.rdann(str(data_dir / "100"), "atr", sampto=36000)
    write_annotations(tmp_path, "100", "cpy", ann.sample, ann.symbol, 360.0)
    back = wfdb.rdann(str(tmp_path / "100"), "cpy")
    np.testing.assert_array_equal(back.sample, ann.sample)
    assert back.symbol == ann.symbol


def test_zero_beat_write(tmp_path):
    path = write_annotations(tmp_path, "200", "qrs", np.array([], dtype=np.int64), [], 360.0)
    assert path.is_file()
    ann = wfdb.rdann(str(tmp_path / "200"), "qrs")
    assert len(ann.sample) == 0
    s, sym = read_annotations(tmp_path / "200", "qrs")
    assert s.size == 0 and sym == []


@pytest.mark.parametrize("existing", [False, True])
def test_no_partial_file_when_the_write_fails(tmp_path, monkeypatch, existing):
    out = tmp_path / "out"
    out.mkdir()
    if existing:
        write_annotations(out, "100", "qrs", np.array([5, 10]), ["N", "N"], 360.0)
        before = (out / "100.qrs").read_bytes()

    def broken_wrann(record_name, extension, sample, *args, write_dir="", **kwargs):
        Path(write_dir, f"{record_name}.{extension}").write_bytes(b"\x01partial")  # a half-written file
        raise OSError("disk full")

    monkeypatch.setattr(wfdb, "wrann", broken_wrann)
    with pytest.raises(OSError, match="disk full"):
        write_annotations(out, "100", "qrs", np.array([1, 2, 3]), ["N"] * 3, 360.0)
    if existing:
        assert sorted(os.listdir(out)) == ["100.qrs"]
        assert (out / "100.qrs").read_bytes() == before  # the previous file is untouched
    else:
        assert os.listdir(out) == []


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "d" / "x.npz"

    def fail(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, fail)
    assert os.listdir(tmp_path / "d") == []
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"full"))
    assert target.read_bytes() == b"full"
    assert os.listdir(tmp_path / "d") == ["x.npz"]
    assert (target.stat().st_mode & 0o777) == 0o644
