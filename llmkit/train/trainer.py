"""One Trainer factory for every training command.

The caller builds `TrainingArguments` first (`llmkit.train.arguments.training_arguments`):
they set up the process group, which data prep needs for `main_process_first`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from llmkit.config.recipe import TrainConfig
from llmkit.errors import AlreadyFinished, Fix, UsageError
from llmkit.io.quiet import tied_weights_not_missing
from llmkit.io.runs import RunDir
from llmkit.train.callbacks import (
    LogBeforeSave,
    MetricsJsonl,
    ProgressLines,
    whole_run_train_loss,
)
from llmkit.train.checkpoints import (
    AtomicCheckpointsMixin,
    FiniteTrainingMixin,
    clear_staging,
    resumable_checkpoint,
)
from llmkit.train.interrupt import StopOnSignal
from llmkit.train.loss import use_chunked_loss
from llmkit.train.trackers import end_tracker_runs, tracker_callbacks


def build_trainer(
    model: Any,
    tokenizer: Any,
    args: Any,
    run: RunDir,
    train: TrainConfig,
    datasets: tuple[Any, Any, Any],
    *,
    trainer_cls: type[Trainer] = Trainer,
    callbacks: list[Any] | None = None,
    show_ppl: bool = True,
    **trainer_kwargs: Any,
) -> Trainer:
    """A `trainer_cls` over (train dataset, eval dataset, collator) with llmkit's callbacks:
    log lines, metrics.jsonl, Ctrl-C/SIGTERM handling, early stopping, TensorBoard."""
    train_dataset, eval_dataset, data_collator = datasets
    patience = train.early_stopping_patience
    extra = list(callbacks or [])
    if patience is not None:
        extra.append(EarlyStoppingCallback(early_stopping_patience=patience))
    # Causal LMs on CPU get the chunked cross-entropy: a third faster per step, same numbers.
    use_chunked_loss(model)
    # Every llmkit trainer stops on a non-finite loss and writes checkpoints atomically
    # (see llmkit.train.checkpoints).
    bases = (FiniteTrainingMixin, AtomicCheckpointsMixin, trainer_cls)
    cls = type(f"Atomic{trainer_cls.__name__}", bases, {})
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=tokenizer,
        callbacks=extra,
        **trainer_kwargs,
    )
    shard_on_cpu(trainer)
    # Replace the raw-dict printers with formatted lines (loss, ppl, lr, tokens/s).
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    for callback in list(trainer.callback_handler.callbacks):
        # In Jupyter, Trainer's HTML table of raw logs: ProgressLines draws one bar there and
        # prints the same lines as on a terminal (llmkit.io.notebook).
        if type(callback).__name__ == "NotebookProgressCallback":
            trainer.remove_callback(callback)
    trainer.add_callback(ProgressLines(show_ppl=show_ppl))
    trainer.add_callback(MetricsJsonl(run.metrics_jsonl))
    # After ProgressLines: the trackers log the perplexity and tokens/s that one adds.
    trackers = ["tensorboard"] if train.tensorboard else []
    for callback in tracker_callbacks([*trackers, *train.report_to], run):
        trainer.add_callback(callback)
    trainer.add_callback(StopOnSignal())
    trainer.add_callback(LogBeforeSave())  # last: reads the should_save set by those above
    return trainer


def fit(trainer: Trainer, run: RunDir, *, resume: bool) -> Any:
    """`trainer.train()`, resuming from the newest whole checkpoint when asked, and turning
    SIGINT/SIGTERM into "finish the step, save, exit 130/143"."""
    checkpoint = None
    with trainer.args.main_process_first(desc="checkpoint check"):
        if trainer.args.process_index == 0:
            clear_staging(run)
        if resume:
            checkpoint = str(resumable_checkpoint(run))
    if checkpoint is not None and (done := _finished_checkpoint(trainer, run, Path(checkpoint))):
        return done
    start_step = 0
    if checkpoint is not None:
        start_step = _step_of(Path(checkpoint))
        if trainer.args.process_index == 0:
            print(f"resuming from {checkpoint}")
            # Rows logged after the checkpoint (the steps between it and the kill) are
            # trained again now; kept, metrics.jsonl would hold those steps twice.
            run.trim_metrics(start_step)
    stop = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal))
    stop.install()
    try:
        with tied_weights_not_missing(trainer.model):
            out = trainer.train(resume_from_checkpoint=checkpoint)
    except RuntimeError as e:
        if checkpoint is None or "state_dict" not in str(e):
            raise
        # torch's "Error(s) in loading state_dict ... size mismatch": another model's checkpoint.
        raise UsageError(
            f"{checkpoint} does not fit this recipe's model ({str(e).splitlines()[0][:120]}); "
            f"resume with the recipe it was trained with: {run.recipe_file}"
        ) from None
    finally:
        stop.uninstall()
        # On an error the bar would otherwise be closed at exit, printing after our message.
        for cb in trainer.callback_handler.callbacks:
            if isinstance(cb, ProgressLines) and cb.training_bar is not None:
                cb.training_bar.close()
                cb.training_bar = None
    try:
        stop.exit_if_interrupted(
            trainer.state.global_step, run.path, main=trainer.args.process_index == 0
        )
    except BaseException:
        end_tracker_runs(trainer.callback_handler.callbacks)  # no evaluation will follow
        raise
    loss = whole_run_train_loss(
        trainer.state.log_history, start_step, out.training_loss, trainer.state.global_step
    )
    return out._replace(training_loss=loss)


def _step_of(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def _finished_checkpoint(trainer: Trainer, run: RunDir, checkpoint: Path) -> Any:
    """Trainer takes one step before it compares the step count with `max_steps`, so resuming
    from a checkpoint at `max_steps` trained one step past it. Such a checkpoint is the end of
    training: with the final model saved the run is finished; without (stopped while saving
    it), its weights (or the best checkpoint's) become the final model, untrained further.
    None when there are steps left to train."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    args = trainer.args
    step = int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    if args.max_steps > 0:
        goal = args.max_steps
    else:  # epochs: the step count Trainer itself would plan
        goal = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    if step < goal:
        return None
    if step > goal:
        raise UsageError(
            f"{checkpoint.name} is past max_steps {goal}: set train.max_steps to {step} or "
            f"more to finish this run from it"
        )
    if run.has_final_model():
        raise AlreadyFinished(
            f"{run.path} already finished at step {step} (max_steps {goal})",
            fix=Fix.RAISE_MAX_STEPS,
        )
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint if args.load_best_model_at_end else None
    source = best if best is not None and Path(best).is_dir() else str(checkpoint)
    trainer._load_from_checkpoint(source)
    if args.process_index == 0:
        print(f"{checkpoint} is at max_steps {goal}: saving {Path(source).name} as the final model")
    # No step ran here: the mean over the logged steps (a log at every save covers them all).
    rows = [(int(r["step"]), float(r["loss"])) for r in trainer.state.log_history if "loss" in r]
    total, prev = 0.0, 0
    for at, loss in rows:
        total, prev = total + loss * (at - prev), at
    return TrainOutput(step, total / prev if prev else float("nan"), {})


def generation_eval_trainer(
    pairs: list[tuple[str, str]] | None,
    tokenizer: Any,
    *,
    max_new_tokens: int,
    stop: list[str] | None = None,
    bleu_tokenize: str | None = None,
    rouge_tokenize: str | None = None,
) -> type[Trainer]:
    """Trainer, or with (prompt, reference) `pairs` a Trainer whose every evaluation also
    generates answers and scores them (text2text fine-tuning), text split as `llmkit eval`
    splits the same references (llmkit.evaluation.text)."""
    from llmkit.evaluation.metrics import generation_scores
    from llmkit.evaluation.text import scheme_for
    from llmkit.inference.answers import generate_answers

    if pairs is None:
        return Trainer
    prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
    scheme = scheme_for(references, bleu=bleu_tokenize, rouge=rouge_tokenize)

    class GenerationEvalTrainer(Trainer):
        """Adds BLEU/chrF/ROUGE of greedy generations on validation prompts to every
        evaluation, inside `evaluation_loop`, so checkpoint selection and early stopping
        (which read the returned metrics) can use them."""

        def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix", "eval")
            began = time.perf_counter()
            preds = generate_answers(
                self.model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop
            )
            scores = generation_scores(preds, references, scheme)
            scores["generation_seconds"] = time.perf_counter() - began
            assert output.metrics is not None  # a dict: the loop always reports the loss
            output.metrics.update({f"{prefix}_{k}": round(v, 3) for k, v in scores.items()})
            return output

    return GenerationEvalTrainer


def shard_on_cpu(trainer: Any) -> None:
    """FSDP2 on CPU processes: accelerate 1.15 turns FSDP on for GPU-like devices only and
    silently falls back to DDP over gloo, although torch's `fully_shard` runs on CPU (gloo
    has every collective it uses). The Trainer built its FSDP plugin from the arguments; hand
    it to the accelerator as a GPU run would, before anything is prepared."""
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    plugin_args = trainer.args.fsdp_plugin_args
    if plugin_args is None or state.distributed_type != DistributedType.MULTI_CPU:
        return
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    # Both shared states: the accelerator state is re-read from the partial one later on.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    trainer.is_fsdp_enabled = True


def evaluate_before_training(trainer: Any) -> dict[str, Any] | None:
    """The evaluation of the weights training starts from; None under FSDP, where transformers
    5.24 can prepare the model only together with its optimizer (in `train`).

    With several processes accelerate marks the model this evaluation prepares as prepared,
    and then does not wrap it in DDP for training: every rank trained on its own batches with
    no gradient all-reduce (2 ranks of the tiny recipe held weights summing to 694.4 and 58.2
    after 2 steps; found when FSDP2 matched one process and DDP did not). The mark is taken
    off so that training wraps the model.
    """
    if trainer.is_fsdp_enabled:
        return None
    metrics: dict[str, Any] = trainer.evaluate()
    model = trainer.model
    if getattr(model, "_is_accelerate_prepared", False):
        model._is_accelerate_prepared = False
        accelerator = trainer.accelerator
        accelerator._models = [m for m in accelerator._models if m is not model]
    return metrics
