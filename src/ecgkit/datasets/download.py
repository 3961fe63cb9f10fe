"""Where the data lives, and fetching it from PhysioNet through wfdb.

Lookup order for the data directory: the ``--data`` option, then ``$ECGKIT_DATA``,
then the user cache (``$XDG_CACHE_HOME/ecgkit/<database>``, default
``~/.cache/ecgkit/<database>``), which ``ecgkit download mitdb`` fills.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import wfdb

from ..errors import DataError

#: PhysioNet database slug and version of each known database.
DATABASES = {"mitdb": ("mitdb", "1.0.0")}


def cache_dir(database: str = "mitdb") -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ecgkit" / database


def data_dir(data: str | os.PathLike | None = None, database: str = "mitdb", *, must_exist: bool = True) -> Path:
    """Resolve the data directory: ``data``, else ``$ECGKIT_DATA``, else the user cache."""
    for candidate, origin in ((data, "--data"), (os.environ.get("ECGKIT_DATA"), "$ECGKIT_DATA")):
        if candidate:
            p = Path(candidate).expanduser()
            if must_exist and not p.is_dir():
                raise DataError(f"data directory {p} (from {origin}) does not exist")
            return p
    p = cache_dir(database)
    if must_exist and not (p.is_dir() and any(p.glob("*.hea"))):
        raise DataError(
            f"no data found: pass --data DIR, set ECGKIT_DATA, or run `ecgkit download {database}` "
            f"to fill {p}"
        )
    return p


def verify_checksums(directory: Path) -> int:
    """Check the files listed in ``SHA256SUMS`` (PhysioNet's format); return how many matched."""
    sums = directory / "SHA256SUMS.txt"
    if not sums.is_file():
        sums = directory / "SHA256SUMS"
    if not sums.is_file():
        raise DataError(f"{directory}: no SHA256SUMS file to verify against")
    n = 0
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        f = directory / name.strip().lstrip("*")
        if not f.is_file():
            continue  # PhysioNet lists extra files (e.g. x_ records) not every user fetches
        h = hashlib.sha256(f.read_bytes()).hexdigest()
        if h != digest:
            raise DataError(f"checksum mismatch for {f}: the download is corrupt; delete it and retry")
        n += 1
    if n == 0:
        raise DataError(f"{directory}: none of the files in {sums.name} are present")
    return n


def download_database(database: str = "mitdb", dest: str | os.PathLike | None = None, progress=None) -> Path:
    """Download ``database`` from PhysioNet into ``dest`` (default: the user cache) and verify it.

    ``progress`` is an optional callable ``progress(done, total, record_name)``.
    """
    if database not in DATABASES:
        raise DataError(f"unknown database {database!r}; known: {', '.join(DATABASES)}")
    slug, version = DATABASES[database]
    dest = Path(dest) if dest else cache_dir(database)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        records = wfdb.get_record_list(f"{slug}/{version}")
    except Exception as exc:
        raise DataError(f"cannot reach PhysioNet to list {slug}: {exc}") from None
    for i, rec in enumerate(records):
        try:
            wfdb.dl_database(f"{slug}/{version}", dl_dir=str(dest), records=[rec],
                             annotators=["atr"], keep_subdirs=False, overwrite=False)
        except Exception as exc:
            raise DataError(f"download of {slug} record {rec} failed: {exc}") from None
        if progress:
            progress(i + 1, len(records), rec)
    try:
        wfdb.dl_files(f"{slug}/{version}", str(dest), ["SHA256SUMS.txt", "RECORDS"])
    except Exception as exc:
        raise DataError(f"download of {slug} checksums failed: {exc}") from None
    verify_checksums(dest)
    return dest
