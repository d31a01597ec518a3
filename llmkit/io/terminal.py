"""Lines typed by a person, or piped in: readline editing and a history file on a terminal,
plain lines (and no prompt) otherwise, so a session can be scripted."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from llmkit.io import interrupt
from llmkit.io.write import atomic_path

HISTORY_LINES = 1000


class LineInput:
    """`read(prompt)` gives the next line, or None when the person is done: Ctrl-D (end of
    input), or Ctrl-C at an empty prompt. Ctrl-C over a half-typed line only clears it (as in
    a shell), giving "". The history is written back by `close()`."""

    def __init__(self, history: Path | None = None) -> None:
        self.interactive = sys.stdin.isatty()
        self.history = history
        self.readline: Any = None
        if self.interactive:
            try:
                import readline  # arrow keys, editing and history for input(); not on Windows
            except ImportError:
                return
            self.readline = readline
            readline.set_history_length(HISTORY_LINES)
            if history is not None and history.is_file():
                # An unreadable history costs the arrow-up list, not the session.
                with contextlib.suppress(OSError):
                    readline.read_history_file(history)

    def read(self, prompt: str) -> str | None:
        if not self.interactive:
            line = sys.stdin.readline()
            return None if line == "" else line.rstrip("\r\n")
        try:
            return input(prompt)
        except EOFError:
            print(file=sys.stderr)  # the shell's next prompt starts on a line of its own
            return None
        except KeyboardInterrupt:
            interrupt.forget()  # consumed here: clears the line or ends the session
            typed = self.readline.get_line_buffer() if self.readline is not None else ""
            print(file=sys.stderr)
            return "" if typed else None

    def close(self) -> None:
        if self.readline is None or self.history is None:
            return
        try:
            with atomic_path(self.history) as tmp:
                self.readline.write_history_file(tmp)
        except OSError:
            pass  # e.g. a read-only cache: the session itself went fine
