"""The one exception type a user is meant to see.

Anything raised as `UsageError` is printed by the CLI as a single `error: ...` line on stderr
and the process exits with code 2 (the convention of argparse and typer for bad usage).
Every other exception is a bug in llmkit and keeps its traceback.

Library code names recipe fields and files, never command-line flags. Where the fix is an
option the user sets, the error carries a `Fix`; `str(error)` words it for Python callers and
the CLI words it for its flags (`llmkit.flags.FIX_WORDING`).
"""

from __future__ import annotations

from enum import Enum

EXIT_USAGE = 2


class Fix(Enum):
    """An option that resolves an error; the value is the wording for Python callers,
    `{message}` standing for the error's own text."""

    RESUME_OR_OVERWRITE = "{message}: resume it, overwrite it, or choose another output folder"
    RESUME = "resume: {message}"
    OVERWRITE = "{message}: replace it only with overwrite=True"
    RESUME_PARTIAL = "{message}: resume it (resume=True), or delete it to start over"
    RESTART = "{message}: start it again without resume=True"
    RAISE_MAX_STEPS = "{message}: nothing to do; raise train.max_steps to train further"
    TRUST_REMOTE_CODE = (
        "{message}: set model.trust_remote_code (trust_remote_code=True) if you trust it"
    )


class UsageError(ValueError):
    """Bad input from the user: a recipe field, a file, a value. The message names it.
    A `ValueError`, so Python callers may catch it as the standard type for a bad value."""

    def __init__(
        self, message: str, *, problems: list[str] | None = None, fix: Fix | None = None
    ) -> None:
        self.message = message
        self.fix = fix
        self.problems = problems or [message]
        super().__init__(fix.value.format(message=message) if fix else message)

    def render(self, wording: dict[Fix, str] | None = None) -> str:
        """The text the CLI prints: `error: ...`, or a numbered list of every problem."""
        if self.fix is not None:
            template = (wording or {}).get(self.fix, self.fix.value)
            return f"error: {template.format(message=self.message)}"
        if len(self.problems) == 1:
            return f"error: {self.problems[0]}"
        lines = [f"error: {len(self.problems)} problems:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class AlreadyFinished(SystemExit):
    """`resume` of a run that already reached its end: nothing was done or touched, exit 0.
    `message` says at which step and why; the CLI prints it (worded with `fix`)."""

    def __init__(self, message: str, *, fix: Fix | None = None) -> None:
        super().__init__(0)
        self.message = message
        self.fix = fix

    def render(self, wording: dict[Fix, str] | None = None) -> str:
        if self.fix is None:
            return self.message
        return (wording or {}).get(self.fix, self.fix.value).format(message=self.message)


class Interrupted(SystemExit):
    """A long job stopped on SIGINT/SIGTERM after keeping its finished work (a checkpoint, the
    prompts done); the exit code is the shell's 128 + signal number. `main`: raised in the
    process that reports (rank 0), so the CLI says how to continue; `resumable`: False when
    the signal came outside a unit of work, with nothing to continue from."""

    def __init__(self, code: int, *, main: bool = True, resumable: bool = True) -> None:
        super().__init__(code)
        self.main = main
        self.resumable = resumable


class TrainingInterrupted(KeyboardInterrupt):
    """The Python API's `Interrupted`: Ctrl-C (a notebook's interrupt button) stopped a
    training run after its step in flight, with a checkpoint saved. A `KeyboardInterrupt`, so
    a notebook shows it as the interruption it is; `run` is the folder to resume."""

    def __init__(self, message: str, *, run: str) -> None:
        super().__init__(message)
        self.run = run
