"""Downloading from PhysioNet, with wfdb's network calls stubbed by local copies."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ecgkit.cli import cli
from ecgkit.datasets import download as dl
from ecgkit.errors import DataError

RECORDS = ["100", "101"]
EXTS = ("hea", "dat", "atr")


class FakePhysioNet:
    """Stands in for wfdb's PhysioNet calls: serves records from the local data directory."""

    def __init__(self, data_dir: Path, records=RECORDS):
        self.data_dir, self.records = data_dir, list(records)
        self.calls: list[tuple] = []
        self.corrupt: str | None = None  # a file name to damage after "downloading" it
        self.fail: dict[str, Exception] = {}  # stub name -> exception to raise

    def _maybe_fail(self, name):
        if name in self.fail:
            raise self.fail[name]

    def get_record_list(self, db_dir, records="all"):
        self.calls.append(("get_record_list", db_dir))
        self._maybe_fail("get_record_list")
        return list(self.records)

    def dl_database(self, db_dir, dl_dir, records="all", annotators="all", keep_subdirs=True, overwrite=False):
        self.calls.append(("dl_database", db_dir, tuple(records), tuple(annotators)))
        self._maybe_fail("dl_database")
        for rec in records:
            for ext in EXTS:
                shutil.copyfile(self.data_dir / f"{rec}.{ext}", Path(dl_dir) / f"{rec}.{ext}")
                if self.corrupt == f"{rec}.{ext}":
                    with open(Path(dl_dir) / f"{rec}.{ext}", "r+b") as f:
                        f.seek(100)
                        byte = f.read(1)
                        f.seek(100)
                        f.write(bytes([byte[0] ^ 0xFF]))

    def dl_files(self, db, dl_dir, files, keep_subdirs=True, overwrite=False):
        self.calls.append(("dl_files", db, tuple(files)))
        self._maybe_fail("dl_files")
        for name in files:
            if name.startswith("SHA256SUMS"):
                lines = [f"{hashlib.sha256((self.data_dir / f'{r}.{e}').read_bytes()).hexdigest()} {r}.{e}"
                         for r in self.records for e in EXTS]
                lines.append("0" * 64 + " x_999.dat")  # listed on PhysioNet, not fetched: ignored
                Path(dl_dir, name).write_text("\n".join(lines) + "\n")
            elif name == "RECORDS":
                Path(dl_dir, name).write_text("\n".join(self.records) + "\n")


@pytest.fixture
def physionet(data_dir, monkeypatch):
    fake = FakePhysioNet(data_dir)
    for name in ("get_record_list", "dl_database", "dl_files"):
        monkeypatch.setattr(dl.wfdb, name, getattr(fake, name))
    return fake


def test_download_database_fetches_and_verifies(physionet, tmp_path):
    dest = tmp_path / "mitdb"
    seen = []
    path = dl.download_database("mitdb", dest, progress=lambda *a: seen.append(a))
    assert path == dest
    expected = {f"{r}.{e}" for r in RECORDS for e in EXTS} | {"SHA256SUMS.txt", "RECORDS"}
    assert set(os.listdir(dest)) == expected
    assert dl.verify_checksums(dest) == 6
    assert seen == [(1, 2, "100"), (2, 2, "101")]
    assert physionet.calls[0] == ("get_record_list", "mitdb/1.0.0")
    assert ("dl_database", "mitdb/1.0.0", ("100",), ("atr",)) in physionet.calls
    assert physionet.calls[-1][0] == "dl_files" and "SHA256SUMS.txt" in physionet.calls[-1][2]
    from ecgkit.io import read_record

    assert read_record(dest / "101").fs == 360.0  # a usable record


def test_download_defaults_to_the_cache_that_data_dir_finds(physionet, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ECGKIT_DATA", raising=False)
    with pytest.raises(DataError):
        dl.data_dir()
    path = dl.download_database("mitdb")
    assert path == tmp_path / "cache" / "ecgkit" / "mitdb"
    assert dl.data_dir() == path


def test_corrupted_file_is_a_data_error(physionet, tmp_path):
    physionet.corrupt = "101.dat"
    with pytest.raises(DataError, match="checksum mismatch") as exc:
        dl.download_database("mitdb", tmp_path / "mitdb")
    assert "101.dat" in str(exc.value)


def test_verify_checksums_without_sums_or_files(tmp_path):
    with pytest.raises(DataError, match="no SHA256SUMS"):
        dl.verify_checksums(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + " 100.hea\n")
    with pytest.raises(DataError, match="none of the files"):
        dl.verify_checksums(tmp_path)
    (tmp_path / "100.hea").write_text("hello")
    with pytest.raises(DataError, match="checksum mismatch"):
        dl.verify_checksums(tmp_path)
    digest = hashlib.sha256(b"hello").hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest} *100.hea\n\n")  # binary-mode marker, blank line
    assert dl.verify_checksums(tmp_path) == 1


@pytest.mark.parametrize("stub, fragment", [
    ("get_record_list", "cannot reach PhysioNet"),
    ("dl_database", "record 100 failed"),
    ("dl_files", "checksums failed"),
])
def test_network_failure_is_one_clear_data_error(physionet, tmp_path, stub, fragment):
    physionet.fail[stub] = ConnectionError("Max retries exceeded with url: /files/mitdb/1.0.0/")
    with pytest.raises(DataError) as exc:
        dl.download_database("mitdb", tmp_path / "mitdb")
    msg = str(exc.value)
    assert fragment in msg and "mitdb" in msg
    assert "Max retries exceeded" in msg
    assert "\n" not in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_unknown_database(tmp_path):
    with pytest.raises(DataError, match="unknown database 'nope'.*mitdb"):
        dl.download_database("nope", tmp_path)


# --- through the CLI -----------------------------------------------------------------------

def test_cli_download_shows_progress(physionet, tmp_path):
    dest = tmp_path / "dest"
    result = CliRunner().invoke(cli, ["download", "mitdb", "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"mitdb is in {dest} (checksums verified)"
    assert "2/2" in result.stderr and "mitdb 101" in result.stderr  # the progress bar, on stderr
    assert dl.verify_checksums(dest) == 6


def test_cli_download_network_failure(physionet, tmp_path):
    physionet.fail["get_record_list"] = OSError("Temporary failure in name resolution")
    result = CliRunner().invoke(cli, ["download", "mitdb", "--dest", str(tmp_path / "dest")])
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    last = result.stderr.splitlines()[-1]
    assert last.startswith("Error: cannot reach PhysioNet") and "name resolution" in last


def test_cli_download_network_failure_is_one_line(physionet, tmp_path):
    physionet.fail["get_record_list"] = OSError("Temporary failure in name resolution")
    result = CliRunner().invoke(cli, ["download", "mitdb", "--dest", str(tmp_path / "dest")])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1


def test_cli_download_rejects_an_unknown_database(tmp_path):
    result = CliRunner().invoke(cli, ["download", "nope", "--dest", str(tmp_path / "d")])
    assert result.exit_code == 2 and "nope" in result.stderr
    assert not (tmp_path / "d").exists()
