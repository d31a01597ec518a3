"""Lines typed by a person, or piped in: readline editing and a history file on a terminal,
plain lines (and no prompt) otherwise, so a session can be scripted."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.io import interrupt
from llmkit.io.files import STDIN_FIX, decode_utf8, text_bytes
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
        self.offset, self.line = 0, 1  # of the next piped line, for a message about a bad byte
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
        """The next line; a line that is not UTF-8 raises UsageError naming its first bad
        byte's offset in the input (the next read goes on after it)."""
        if not self.interactive:
            return self._piped()
        try:
            return input(prompt)
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin: not valid UTF-8 (byte 0x{e.object[e.start]:02x})") from None
        except EOFError:
            print(file=sys.stderr)  # the shell's next prompt starts on a line of its own
            return None
        except KeyboardInterrupt:
            interrupt.forget()  # consumed here: clears the line or ends the session
            typed = self.readline.get_line_buffer() if self.readline is not None else ""
            print(file=sys.stderr)
            return "" if typed else None

    def _piped(self) -> str | None:
        # Bytes, not sys.stdin's text: under a C locale Python decodes stdin with
        # surrogateescape, and the tokenizer then failed on the surrogates with a traceback.
        # A text stream without bytes under it (tests, embedding) gives str: back to bytes.
        buffer = getattr(sys.stdin, "buffer", None)
        raw = buffer.readline() if buffer is not None else text_bytes(sys.stdin.readline())
        if raw == b"":
            return None
        offset, line = self.offset, self.line
        self.offset, self.line = offset + len(raw), line + 1
        text = decode_utf8(raw, "stdin", offset=offset, line=line, fix=STDIN_FIX)
        return text.rstrip("\r\n")

    def close(self) -> None:
        if self.readline is None or self.history is None:
            return
        try:
            with atomic_path(self.history) as tmp:
                self.readline.write_history_file(tmp)
        except OSError:
            pass  # e.g. a read-only cache: the session itself went fine
