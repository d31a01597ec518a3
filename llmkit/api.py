"""The Python front door: the commands' own functions, returning results and raising typed
errors instead of printing `error:` lines and exiting.

    import llmkit
    run = llmkit.pretrain("tiny-cpu", train={"max_steps": 20})
    model = llmkit.load(run)
    model.generate("ROMEO:", max_new_tokens=20)

Training goes through the same recipe loader, run-folder checks, writer lock and
setup -> train -> save functions as `llmkit pretrain/finetune`; a model's methods through the
same loaders and inference layers as `llmkit generate/chat/classify/embed/eval`, with the
run's task card (prompt format, stops, labels) applied as the CLI applies it. Bad input is a
`UsageError` (a `ValueError`); Ctrl-C in training is a `TrainingInterrupted` (a
`KeyboardInterrupt`) after the checkpoint is saved; nothing calls `sys.exit`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from llmkit.errors import AlreadyFinished, Interrupted, TrainingInterrupted, UsageError
from llmkit.model import Model

if TYPE_CHECKING:
    from llmkit.config.recipe import RecipeBase
    from llmkit.data.prep import PreparedData
    from llmkit.evaluation.plot import Drawn

    RB = TypeVar("RB", bound=RecipeBase)

__all__ = [
    "Model",
    "Run",
    "TrainingInterrupted",
    "UsageError",
    "evaluate",
    "finetune",
    "load",
    "prep",
    "pretrain",
]


@dataclass(frozen=True)
class Run:
    """A finished (or resumable) run folder: `path`, `metrics` (metrics.json: eval_loss,
    eval_perplexity, steps, stop_reason, task metrics...), `stop_reason` (why it stopped)."""

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def stop_reason(self) -> str | None:
        reason = self.metrics.get("stop_reason")
        return None if reason is None else str(reason)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """The run in `path` (metrics empty until it has finished once)."""
        from llmkit.io.runs import RunDir

        run = RunDir(Path(path))
        if not run.path.is_dir():
            raise UsageError(f"{path}: no such run folder")
        metrics: dict[str, Any] = {}
        if run.metrics_json.is_file():
            metrics = json.loads(run.metrics_json.read_text(encoding="utf-8"))
        return cls(run.path, metrics)

    def load(self) -> Model:
        """The run's model, ready to generate, classify, embed or be evaluated."""
        return load(self.path)

    def plot(
        self, output: str | Path | None = None, *, x: str = "steps", overwrite: bool | None = None
    ) -> Drawn:
        """Loss, perplexity, learning rate and task metrics against steps (or tokens) as a PNG
        (default: plots.png in the run folder, replaced when drawn again; a file you name is
        replaced only with `overwrite=True`). The result holds the file (`path`) and the
        matplotlib figure (`figure`), and shows as the image in a notebook."""
        if overwrite is None:
            overwrite = output is None
        from llmkit.commands.plot import run_plot
        from llmkit.config.base import validate
        from llmkit.config.requests import PlotRequest

        values = {"runs": [self.path], "x": x, "output": output, "overwrite": overwrite}
        return run_plot(validate(PlotRequest, values))


# --- training ----------------------------------------------------------------------------


def prep(recipe: str | Path | None = None, **overrides: Any) -> PreparedData:
    """Read, clean, tokenize and pack a pretraining recipe's data into the prep cache (as
    `llmkit prep`); the arrays of token blocks come back (`train`, `validation`, `meta`)."""
    from llmkit.commands.prep import run_prep
    from llmkit.config.pretrain import PretrainRecipe

    with _python_caller():
        return run_prep(_recipe(PretrainRecipe, recipe, overrides))


