"""How a training run ends: why it stopped, which weights it kept, their one evaluation.

Three things used to be wrong here (issue 14):
- `resume` of a finished run trained one step past `max_steps` (Trainer takes a step before
  it looks at the step count): it is now told "already finished" before anything loads.
- Every run evaluated its final weights twice: Trainer evaluates at the last step (or the
  best checkpoint's step) and the command evaluated again after `train()`. The evaluation of
  the kept weights is now taken from the training log; only a run that never evaluated while
  training evaluates after it.
- The end said neither which checkpoint was kept nor why training stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.config.recipe import TrainConfig
from llmkit.errors import AlreadyFinished, Fix, UsageError
from llmkit.io.runs import RunDir

EARLY_STOPPING = "early stopping"


def check_finished(run: RunDir, train: TrainConfig) -> None:
    """On resume: raise `AlreadyFinished` (exit 0, nothing loaded or written) when the run
    already reached this recipe's end: `max_steps` (or its `epochs`), or early stopping with
    no more steps asked for."""
    done = run.finished()
    if done is None:
        return
    step = int(done["steps"])
    reason = str(done.get("stop_reason", ""))
    planned = int(done.get("max_steps", step))
    if train.max_steps > 0:
        goal = train.max_steps
        reached = step >= goal or (reason.startswith(EARLY_STOPPING) and goal <= planned)
    else:  # epochs: the run records how many it was asked for
        goal = planned
        reached = "epochs" in done and train.epochs <= float(done["epochs"])
    if not reached:
        if not run.checkpoints():
            raise UsageError(
                f"{run.path} finished at step {step} and kept no checkpoint-* folder to "
                "train further from"
            )
        return
    if reason.startswith(EARLY_STOPPING):
        raise AlreadyFinished(
            f"{run.path} already finished at step {step} ({reason}): nothing to do"
        )
    if train.max_steps <= 0:
        raise AlreadyFinished(
            f"{run.path} already finished at step {step} (epochs {train.epochs:g}): nothing to "
            "do; raise train.epochs to train further"
        )
    raise AlreadyFinished(
        f"{run.path} already finished at step {step} (max_steps {goal})", fix=Fix.RAISE_MAX_STEPS
    )


@dataclass
class Ending:
    stop_reason: str  # "reached max_steps 60", "early stopping: eval_loss did not improve ..."
    kept_checkpoint: str | None  # "checkpoint-40" when the best checkpoint's weights were kept
    kept: str  # "checkpoint-40 (best eval_loss 2.31)" / "the final weights (step 60)"
    evaluation: dict[str, Any]  # evaluate() numbers of the kept weights
    max_steps: int
    epochs: float | None  # the epochs asked for, when the run was measured in epochs
    # When training made the chosen metric worse than the model before training: what was
    # done about it, in one line (None: training did not make it worse).
    versus_before: str | None = None

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stop_reason": self.stop_reason,
            "kept": self.kept,
            "kept_checkpoint": self.kept_checkpoint,
            "max_steps": self.max_steps,
        }
        if self.epochs is not None:
            out["epochs"] = self.epochs
        if self.versus_before is not None:
            out["versus_before"] = self.versus_before
        return out


def start_weights(model: Any) -> dict[str, Any]:
    """Copies of the weights training changes (LoRA: the adapter and any new head; full
    fine-tuning: all of them), so the model before training stays a candidate for the kept
    weights. One copy of the trainable parameters: 1.8M for the default LoRA run, 135M x 4 B
    = 0.5 GB for a full SmolLM2 fine-tune."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: Any, weights: dict[str, Any]) -> bool:
    import torch

    params = dict(model.named_parameters())
    if any(n not in params or params[n].shape != w.shape for n, w in weights.items()):
        return False  # the model was rebuilt or sharded since: keep what training left
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    return True


