"""The one exception type a user is meant to see.

Anything raised as `UsageError` is printed by the CLI as a single `error: ...` line on stderr
and the process exits with code 2 (the convention of argparse and typer for bad usage).
Every other exception is a bug in llmkit and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: a recipe field, a file, a flag. The message names it."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message)

    def render(self) -> str:
        if len(self.problems) == 1:
            return f"error: {self.problems[0]}"
        lines = [f"error: {len(self.problems)} problems:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)
