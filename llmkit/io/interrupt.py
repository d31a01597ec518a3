"""Ctrl-C and SIGTERM for long jobs: finish the unit of work in flight, keep what is done,
exit 130 / 143 (the shell's 128 + signal number).

The handler only sets a flag; the job looks at it between units (a training step, a chunk of
prompts) and stops there, raising `Interrupted`. A second Ctrl-C quits at once.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

from llmkit.errors import Interrupted

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopFlag:
    """Set by SIGINT/SIGTERM while installed (`with StopFlag("this step") as stop: ...`)."""

    def __init__(self, unit: str) -> None:
        self.unit = unit  # what finishes before stopping, for the message
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopFlag:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user means it
        self.received = signum
        again = " (Ctrl-C again to quit now)" if signum == signal.SIGINT else ""
        name = signal.Signals(signum).name
        print(f"\n{name}: finishing {self.unit}{again}", file=sys.stderr, flush=True)

    def stop(self, message: str, *, main: bool = True) -> None:
        """After a unit: if a signal came, say what was kept and raise `Interrupted`."""
        if self.received is None:
            return
        if main:
            print(message, file=sys.stderr, flush=True)
        raise Interrupted(
            EXIT_CODES.get(signal.Signals(self.received), 128 + self.received), main=main
        )
