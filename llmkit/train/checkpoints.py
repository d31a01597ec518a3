"""Checkpoints that survive `kill -9`, and resuming from the newest one that is whole.

Trainer writes `checkpoint-N/` file by file in place, so a kill while saving leaves a folder
that looks like a checkpoint but has no trainer_state.json (seen here: resuming then
crashed). We stage every checkpoint in `<run>/.staging/checkpoint-N/` and rename it into the
run folder only when every process has finished writing: a `checkpoint-N/` folder is always
complete. On resume we still validate the newest one (a disk can fill, a file can be cut) and
fall back to the previous one with a warning, moving the bad one aside rather than deleting it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from llmkit.errors import Fix, UsageError
from llmkit.io.runs import RunDir

STAGING = ".staging"
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")


class FiniteTrainingMixin:
    """Mix into a `transformers.Trainer` subclass: the first non-finite loss or gradient norm
    stops training with one line, before this step logs or saves anything. A NaN learning
    rate once trained to all-NaN weights, saved them and exited 0; now the last good
    checkpoint stays the newest, and no final model, metrics.json or LATEST is written."""

    def _maybe_log_save_evaluate(
        self, tr_loss: Any, grad_norm: Any, *args: Any, **kwargs: Any
    ) -> None:
        import torch

        trainer: Any = self
        # One scalar check per optimizer step: a host sync on a GPU, microseconds next to a step.
        bad = []
        if not bool(torch.isfinite(tr_loss).all()):
            bad.append("the loss is not finite")
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            bad.append(f"the gradient norm is {float(grad_norm)}")
        if bad:
            kept = RunDir(Path(trainer.args.output_dir)).checkpoints()
            last = f"{kept[-1]} is the last good checkpoint" if kept else "no checkpoint exists"
            raise UsageError(
                f"training diverged at step {trainer.state.global_step}: {' and '.join(bad)}; "
                f"nothing from this step was saved ({last}); lower train.lr or check the data"
            )
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)  # type: ignore[misc]


class AtomicCheckpointsMixin:
    """Mix into a `transformers.Trainer` subclass: checkpoints appear whole or not at all."""

    _staging_dir: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        if self._staging_dir is not None:
            return self._staging_dir
        return super()._get_output_dir(trial)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        trainer: Any = self
        run_dir = Path(self._get_output_dir(trial))
        name = f"checkpoint-{trainer.state.global_step}"
        staged, final = run_dir / STAGING / name, run_dir / name
        self._staging_dir = str(run_dir / STAGING)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        except (OSError, SafetensorError) as e:
            # Disk full (ENOSPC), file-size limit (EFBIG), permissions: the staged folder is
            # dropped, the checkpoints already in the run folder are untouched. safetensors
            # reports I/O errors as SafetensorError, not OSError.
            shutil.rmtree(staged, ignore_errors=True)
            kept = RunDir(run_dir).checkpoints()
            last = f"; the last complete one is {kept[-1].name}" if kept else ""
            raise UsageError(
                f"cannot write {name} to {run_dir}: {getattr(e, 'strerror', None) or e} "
                f"(is the disk full?){last}"
            ) from e
        finally:
            self._staging_dir = None
        state = trainer.state
        if state.best_model_checkpoint and STAGING in state.best_model_checkpoint:
            # Trainer noted the staged path as "best"; point it (and the saved state) at the
            # folder's final name.
            state.best_model_checkpoint = str(final)
            if trainer.args.should_save:
                state.save_to_json(str(staged / "trainer_state.json"))
        trainer.accelerator.wait_for_everyone()  # every rank wrote its RNG state into `staged`
        if trainer.args.should_save:
            _fsync_tree(staged)
            if final.exists():  # a re-run reached a step saved before a crash: keep both
                final.rename(run_dir / f"replaced-{name}-{os.getpid()}")
            staged.rename(final)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=trainer.args.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
                use_mtime=False,
            )
        trainer.accelerator.wait_for_everyone()


def _fsync_tree(folder: Path) -> None:
    """Flush file contents before the rename, so a power cut cannot leave a renamed folder
    with empty files (rename is atomic; the data behind it must already be on disk)."""
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from, or None if it is whole."""
    state_file = ckpt / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is cut short or corrupt"
    step = int(ckpt.name.rsplit("-", 1)[-1])
    if state.get("global_step") != step:
        return f"trainer_state.json says step {state.get('global_step')}, folder says {step}"
    weights = [ckpt / f for f in WEIGHT_FILES if (ckpt / f).exists()]
    if not weights:
        return "no model weights"
    for w in weights:
        if w.suffix == ".safetensors" and (why := _safetensors_problem(w)):
            return f"{w.name}: {why}"
    # Under FSDP accelerate writes the (gathered) optimizer state as optimizer.bin.
    optimizer = "optimizer.bin" if (ckpt / "optimizer.bin").exists() else "optimizer.pt"
    for f in (optimizer, "scheduler.pt"):
        if not (ckpt / f).exists():
            return f"{f} is missing"
        if (why := _torch_zip_problem(ckpt / f)) is not None:
            return f"{f}: {why}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    # Header: 8-byte length + JSON with each tensor's byte range; the file must hold them all.
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (ValueError, KeyError, UnicodeDecodeError):
        return "header is corrupt"
    if path.stat().st_size < 8 + n + end:
        return f"cut short ({path.stat().st_size:,} of {8 + n + end:,} bytes)"
    return None


