"""Ctrl-C and SIGTERM: finish the current step, save a checkpoint, exit 130 / 143.

The signal handler only sets a flag; the step in flight completes. At the end of every step
the ranks agree on the flag (one all-reduce of a single int, only when there are several
processes), so they all stop after the same step: a rank that stopped alone would leave the
others waiting on a gradient all-reduce forever. A second Ctrl-C quits at once.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from llmkit.errors import TrainingInterrupted

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user means it
        self.received = signum
        name = signal.Signals(signum).name
        again = " (Ctrl-C again to quit now)" if signum == signal.SIGINT else ""
        print(
            f"\n{name}: finishing this step and saving a checkpoint{again}",
            file=sys.stderr,
            flush=True,
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        signum = self._agreed_signal(args)
        if signum is not None:
            self.received = signum
            control.should_save = True
            control.should_training_stop = True

    def _agreed_signal(self, args: Any) -> int | None:
        if args.world_size <= 1:
            return self.received
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.received or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def exit_if_interrupted(self, step: int, run_path: Any, *, main: bool) -> None:
        if self.received is None:
            return
        code = EXIT_CODES.get(signal.Signals(self.received), 128 + self.received)
        if main:
            print(f"stopped at step {step}; checkpoint saved in {run_path}", file=sys.stderr)
        raise TrainingInterrupted(code, main=main)
