"""llmkit: train, fine-tune, generate with and evaluate language models from one typed CLI,
or from Python:

    import llmkit
    run = llmkit.pretrain("tiny-cpu")        # a Run: path, metrics, stop_reason
    model = llmkit.load(run)                 # generate, chat, classify, embed, perplexity...
    llmkit.evaluate(preds=["a cat"], refs=["a cat"])

The names below load on first use (llmkit.api), so `import llmkit` and `llmkit --help` stay
fast: torch and transformers are imported only by what needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Run",
    "TrainingInterrupted",
    "UsageError",
    "__version__",
    "evaluate",
    "finetune",
    "load",
    "prep",
    "pretrain",
]

if TYPE_CHECKING:
    from llmkit.api import Model, Run, evaluate, finetune, load, prep, pretrain
    from llmkit.errors import TrainingInterrupted, UsageError


def __getattr__(name: str) -> Any:
    if name in __all__:
        from llmkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")
