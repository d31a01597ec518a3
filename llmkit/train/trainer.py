"""One Trainer factory for every training command.

The caller builds `TrainingArguments` first (`llmkit.train.arguments.training_arguments`):
they set up the process group, which data prep needs for `main_process_first`.
"""

from __future__ import annotations

from typing import Any

from transformers import EarlyStoppingCallback, Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from llmkit.config.schema import TrainConfig
from llmkit.runs import RunDir
from llmkit.train.callbacks import MetricsJsonl, ProgressLines


def build_trainer(
    *,
    model: Any,
    tokenizer: Any,
    args: Any,
    train: TrainConfig,
    run: RunDir,
    train_dataset: Any,
    eval_dataset: Any,
    data_collator: Any,
    trainer_cls: type[Trainer] = Trainer,
    callbacks: list[Any] | None = None,
    **trainer_kwargs: Any,
) -> Trainer:
    patience = train.early_stopping_patience
    extra = list(callbacks or [])
    if patience is not None:
        extra.append(EarlyStoppingCallback(early_stopping_patience=patience))
    if train.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        extra.append(TensorBoardCallback(SummaryWriter(log_dir=str(run.path / "tensorboard"))))
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=tokenizer,
        callbacks=extra,
        **trainer_kwargs,
    )
    # Replace the raw-dict printers with formatted lines (loss, ppl, lr, tokens/s).
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressLines())
    trainer.add_callback(MetricsJsonl(run.metrics_jsonl))
    return trainer
