"""Datasets: record lists, label mappings, splits and where the files live."""

from .download import data_dir, download_database
from .mitdb import AAMI_CLASSES, DS1, DS2, PACED, RECORDS, aami_class

__all__ = ["AAMI_CLASSES", "DS1", "DS2", "PACED", "RECORDS", "aami_class", "data_dir", "download_database", "iter_records", "resolve_records"]


def resolve_records(records, data=None) -> list[str]:
    """Record paths (without extension) for names, paths or split names.

    ``records`` items may be record names in the data directory (``100``), split names
    (``DS1``, ``DS2``, ``all``) or paths to records anywhere; a single string is one item.
    ``None`` means ``all``.
    """
    from pathlib import Path

    from .mitdb import SPLITS

    items = ([records] if isinstance(records, str) else list(records)) if records else ["all"]
    out: list[str] = []
    base = None
    for item in items:
        if item in SPLITS:
            base = base or data_dir(data)
            out.extend(str(base / r) for r in SPLITS[item])
            continue
        p = Path(item)
        if p.suffix == ".hea":
            p = p.with_suffix("")
        if len(p.parts) > 1 or p.with_name(p.name + ".hea").is_file():
            out.append(str(p))
        else:
            base = base or data_dir(data)
            out.append(str(base / item))
    return out


class RecordStream:
    """Records read lazily one at a time; the paths are resolved and checked up front."""

    def __init__(self, paths, lead=None):
        self.paths, self.lead = list(paths), lead

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        from ..io import read_record

        for p in self.paths:
            yield read_record(p, self.lead)


def iter_records(records, data=None, lead=None) -> RecordStream:
    """Resolve ``records`` and check every header now (fail fast), then read lazily."""
    from pathlib import Path

    from ..errors import RecordError
    from ..io import check_signal_files, pick_lead, read_header

    paths = resolve_records(records, data)
    for p in paths:
        header = read_header(p)
        try:
            pick_lead(header.sig_name, lead)
        except RecordError as exc:
            raise RecordError(f"record {p}: {exc}") from None
        check_signal_files(header, Path(p))
    return RecordStream(paths, lead)
