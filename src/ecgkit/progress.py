"""The rich progress bar every long-running stage uses (on stderr, so stdout stays parseable)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Progress(Progress):
    """A Progress that vanishes when its block fails, so an error stays the only line on stderr."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return super().__exit__(exc_type, exc, tb)
        self.live.transient = True
        self.live.stop()  # skip Progress.stop's final render and newline
        return None


def progress_bar(**kwargs) -> Progress:
    return _Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False, **kwargs)


def track(iterable, description: str, total: int | None = None):
    """Iterate with a progress bar."""
    with progress_bar() as bar:
        yield from bar.track(iterable, total=total, description=description)
