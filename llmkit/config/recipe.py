"""What every training recipe has: a name, a description and a `train:` section.

Names here are llmkit's; `llmkit.train.arguments` is the only place they are mapped to
Hugging Face `TrainingArguments` names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from llmkit.config.base import Section

# numpy's and torch's seeds are unsigned 32-bit; a bigger one fails deep inside set_seed.
MAX_SEED = 2**32 - 1
# A billion optimizer steps is years on any hardware; 10**30 once ran with lr ~1e-30 (the
# schedule's warmup share of an absurd total) instead of failing.
MAX_STEPS = 10**9
MAX_EPOCHS = 1e6


def _single_path_component(name: str) -> str:
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(
            f"must be a plain folder name (got {name!r}): no '/', and not '', '.' or '..'"
        )
    return name


# A run's name becomes runs/<name>: it must stay inside runs/ (`../x` escaped it) and must
# not be runs/ itself (an empty name did, and --overwrite then deleted every run).
RunName = Annotated[str, AfterValidator(_single_path_component)]


def _fraction_or_file(value: float | str) -> float | str:
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise ValueError("a fraction must be between 0 and 1 (exclusive)")
    return value


# The experiment trackers Trainer integrates (transformers 5's INTEGRATION_TO_CALLBACK keys).
Tracker = Literal[
    "tensorboard", "wandb", "mlflow", "comet_ml", "neptune", "clearml", "azure_ml", "dvclive",
    "codecarbon", "dagshub", "flyte", "swanlab", "trackio", "kubeflow",
]  # fmt: skip


def _one_or_many(value: Any) -> Any:
    """`report_to: wandb` means `[wandb]`; `none` (Trainer's word for it) means `[]`."""
    if value is None or value == "none":
        return []
    return [value] if isinstance(value, str) else value


# `data.validation`: a held-out share (0 < x < 1), or a file used as the validation set.
ValidationSplit = Annotated[float | str, AfterValidator(_fraction_or_file)]


class TrainConfig(Section):
    """The optimisation loop (Hugging Face Trainer underneath)."""

    output_dir: Path | None = Field(None, description="Run folder (default: runs/<recipe name>).")
    max_steps: int = Field(
        -1, ge=-1, le=MAX_STEPS, description="Optimizer steps; -1 means run `epochs` epochs."
    )
    epochs: float = Field(
        1.0, gt=0.0, le=MAX_EPOCHS, description="Passes over the training blocks."
    )
    batch_size: int = Field(8, ge=1, description="Blocks per device per micro-step.")
    eval_batch_size: int | None = Field(None, ge=1, description="Default: batch_size.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(6.0e-4, gt=0.0, description="Peak learning rate.")
    lr_schedule: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Decay after warmup."
    )
    warmup: float = Field(
        0.05, ge=0.0, description="Warmup: a share of total steps if < 1, else a step count."
    )
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decoupled weight decay.")
    adam_beta2: float = Field(0.95, gt=0.0, lt=1.0, description="AdamW beta2.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0: off).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, else fp32."
    )
    compile: bool | None = Field(
        None,
        description="torch.compile the model; None: on CUDA GPUs only (issue 6 reports it ~3x "
        "slower on the 2-core CPUs here; not re-measured).",
    )
    log_every: int = Field(10, ge=1, description="Optimizer steps between log lines.")
    eval_every: int | None = Field(
        100, ge=1, description="Steps between evaluations on the validation split (None: at end)."
    )
    save_every: int | None = Field(
        100, ge=1, description="Steps between checkpoints (None: only the final model)."
    )
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept (oldest deleted).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without a better eval loss."
    )
    seed: int = Field(
        42, ge=0, le=MAX_SEED, description="Seed for init, data order, masking and dropout."
    )
    devices: int = Field(1, ge=1, description="Processes (one per GPU; gloo on CPU).")
    strategy: Literal["ddp", "fsdp", "hsdp"] = Field(
        "ddp",
        description="Across processes: ddp (a full copy each), fsdp (FSDP2: parameters, "
        "gradients and optimizer state sharded over all), hsdp (sharded within a node, "
        "replicated across nodes).",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    tensorboard: bool = Field(False, description="Also log to TensorBoard under <run>/tensorboard.")
    report_to: Annotated[list[Tracker], BeforeValidator(_one_or_many)] = Field(
        default_factory=list,
        description="Experiment trackers to log to as well (Trainer's report_to): wandb, "
        "mlflow, tensorboard (= tensorboard: true), comet_ml... Each gets the resolved "
        "recipe as config and the logged numbers of metrics.jsonl (perplexity, task metrics).",
    )

    @model_validator(mode="after")
    def _check_early_stopping(self) -> TrainConfig:
        if self.early_stopping_patience is not None and self.eval_every is None:
            raise ValueError("early_stopping_patience: needs eval_every to be set")
        return self


class RecipeBase(Section):
    """The fields and behaviour shared by the pretraining and fine-tuning recipes."""

    # The shipped recipe a command runs with no recipe argument.
    DEFAULT_RECIPE: ClassVar[str]
    # This kind's defaults for `train:` fields, where they differ from TrainConfig's
    # (pretraining's). Applied field by field: a value the recipe or an override sets
    # replaces that field only, never the kind's other defaults.
    TRAIN_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _kind_train_defaults(cls, data: Any) -> Any:
        if not cls.TRAIN_DEFAULTS or not isinstance(data, dict):
            return data
        train = data.get("train")
        if train is None:
            train = {}
        if not isinstance(train, dict):
            return data  # not a mapping: the schema reports it
        return {**data, "train": {**cls.TRAIN_DEFAULTS, **train}}

    name: RunName = Field("run", description="Run name: the default run folder is runs/<name>.")
    description: str = Field("", description="One line shown by `llmkit recipes`.")
    if TYPE_CHECKING:  # each recipe declares it last, with its own defaults
        train: TrainConfig

    @property
    def output_dir(self) -> Path:
        return self.train.output_dir or Path("runs") / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
