"""The rich progress bar every long-running stage uses (on stderr, so stdout stays parseable)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(**kwargs) -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False, **kwargs)


def track(iterable, description: str, total: int | None = None):
    """Iterate with a progress bar."""
    with progress_bar() as bar:
        yield from bar.track(iterable, total=total, description=description)
