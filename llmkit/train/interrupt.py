"""Ctrl-C and SIGTERM: finish the current step, save a checkpoint, exit 130 / 143.

The signal handler only sets a flag; the step in flight completes. At the end of every step
the ranks agree on the flag (one all-reduce of a single int, only when there are several
processes), so they all stop after the same step: a rank that stopped alone would leave the
others waiting on a gradient all-reduce forever. A second Ctrl-C quits at once.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from llmkit.io.interrupt import StopFlag


class StopOnSignal(TrainerCallback):
    """The step in flight finishes, a checkpoint is saved, then training stops; every rank
    stops after the same step."""

    def __init__(self) -> None:
        self.flag = StopFlag("this step and saving a checkpoint")

    @property
    def received(self) -> int | None:
        return self.flag.received

    def install(self) -> None:
        self.flag.install()

    def uninstall(self) -> None:
        self.flag.uninstall()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        signum = self._agreed_signal(args)
        if signum is not None:
            self.flag.received = signum
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
        self.flag.stop(f"stopped at step {step}; checkpoint saved in {run_path}", main=main)
