"""What a person watching sees: status lines on stderr and progress bars.

Status goes to stderr so stdout carries only results (completions, tables, JSON) and stays
safe to pipe. Bars are drawn only on a terminal: in a log file they are noise.
"""

from __future__ import annotations

import sys
from typing import Any

from llmkit.io.quiet import plain_output


def note(message: str) -> None:
    """One status line on stderr, flushed at once (a long job's log must show where it is)."""
    print(message, file=sys.stderr, flush=True)


class ProgressBar:
    """A rich progress bar on stderr counting `total` items, with tokens/s when told tokens,
    and an ETA; a no-op when `enabled` is false or stderr is not a terminal. Use as a context
    manager and call it with each advance."""

    def __init__(self, label: str, total: int, *, enabled: bool = True) -> None:
        import time

        self.progress: Any = None
        self.tokens = 0
        self.started = time.perf_counter()
        if enabled and not plain_output():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.progress.add_task(label, total=total, rate="")

    def __enter__(self) -> ProgressBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, advance: int, *, tokens: int = 0) -> None:
        if self.progress is None:
            return
        import time

        self.tokens += tokens
        seconds = time.perf_counter() - self.started
        rate = f"{self.tokens / seconds:,.0f} tokens/s" if self.tokens and seconds > 0 else ""
        self.progress.update(self.task, advance=advance, rate=rate)
