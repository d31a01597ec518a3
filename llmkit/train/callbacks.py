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
from transformers.trainer_callback import ProgressCallback


def perplexity(loss: float) -> float:
    # exp() overflows past ~709; a loss that high means "no better than random" anyway.
    return math.exp(loss) if loss < 700 else float("inf")


class ProgressLines(ProgressCallback):
    """The stock tqdm bar, but with one formatted line per log instead of a raw dict."""

    def __init__(self) -> None:
        super().__init__()
        self._t0 = time.perf_counter()
        self._last_time = self._t0
        self._last_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        self._t0 = self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        enrich(logs, self._tokens_per_second(logs, state))
        line = format_log(logs, state, self._t0)
        if line is None:
            return
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


def enrich(logs: dict[str, Any], rate: float | None) -> None:
    """Add what people read off a log (perplexity, tokens/s) to the dict every later
    callback sees: the JSONL writer and TensorBoard log the same numbers we print."""
    if "loss" in logs:
        logs["perplexity"] = perplexity(float(logs["loss"]))
    if "eval_loss" in logs:
        logs["eval_perplexity"] = perplexity(float(logs["eval_loss"]))
    if rate is not None:
        logs["tokens_per_second"] = round(rate, 1)


def format_log(logs: dict[str, Any], state: Any, t0: float) -> str | None:
    step = f"step {state.global_step:>5}/{state.max_steps}"
    elapsed = f"{time.perf_counter() - t0:.1f}s"
    if "loss" in logs:
        loss = float(logs["loss"])
        parts = [step, f"loss {loss:.3f}", f"ppl {logs['perplexity']:.1f}"]
        if "learning_rate" in logs:
            parts.append(f"lr {float(logs['learning_rate']):.1e}")
        if "tokens_per_second" in logs:
            parts.append(f"{logs['tokens_per_second']:,.0f} tok/s")
        return " | ".join([*parts, elapsed])
    if "eval_loss" in logs:
        loss, ppl = float(logs["eval_loss"]), logs["eval_perplexity"]
        return f"{step} | eval loss {loss:.3f} | eval ppl {ppl:.1f} | {elapsed}"
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
