"""Ctrl-C and SIGTERM: one handler for the whole life of a command, exit 130 / 143 (the
shell's 128 + signal number), keeping what was finished.

`install()` is the first thing `llmkit.cli.main` does, and nothing else in llmkit replaces the
handler for good (chat swaps in its own while an answer streams, and puts this one back). The
handler records the signal, which stays recorded for the life of the process, and then:

- inside a unit of work (`StopFlag`: a training step and its checkpoint, a batch of prompts)
  it only prints what will finish; the job calls `stop()` after the unit and exits there;
- anywhere else (loading, prep, between phases, saving) it raises at once: KeyboardInterrupt
  for SIGINT (so a prompt's Ctrl-C keeps its meaning), `Interrupted` for SIGTERM.

An exception raised by a signal handler can be lost: Python drops any exception raised while
it runs a finalizer (`__del__`, a weakref callback, GC) with only an "Exception ignored"
line, and a library may catch KeyboardInterrupt. A SIGINT sent just after prep under load
was lost so and the run trained to the end with exit 0. So the recorded signal is also checked
at every phase boundary (`check()`: after prep, after the model loads, before training, before
saving) and on entering a unit: a lost exception costs at most one phase, never the signal.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

from llmkit.errors import Interrupted

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_received: list[int] = []  # the first signal this process got (sticky)
_units: list[str] = []  # the units of work in flight, innermost last


def install() -> None:
    """The one handler for SIGINT and SIGTERM (main thread only, as Python requires)."""
    for sig in EXIT_CODES:
        signal.signal(sig, _handle)


def received() -> int | None:
    return _received[0] if _received else None


def forget() -> None:
    """A Ctrl-C that a prompt consumed (chat's input line): it stops nothing further."""
    _received.clear()


def check() -> None:
    """At a phase boundary: stop now if a signal came (its exception may have been lost)."""
    if _received:
        _raise(_received[0])


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(EXIT_CODES.get(signal.Signals(signum), 128 + signum), resumable=False)


def _handle(signum: int, frame: FrameType | None) -> None:
    if _received and _units and signum == signal.SIGINT:
        raise KeyboardInterrupt  # second Ctrl-C during a unit: the user means it
    if not _received:
        _received.append(signum)
    if not _units:
        _raise(signum)
    again = " (Ctrl-C again to quit now)" if signum == signal.SIGINT else ""
    name = signal.Signals(signum).name
    print(f"\n{name}: finishing {_units[-1]}{again}", file=sys.stderr, flush=True)


class StopFlag:
    """A unit of work that a signal lets finish (`with StopFlag("this step") as stop: ...`,
    then `stop.stop(message)` after each unit)."""

    def __init__(self, unit: str) -> None:
        self.unit = unit  # what finishes before stopping, for the message
        self._entered = False
        self._previous: dict[int, Any] = {}  # outside the CLI (the Python API): put back

    @property
    def received(self) -> int | None:
        return received()

    @received.setter
    def received(self, signum: int | None) -> None:
        """Set by the ranks' agreement (llmkit.train.interrupt) when another rank got it."""
        if signum is not None and not _received:
            _received.append(signum)

    def install(self) -> None:
        check()  # a signal that came before the unit began stops it before it starts
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) is not _handle:
            self._previous = {sig: signal.signal(sig, _handle) for sig in EXIT_CODES}
        _units.append(self.unit)
        self._entered = True

    def uninstall(self) -> None:
        if self._entered:
            _units.remove(self.unit)
            self._entered = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopFlag:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def stop(self, message: str, *, main: bool = True) -> None:
        """After a unit: if a signal came, say what was kept and raise `Interrupted`."""
        if not _received:
            return
        if main:
            print(message, file=sys.stderr, flush=True)
        signum = _received[0]
        raise Interrupted(EXIT_CODES.get(signal.Signals(signum), 128 + signum), main=main)
