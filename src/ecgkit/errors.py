"""One exception family for ecgkit.

Every error a user can cause (a missing record, an unknown component name, a bad
config key) is an :class:`EcgkitError` whose message says what was wrong and how
to fix it. The CLI prints the message as one line and exits non-zero; library
callers can catch the family. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations


class EcgkitError(Exception):
    """Base class of every user-facing ecgkit error."""


class RecordError(EcgkitError):
    """A WFDB record is missing, unreadable, truncated or lacks the asked lead."""


class RegistryError(EcgkitError):
    """An unknown component name, or two plugins registering the same name."""


class ConfigError(EcgkitError):
    """A configuration file or option has an unknown key or a bad value."""


class CheckpointError(EcgkitError):
    """A model checkpoint is missing, malformed or refused by the safe loader."""


class DataError(EcgkitError):
    """The data directory is missing or incomplete, or a download failed."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of ``exc``'s message (its type name when the message is empty), cut at ``limit`` chars.

    For wrapping a third-party exception into a one-line :class:`EcgkitError`.
    """
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if limit is None else line[:limit]
