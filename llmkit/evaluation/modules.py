"""Hugging Face `evaluate` modules for metrics llmkit does not implement itself.

A module is loaded by `evaluate.load`: a local module folder or script works offline, a hub
name (`bleurt`, `meteor`) needs the hub. Every module is loaded before any model (a name that
cannot load costs nothing but one line), once per process. Its numeric results join the
system's values as `<module>/<key>` (`sacrebleu/score`), in the module's own units.
llmkit's built-in BLEU and ROUGE call sacreBLEU and rouge-score directly: that is what the
`evaluate` modules wrap, without `datasets` features in between (tests check that a module
wrapping sacreBLEU gives llmkit's BLEU).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from llmkit.errors import UsageError
from llmkit.evaluation.report import SystemScores


@functools.cache
def load_module(name: str) -> Any:
    import evaluate

    try:
        return evaluate.load(name)
    except Exception as e:  # offline hub name, missing folder, a script that fails to import
        text = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise UsageError(f"evaluate module '{name}' cannot be loaded: {text}") from None


def check_modules(names: Sequence[str]) -> None:
    for name in names:
        load_module(name)


def add_scores(
    system: SystemScores, names: Sequence[str], preds: list[str], refs: list[str]
) -> None:
    """Each module's numeric results on (preds, refs), beside llmkit's own values."""
    for name in names:
        module = load_module(name)
        start = time.perf_counter()
        try:
            result = module.compute(predictions=preds, references=refs) or {}
        except Exception as e:  # the module refuses these inputs: its message, in one line
            text = (str(e).strip() or type(e).__name__).splitlines()[0]
            raise UsageError(f"evaluate module '{name}' failed on these texts: {text}") from None
        scores = {
            f"{module.name}/{key}": float(value)
            for key, value in result.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        system.values.update(scores)
        details = system.details.setdefault("evaluate", {})
        details[name] = {"module": module.name, "values": sorted(scores)}
        details[name]["seconds"] = round(time.perf_counter() - start, 3)
