"""What the libraries under llmkit may print, decided in one place.

`llmkit ... 2>&1 | cat -A` used to show tqdm bars joined by carriage returns and cursor-up
escapes ("Loading weights", "Writing model shards", datasets' map bars) and transformers'
load report in bold ANSI. On a terminal those are fine; in a pipe, a file or CI they are
litter. So when stderr is not a terminal the libraries' own bars are off and escape codes
are stripped (NO_COLOR strips them too); llmkit's own progress is then plain lines
(train.callbacks) and its rich bars are off (io.console).

Known harmless warnings are silenced here, each by message + category (+ module where the
library names one), with the reason; nothing else is hidden.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# (message regex, category, module regex, why it is harmless). `module` is the module that
# raises the warning (warnings.filterwarnings matches it against the caller's __name__).
HARMLESS_WARNINGS: list[tuple[str, type[Warning], str, str]] = [
    (
        ".*`is_gradient_checkpointing`",
        FutureWarning,
        "",
        "peft reads transformers 5's deprecated attribute while wrapping a model for LoRA; "
        "the value is right, only the name is old (peft's to fix)",
    ),
]


def plain_output() -> bool:
    """True when stderr is not a terminal: no progress bars, no escape codes."""
    return not _isatty(sys.stderr)


def no_colour() -> bool:
    """Plain output, or the user asked for no colour (NO_COLOR, https://no-color.org: any
    non-empty value; rich honours it by itself)."""
    return plain_output() or bool(os.environ.get("NO_COLOR"))


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class _PlainRecords(logging.Filter):
    """Strips escape codes from library log records (transformers' bold "LOAD REPORT")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "\x1b" in record.msg:
            record.msg = strip_ansi(record.msg)
        return True


# The loggers whose records carry escape codes: transformers logs the load report through
# the logger of the module that loads the weights.
ANSI_LOGGERS = ("transformers.modeling_utils", "transformers.utils.loading_report")


@contextmanager
def harmless_warnings_ignored() -> Iterator[None]:
    """The same filters for one call, for Python callers of the library (no CLI)."""
    with warnings.catch_warnings():
        for message, category, module, _why in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message, category, module)
        yield


def quiet_libraries() -> None:
    """Called once by the CLI before any library is imported: costs microseconds (no imports),
    and environment variables reach the processes a multi-device run launches too."""
    for message, category, module, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message, category, module)
    if plain_output():
        # transformers and huggingface_hub read the first, datasets the second, at import.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    if no_colour():
        for name in ANSI_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _PlainRecords) for f in logger.filters):  # once a process
                logger.addFilter(_PlainRecords())


class _NoLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and "LOAD REPORT" in record.msg)


@contextmanager
def without_load_report() -> Iterator[None]:
    """Drop transformers' LOAD REPORT table for one load whose missing keys the caller
    reports itself: a classifier's new head is always "MISSING" (that is what new means),
    and the table, with its advice to train on a downstream task, came on every run."""
    logger = logging.getLogger(ANSI_LOGGERS[0])
    drop = _NoLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


MISSING_ON_RESUME = "There were missing keys in the checkpoint model loaded: "


class _TiedKeysMissing(logging.Filter):
    def __init__(self, tied: set[str]) -> None:
        super().__init__()
        self.tied = tied

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(MISSING_ON_RESUME):
            return True
        import ast

        try:
            keys = ast.literal_eval(message.removeprefix(MISSING_ON_RESUME).rstrip("."))
        except (ValueError, SyntaxError):
            return True
        return not (isinstance(keys, list) and set(keys) <= self.tied)


@contextmanager
def tied_weights_not_missing(model: object) -> Iterator[None]:
    """Drop Trainer's "missing keys in the checkpoint model loaded: ['lm_head.weight']" on
    resuming when every key it names is a tied weight (GPT-2's lm_head is wte): safetensors
    stores a tied tensor once, under its source, so the load leaves the tie intact and
    nothing is missing (resumed runs equal uninterrupted ones bit for bit, tests/
    test_reliability.py). A key that is not tied is still reported."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    logger = logging.getLogger("transformers.trainer")
    drop = _TiedKeysMissing(tied)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