def _torch_zip_problem(path: Path) -> str | None:
    # torch.save writes a zip archive; its central directory is at the very end, so a cut
    # file fails to open and a flipped byte fails the CRC check.
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError):
        return "cut short or corrupt"
    return f"corrupt member {bad}" if bad else None


def check_resume_processes(run: RunDir, world_size: int) -> None:
    """Refuse, before any work, to resume an FSDP checkpoint on another number of processes
    than saved it (found by its per-rank RNG files, rng_state_<rank>.pth): one process failed
    with transformers' "only supported when using PyTorch FSDP" traceback, and three
    resumed a two-process run with a global batch of 24 blocks instead of 16, so the data
    position and every later step differed from the run being continued."""
    whole = [c for c in reversed(run.checkpoints()) if checkpoint_problem(c) is None]
    if not whole:
        return
    newest = whole[0]
    if not any(p.name.startswith("pytorch_model_fsdp") for p in newest.iterdir()):
        return
    saved = len(list(newest.glob("rng_state_*.pth"))) or 1
    if saved != world_size:
        raise UsageError(
            f"{newest} was saved by {saved} FSDP process{'es' if saved > 1 else ''} and this "
            f"run has {world_size}: resume it on {saved} (train.devices x nodes), since its "
            "batch and data position follow the process count"
        )


def resumable_checkpoint(run: RunDir) -> Path:
    """The newest whole checkpoint; broken newer ones are moved aside with a warning."""
    candidates = run.checkpoints()
    if not candidates:
        raise UsageError(f"no checkpoint-* folder in {run.path} to resume from", fix=Fix.RESUME)
    for ckpt in reversed(candidates):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        aside = ckpt.with_name(f"corrupt-{ckpt.name}")
        print(f"warning: {ckpt} cannot be resumed ({problem}); moved to {aside.name}")
        if aside.exists():
            shutil.rmtree(aside)
        ckpt.rename(aside)
    raise UsageError(f"every checkpoint in {run.path} is incomplete or corrupt", fix=Fix.RESUME)


def save_final_model(trainer: Any, run: RunDir, *, generation_config: bool) -> None:
    """The trained model or adapter, its tokenizer (and generation config) at the run root.

    Written to `<run>/.staging/final` first and moved in file by file, config.json (which
    makes the folder a model) last: a full disk or a kill mid-save leaves the checkpoints and
    no partial model (it once left config.json and no weights). Every process calls it
    (FSDP gathers the weights); only the main one writes.
    """
    staged = run.path / STAGING / "final"
    main = trainer.args.should_save
    if main:
        shutil.rmtree(staged, ignore_errors=True)
    try:
        trainer.save_model(str(staged))
        if main and generation_config:
            trainer.model.generation_config.save_pretrained(str(staged))
    except (OSError, SafetensorError) as e:
        shutil.rmtree(staged, ignore_errors=True)
        kept = run.checkpoints()
        last = f"; {kept[-1]} is kept (resume from it to save again)" if kept else ""
        raise UsageError(
            f"cannot save the final model to {run.path}: "
            f"{getattr(e, 'strerror', None) or e} (is the disk full?){last}"
        ) from e
    if not main:
        return
    _fsync_tree(staged)
    defining = ("config.json", "adapter_config.json")
    for f in sorted(staged.iterdir(), key=lambda p: p.name in defining):
        os.replace(f, run.path / f.name)
    staged.rmdir()


def clear_staging(run: RunDir) -> None:
    """A checkpoint being staged when the process died is not a checkpoint: drop it."""
    staging = run.path / STAGING
    if staging.exists():
        shutil.rmtree(staging)