def pretrain(
    recipe: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> Run:
    """Pretrain as `llmkit pretrain` does: a shipped recipe name (`"tiny-cpu"`), a YAML path,
    or None for the default recipe, with `overrides` on top: a section as a dict
    (`train={"max_steps": 20}`), or one field by dotted path (`**{"train.lr": 1e-3}`, or
    `train__lr=1e-3`). Returns the run; a finished run given `resume=True` comes back as is."""
    from llmkit.commands.pretrain import run_pretrain
    from llmkit.config.pretrain import PretrainRecipe

    loaded = _recipe(PretrainRecipe, recipe, overrides)
    return _train(loaded, lambda: run_pretrain(loaded, resume=resume, overwrite=overwrite), resume)


def finetune(
    recipe: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> Run:
    """Fine-tune as `llmkit finetune` does (LoRA or full; chat/instruction SFT,
    classification, text-to-text); recipe and overrides as in `pretrain`."""
    from llmkit.commands.finetune import run_finetune
    from llmkit.config.finetune import FinetuneRecipe

    loaded = _recipe(FinetuneRecipe, recipe, overrides)
    return _train(loaded, lambda: run_finetune(loaded, resume=resume, overwrite=overwrite), resume)


def _recipe(schema: type[RB], recipe: str | Path | None, overrides: Mapping[str, Any]) -> RB:
    from llmkit.config.loader import load_recipe

    return load_recipe(schema, recipe, values=dotted(overrides))


def dotted(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}, "data__block_size": 64} -> {"train.lr": 1e-3,
    "data.block_size": 64}: a dict sets fields one by one, never replacing a whole section
    (`model.config_overrides` stays free-form all the same: its keys become paths too)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        path = prefix + key.replace("__", ".")
        if isinstance(value, Mapping) and value:
            out |= dotted(value, path + ".")
        else:
            out[path] = str(value) if isinstance(value, Path) else value
    return out


def _train(recipe: RecipeBase, job: Any, resume: bool) -> Run:
    """The CLI's checks around a training command (llmkit.cli.pretrain_cmd): one process
    only, the run folder's writer lock for the call, an already finished run left as it is."""
    from llmkit.io.runs import RunDir, writer_lock
    from llmkit.train.ending import check_finished

    if recipe.train.devices > 1:  # the CLI relaunches itself on N processes; a notebook cannot
        raise UsageError(
            f"train.devices is {recipe.train.devices}: several processes are launched by the "
            "command line (llmkit pretrain/finetune), not from Python"
        )
    with _python_caller():
        try:
            with writer_lock(recipe.output_dir):
                if resume:
                    check_finished(RunDir(recipe.output_dir), recipe.train)
                job()
        except AlreadyFinished as e:  # worded for Python callers (llmkit.errors.Fix)
            print(e.render())
        except Interrupted as e:
            if not e.resumable:  # outside a step: nothing new was kept
                raise KeyboardInterrupt from None
            raise TrainingInterrupted(
                f"training stopped; its last checkpoint is in {recipe.output_dir}: "
                "continue with the same call and resume=True",
                run=str(recipe.output_dir),
            ) from None
    return Run.open(recipe.output_dir)


@contextmanager
def _python_caller() -> Iterator[None]:
    """Known-harmless library warnings off for the call; and afterwards a Ctrl-C that stopped
    it is forgotten: the CLI's signal flag is sticky (the process ends), but a notebook's
    kernel lives on and its next run must not stop at once."""
    from llmkit.io import interrupt
    from llmkit.io.quiet import harmless_warnings_ignored, plain_output

    if plain_output():  # a notebook or a pipe: a tqdm bar there is "\r" litter ("Writing
        # model shards 0%...100%" twice a run); training's own bar is drawn (train.callbacks)
        from datasets.utils.logging import disable_progress_bar as datasets_bars_off
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()
        datasets_bars_off()
    try:
        with harmless_warnings_ignored():
            yield
    finally:
        interrupt.forget()


# --- models ------------------------------------------------------------------------------


def load(run_or_name: Run | str | Path | None = None, *, runs_root: str | Path = "runs") -> Model:
    """A model to use from Python: a run (`Run`, or its folder), a model folder, an
    `embedded:` model, or None for the newest finished run under `runs_root`. Weights load
    on first use, for what is asked (generation, classification or embeddings)."""
    from llmkit.io.runs import latest_run
    from llmkit.models.load import folder_kind

    if run_or_name is None:
        latest = latest_run(Path(runs_root))
        if latest is None:
            raise UsageError(f"no finished run under {runs_root}: give a run folder or model")
        ref = str(latest.path)
    else:
        ref = str(run_or_name.path if isinstance(run_or_name, Run) else run_or_name)
    return Model(ref, folder_kind(ref))


# --- metrics -----------------------------------------------------------------------------


def evaluate(
    *, preds: Sequence[str], refs: Sequence[str], metrics: str | Sequence[str] | None = None
) -> dict[str, float]:
    """Metrics on lists, as `llmkit eval --preds` scores files: {"bleu": 41.2, "rougeL":
    ..., "exact_match": ...}; text is split by the references' script (jieba words for
    Chinese, characters for Japanese...), so "words" are right beyond English."""
    from llmkit.evaluation.metrics import parse_metric_names, score_texts

    if isinstance(preds, str) or isinstance(refs, str):
        raise UsageError("preds and refs are lists of strings, one per example")
    spec = metrics if isinstance(metrics, str) or metrics is None else ",".join(metrics)
    results = score_texts(list(preds), list(refs), parse_metric_names(spec))
    return {k: float(v) for r in results.values() for k, v in r.values.items()}
