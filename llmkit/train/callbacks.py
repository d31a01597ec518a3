"""Trainer callbacks: readable progress lines and a JSONL metrics log.

A log line looks like
    step  120/600 | loss 5.213 | ppl 183.7 | lr 5.6e-04 | 9,840 tok/s | 61.2s
and every logging or evaluation step appends one JSON object to <run>/metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ProgressCallback

from llmkit.io.notebook import HtmlBar, in_notebook
from llmkit.io.quiet import plain_output


def perplexity(loss: float) -> float:
    # exp() overflows past ~709; a loss that high means "no better than random" anyway.
    return math.exp(loss) if loss < 700 else float("inf")


class ProgressLines(ProgressCallback):
    """The stock tqdm bar, but with one formatted line per log instead of a raw dict.
    `show_ppl=False` for classifiers, whose loss is not a per-token language-model loss.

    Bars only on a terminal (`bars`, default: stderr is one) or in a notebook (an HTML bar
    updated in place, llmkit.io.notebook): in a pipe or a log file a bar is carriage returns
    and cursor-up escapes around every line, so there the log lines, one per
    `train.log_every` steps, are the progress."""

    def __init__(self, *, show_ppl: bool = True, bars: bool | None = None) -> None:
        super().__init__()
        self.training_bar: Any = None  # tqdm's, or a notebook's HtmlBar
        self.show_ppl = show_ppl
        self.bars = not plain_output() if bars is None else bars
        self._t0 = time.perf_counter()
        self._last_time = self._t0
        self._last_tokens = 0
        self._last_eval: tuple[int, Any] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bars:
            super().on_train_begin(args, state, control, **kwargs)
        elif state.is_world_process_zero and in_notebook():  # not a terminal, but redrawn
            self.training_bar = HtmlBar(state.max_steps)
        self.current_step = 0
        self._t0 = self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_prediction_step(
        self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kwargs: Any
    ) -> None:
        if self.bars:
            super().on_prediction_step(args, state, control, eval_dataloader, **kwargs)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        enrich(logs, self._tokens_per_second(logs, state), show_ppl=self.show_ppl)
        line = format_log(logs, state, self._t0, show_ppl=self.show_ppl)
        # The evaluation before training (max_steps still 0) gets the command's own summary
        # line ("validation perplexity before training: ..."); "step 0/0" would repeat it.
        if line is None or state.max_steps == 0:
            return
        # The command's final evaluation repeats the last step's when training ended on an
        # eval step: same step, same loss; one line is enough (the JSONL log keeps both).
        key = (state.global_step, logs.get("eval_loss"))
        if "eval_loss" in logs and key == self._last_eval:
            return
        if "eval_loss" in logs:
            self._last_eval = key
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)

    def _tokens_per_second(self, logs: dict[str, Any], state: Any) -> float | None:
        if "loss" not in logs:
            return None
        now = time.perf_counter()
        seen = state.num_input_tokens_seen
        rate = (seen - self._last_tokens) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_tokens = now, seen
        return rate


def enrich(logs: dict[str, Any], rate: float | None, *, show_ppl: bool = True) -> None:
    """Add what people read off a log (perplexity, tokens/s) to the dict every later
    callback sees: the JSONL writer and TensorBoard log the same numbers we print.
    `show_ppl=False` for classifiers: exp(class cross-entropy) is no perplexity."""
    if show_ppl and "loss" in logs:
        logs["perplexity"] = perplexity(float(logs["loss"]))
    if show_ppl and "eval_loss" in logs:
        logs["eval_perplexity"] = perplexity(float(logs["eval_loss"]))
    if rate is not None:
        logs["tokens_per_second"] = round(rate, 1)


# Task metrics shown after the eval loss, in this order, when the evaluation computed them.
EVAL_METRICS = {
    "accuracy": "accuracy {:.3f}",
    "macro_f1": "macro-F1 {:.3f}",
    "bleu": "BLEU {:.1f}",
    "rougeL": "ROUGE-L {:.1f}",
    "generation_seconds": "answers {:.1f}s",
    # TRL's preference metrics (implicit rewards: beta x log-ratio to the reference)
    "rewards/accuracies": "reward accuracy {:.3f}",
    "rewards/margins": "reward margin {:.3f}",
}


def eval_summary(logs: dict[str, Any], *, show_ppl: bool = True) -> str:
    """'eval loss 2.266 | eval ppl 9.6 | BLEU 4.1' from an evaluate() dict."""
    loss = float(logs["eval_loss"])
    parts = [f"eval loss {loss:.3f}"]
    if show_ppl:
        parts.append(f"eval ppl {perplexity(loss):.1f}")
    parts += [f.format(logs[f"eval_{k}"]) for k, f in EVAL_METRICS.items() if f"eval_{k}" in logs]
    return " | ".join(parts)


def format_log(logs: dict[str, Any], state: Any, t0: float, *, show_ppl: bool = True) -> str | None:
    step = f"step {state.global_step:>5}/{state.max_steps}"
    elapsed = f"{time.perf_counter() - t0:.1f}s"
    if "loss" in logs:
        loss = float(logs["loss"])
        parts = [step, f"loss {loss:.3f}"]
        if show_ppl:
            parts.append(f"ppl {logs['perplexity']:.1f}")
        if "learning_rate" in logs:
            parts.append(f"lr {float(logs['learning_rate']):.1e}")
        if "tokens_per_second" in logs:
            parts.append(f"{logs['tokens_per_second']:,.0f} tok/s")
        return " | ".join([*parts, elapsed])
    if "eval_loss" in logs:
        return f"{step} | {eval_summary(logs, show_ppl=show_ppl)} | {elapsed}"
    return None


class MetricsJsonl(TrainerCallback):
    """Append every log (train and eval) to metrics.jsonl, on the main process only.
    Registered after `ProgressLines`, so the records carry its perplexity and tokens/s."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        record["tokens_seen"] = state.num_input_tokens_seen
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class LogBeforeSave(TrainerCallback):
    """Log the training loss at every step that saves a checkpoint or ends training.

    A checkpoint's `log_history` then covers every step up to it, so a resumed run can
    report `train_loss` over the whole run (`whole_run_train_loss`): transformers' own
    `training_loss` covers only the steps trained since the resume (a 10-step run resumed
    at step 5 reported the mean of steps 6-10). Registered last: it reads the `should_save`
    that the flow and signal callbacks set."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save or control.should_training_stop:
            control.should_log = True


def whole_run_train_loss(
    log_history: list[dict[str, Any]], start_step: int, resumed_loss: float, end_step: int
) -> float:
    """The mean training loss over steps 1..end_step of a run resumed at `start_step`, from
    the logged means up to `start_step` (each covering the steps since the log before it)
    and transformers' mean over the steps trained since. Not resumed: `resumed_loss`."""
    if start_step <= 0 or end_step <= start_step:
        return resumed_loss
    rows = sorted(
        (int(r["step"]), float(r["loss"]))
        for r in log_history
        if "loss" in r and "step" in r and int(r["step"]) <= start_step
    )
    if not rows or rows[-1][0] != start_step:
        return resumed_loss  # a checkpoint from before LogBeforeSave: the log has a gap
    before, prev = 0.0, 0
    for step, loss in rows:
        before += loss * (step - prev)
        prev = step
    return (before + resumed_loss * (end_step - start_step)) / end_step


class RunTensorBoard(TensorBoardCallback):
    """TensorBoard events in one folder per run, `<run>/tensorboard`.

    transformers' callback closes its writer when training ends, and the evaluation after
    training (every llmkit run does one) opened a new writer in its default folder,
    `<run>/runs/<date>_<host>`: two event folders per run, which TensorBoard lists as two runs.
    With the folder pinned, a reopened writer adds a second event file to the same folder,
    which TensorBoard reads as one run. Registered after `ProgressLines`, so its scalars
    include perplexity (train/perplexity, eval/perplexity) and tokens/s."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.logging_dir = str(log_dir)  # beats the TENSORBOARD_LOGGING_DIR variable too