def ending(
    trainer: Any,
    *,
    before: dict[str, Any] | None = None,
    weights_before: dict[str, Any] | None = None,
    metric: str | None = None,
) -> Ending:
    """Why `trainer.train()` returned, the weights it left in `trainer.model`, and their
    evaluation (from the log when training evaluated them, else one `evaluate()`).

    `before`: the evaluation before training. When the kept weights score worse than it on
    `metric` (default: the one that picks the best checkpoint, else eval_loss), the model
    before training is the better one: with `weights_before` (the run keeps its best
    weights) they are put back and kept; either way the ending says so. A 15-step classifier
    fine-tune went from accuracy 0.026 to 0.000 and its final weights were reported as the
    kept "best"."""
    state, args = trainer.state, trainer.args
    best = state.best_model_checkpoint if args.load_best_model_at_end else None
    kept_step = state.global_step
    if best is not None:
        kept_step = int(Path(best).name.rsplit("-", 1)[-1])
    # Trainer evaluates at the last step (and at every eval step, the best one included):
    # those numbers are the kept weights' own. The second evaluation took 92 s of a 334 s
    # 3-step default `llmkit finetune` (SmolLM2 LoRA, 24 validation chats, 2 busy CPU cores;
    # ~40 s of 157 s on idle ones) and 3.3 s of a 36 s 14-step tiny-cpu pretrain.
    logged = [r for r in state.log_history if r.get("step") == kept_step and "eval_loss" in r]
    evaluation = dict(logged[-1]) if logged else trainer.evaluate()
    # Same keys either way: the log's copy lacks the perplexity our log line adds in place.
    evaluation.pop("step", None)
    evaluation.pop("eval_perplexity", None)

    metric = args.metric_for_best_model or "eval_loss"
    if best is not None and metric in evaluation:
        kept = f"{Path(best).name} (best {metric} {evaluation[metric]:.4g})"
    else:
        kept = f"the final weights (step {state.global_step})"

    stopper = _early_stopping(trainer)
    epochs = float(args.num_train_epochs) if args.max_steps <= 0 else None
    if stopper is not None and state.global_step < state.max_steps:
        reason = (
            f"{EARLY_STOPPING}: {metric} did not improve for "
            f"{stopper.early_stopping_patience} evaluations"
        )
    elif state.global_step >= state.max_steps:
        reason = (
            f"reached max_steps {state.max_steps}"
            if epochs is None
            else f"finished {epochs:g} epochs ({state.max_steps} steps)"
        )
    else:
        reason = f"the training data ran out at step {state.global_step}"
    name = Path(best).name if best is not None else None
    versus = None
    chosen = metric or args.metric_for_best_model or "eval_loss"
    if before is not None and chosen in before and chosen in evaluation:
        was, now = float(before[chosen]), float(evaluation[chosen])
        higher_is_better = chosen != "eval_loss"
        short = chosen.removeprefix("eval_")
        if was > now if higher_is_better else was < now:
            if weights_before is not None and _restore(trainer.model, weights_before):
                trained = name or f"step {state.global_step}"
                versus = (
                    f"training made {short} worse ({was:.4g} before training, {now:.4g} at "
                    f"best, {trained}): kept the weights from before training, which score "
                    "better"
                )
                kept = f"the weights from before training ({short} {was:.4g})"
                name = None
                evaluation = {k: v for k, v in before.items() if k not in ("step", "epoch")}
                evaluation.pop("eval_perplexity", None)
            else:
                versus = (
                    f"the kept weights score below the model before training ({short} "
                    f"{now:.4g} vs {was:.4g} before): the model before training is better"
                )
    return Ending(reason, name, kept, evaluation, state.max_steps, epochs, versus)


def summary(metrics: dict[str, Any]) -> str:
    """'stopped: reached max_steps 60; kept the final weights (step 60)' from metrics.json,
    and a warning line when the model before training scored better."""
    line = f"stopped: {metrics['stop_reason']}; kept {metrics['kept']}"
    if metrics.get("versus_before"):
        line += f"\nwarning: {metrics['versus_before']}"
    return line


def _early_stopping(trainer: Any) -> Any:
    """The EarlyStoppingCallback, if it is what stopped training."""
    from transformers import EarlyStoppingCallback

    for cb in trainer.callback_handler.callbacks:
        if (
            isinstance(cb, EarlyStoppingCallback)
            and cb.early_stopping_patience_counter >= cb.early_stopping_patience
        ):
            return cb
    return None
