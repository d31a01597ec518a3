"""`train.report_to`: the experiment trackers Trainer integrates (W&B, MLflow, TensorBoard...),
each logging what metrics.jsonl holds, plus the resolved recipe as the run's config.

Trainer would attach its integrations itself from `TrainingArguments.report_to`, but first in
its callback list: before `ProgressLines` adds perplexity and tokens/s to each log, so the
trackers would miss them. llmkit attaches them after it instead (`report_to` stays "none").

Two integrations end their run in `on_train_end`, and every llmkit run evaluates its kept
weights after that (llmkit.train.ending): MLflow's then logs into a fresh run it starts by
itself (the final eval_loss in a second run), and a W&B run would stay open in a notebook.
So llmkit keeps the tracker runs open to the end and closes them after saving
(`end_tracker_runs`), or when training stops early.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import yaml
from transformers import TrainerCallback

from llmkit.errors import UsageError
from llmkit.io.runs import RunDir

# Tracker -> (module to find, the package to install).
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "neptune": ("neptune", "neptune"),
    "clearml": ("clearml", "clearml"),
    "azure_ml": ("azureml", "azureml-sdk"),
    "dvclive": ("dvclive", "dvclive"),
    "codecarbon": ("codecarbon", "codecarbon"),
    "dagshub": ("dagshub", "dagshub"),
    "flyte": ("flytekit", "flytekit"),
    "swanlab": ("swanlab", "swanlab"),
    "trackio": ("trackio", "trackio"),
    "kubeflow": ("kubeflow", "kubeflow-training"),
}
EXTRA = {"wandb", "mlflow"}  # in llmkit's `trackers` extra


def check_trackers(names: Sequence[str]) -> None:
    """Before anything loads: a tracker whose package is missing is one error naming it."""
    for name in names:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            how = "pip install 'llmkit[trackers]'" if name in EXTRA else f"pip install {package}"
            raise UsageError(
                f"train.report_to: {name} needs the {package} package, which is not "
                f"installed ({how})"
            )


def tracker_callbacks(names: Sequence[str], run: RunDir) -> list[TrainerCallback]:
    """The callbacks for `names`, in order; TensorBoard writes under <run>/tensorboard."""
    from transformers.integrations import get_reporting_integration_callbacks

    from llmkit.train.callbacks import RunTensorBoard

    out: list[TrainerCallback] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            out.append(RunTensorBoard(run.path / "tensorboard"))
            continue
        (cls,) = get_reporting_integration_callbacks([name])
        base: type[TrainerCallback] = cls
        # The run stays open through the evaluation after training (see the module doc).
        methods = {"on_train_end": _no_end, "setup": _setup_owned, "llmkit_owns": False}
        out.append(type(f"Open{base.__name__}", (base,), methods)())
    if out:
        out.append(RecipeAsConfig(run))
    return out


def _no_end(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
    """Leave the tracker's run open: `end_tracker_runs` closes it after the last log."""


def _setup_owned(self: Any, *args: Any, **kwargs: Any) -> None:
    """The integration's setup, noting whether it starts the tracker's run (no run was open)
    or joins one the caller opened around llmkit (theirs to close)."""
    wandb, mlflow = _loaded("wandb"), _loaded("mlflow")
    self.llmkit_owns = not (
        (wandb is not None and wandb.run is not None)
        or (mlflow is not None and mlflow.active_run() is not None)
    )
    super(type(self), self).setup(*args, **kwargs)


class RecipeAsConfig(TrainerCallback):
    """The resolved recipe (recipe.yaml) as the tracker run's config: W&B `config.recipe`,
    MLflow `recipe.*` parameters plus the file as the artifact recipe.yaml. Registered after
    the integrations, whose `on_train_begin` starts their runs."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.run.recipe_file.is_file():
            return
        text = self.run.recipe_file.read_text(encoding="utf-8")
        recipe = yaml.safe_load(text)
        wandb = _loaded("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.config.update({"recipe": recipe}, allow_val_change=True)
        mlflow = _loaded("mlflow")
        if mlflow is not None and mlflow.active_run() is not None:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

            params = {f"recipe.{k}": v for k, v in _flat(recipe).items()}
            mlflow.log_params(
                {k: v for k, v in params.items() if len(str(v)) <= MAX_PARAM_VAL_LENGTH}
            )
            mlflow.log_text(text, "recipe.yaml")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _loaded(module: str) -> Any:
    """The tracker's module if this process imported it (an integration did), else None."""
    import sys

    return sys.modules.get(module)


def end_tracker_runs(callbacks: Sequence[Any]) -> None:
    """Flush and close the runs that `callbacks` (a trainer's) started: W&B's and MLflow's
    (a run the caller opened around llmkit is theirs to close)."""
    for cb in callbacks:
        if not getattr(cb, "llmkit_owns", False):
            continue
        cb.llmkit_owns = False
        cb._initialized = False  # a later log would set it up again, in a new run
        wandb, mlflow = _loaded("wandb"), _loaded("mlflow")
        if type(cb).__name__ == "OpenWandbCallback" and wandb is not None and wandb.run:
            wandb.finish()
        elif type(cb).__name__ == "OpenMLflowCallback" and mlflow is not None:
            mlflow.flush_async_logging()  # Trainer logs without waiting (synchronous=False)
            if mlflow.active_run() is not None:
                mlflow.end_run()
