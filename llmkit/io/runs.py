"""Run folders: one per training run, loadable by plain `transformers`.

    runs/<name>/
      recipe.yaml        the resolved recipe (after overrides), so the run can be repeated
      metrics.jsonl      one JSON line per logging / eval step
      metrics.json       final numbers (eval loss and perplexity before and after, tokens/s)
      validation.jsonl   fine-tunes: the validation examples scored (what `llmkit eval` reads)
      checkpoint-<N>/    Trainer checkpoints (model, optimizer, scheduler, RNG, data position)
      config.json, model.safetensors, tokenizer files, generation_config.json   final model

The final model sits at the run root, as in HF `run_clm.py`, so
`AutoModelForCausalLM.from_pretrained("runs/<name>")` just works. `runs/LATEST` holds the
name of the newest run that finished, for commands that default to "the latest run".

A run folder carries llmkit's marker (`.llmkit`, kind "run"): only a marked folder is ever
deleted when overwriting, and llmkit never writes a run into a folder of someone else's files.

One writer per output: every command that writes a run, an evaluation folder, an export or a
resumable output holds an exclusive kernel lock (`flock`) on `.<name>.lock` beside it for its
whole life (`hold_writer_lock`). The lock sits beside the output because the run folder is
made only after the data and model load (bad data leaves no folder), and it is never deleted:
unlinking a lock file lets a third process lock a new file while a second still holds the old
one. The kernel drops the lock when the process ends however it ends (kill -9 included), so
there is no stale lock to clear. Two `pretrain` runs into one folder once both exited 0 with
one run's model beside the other's checkpoints and metrics.jsonl interleaving both.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import Fix, UsageError
from llmkit.io.write import (
    check_output,
    check_replaceable,
    mark_owned,
    owner_kind,
    remove_owned,
    write_json,
    write_text,
)

RUN = "run"  # the marker kind of a run folder

RECIPE_FILE = "recipe.yaml"
METRICS_JSONL = "metrics.jsonl"
METRICS_JSON = "metrics.json"
# The validation examples a fine-tune scored, in the fields `llmkit eval` reads (text/label,
# source/target), so `llmkit eval` of the run reproduces its own evaluation.
VALIDATION_JSONL = "validation.jsonl"
LATEST_FILE = "LATEST"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / METRICS_JSONL

    @property
    def metrics_json(self) -> Path:
        return self.path / METRICS_JSON

    @property
    def validation_jsonl(self) -> Path:
        return self.path / VALIDATION_JSONL

    def holds_run(self) -> bool:
        """Training happened here: a checkpoint or a final model. A folder with only
        recipe.yaml is a run that stopped before its first checkpoint (bad data, Ctrl-C in
        prep): it blocks nothing."""
        return bool(self.checkpoints()) or self.has_final_model()

    def has_final_model(self) -> bool:
        """A full model (config.json) or a LoRA adapter (adapter_config.json) at the root."""
        return any((self.path / f).exists() for f in ("config.json", "adapter_config.json"))

    def finished(self) -> dict[str, Any] | None:
        """metrics.json of a run that finished: its final model saved and no checkpoint
        newer than the step it ended at (None otherwise, or when metrics.json is unreadable)."""
        if not (self.has_final_model() and self.metrics_json.is_file()):
            return None
        try:
            metrics = json.loads(self.metrics_json.read_text())
            steps = int(metrics["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        newest = self.checkpoints()[-1:]
        if newest and int(newest[0].name.rsplit("-", 1)[-1]) > steps:
            return None  # trained on after the final save (a resume that was interrupted)
        return metrics if isinstance(metrics, dict) else None

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first (by step number)."""
        if not self.path.is_dir():
            return []
        found = [p for p in self.path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber an old run; read-only, so every process can call it.

        An existing run is kept unless resuming (continue it) or overwriting (delete it)
        was asked for: hours of training must never vanish because of a reused name.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"output dir {self.path} exists and is not a folder")
        # A real write probe now, before prep and the model build (a read-only folder was
        # found only after both, minutes in on a large corpus).
        try:
            check_output(self.path, folder=True)
        except UsageError as e:
            raise UsageError(f"output dir {self.path} is not writable ({e.message})") from None
        if resume:
            if self.checkpoints() or self.finished() is not None:
                return  # a finished run is told "nothing to do" by the command
            if self.path.is_dir() and owner_kind(self.path) == RUN:
                # A failed start (bad data, Ctrl-C before the first checkpoint).
                raise UsageError(
                    f"{self.path} never reached a checkpoint, so there is nothing to resume",
                    fix=Fix.RESTART,
                )
            raise UsageError(
                f"no checkpoint-* folder in {self.path} to resume from", fix=Fix.RESUME
            )
        if self.holds_run():
            if not overwrite:
                raise UsageError(
                    f"output dir {self.path} already holds a run", fix=Fix.RESUME_OR_OVERWRITE
                )
            check_replaceable(self.path, RUN)
        elif self.path.is_dir() and any(self.path.iterdir()) and owner_kind(self.path) != RUN:
            raise UsageError(
                f"output dir {self.path} holds files llmkit did not make; llmkit writes runs "
                "only into new, empty or its own folders: choose another one"
            )

    def create(self, *, overwrite: bool) -> None:
        """Make the folder, marked as a run (deleting an old run of llmkit's only when
        `overwrite`; a stub that never trained is replaced), checking it is writable."""
        if (
            self.path.is_dir()
            and owner_kind(self.path) == RUN
            and (overwrite or not self.holds_run())
        ):
            remove_owned(self.path, RUN)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            mark_owned(self.path, RUN)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"output dir {self.path} is not writable: {e.strerror}") from e

    def start(self, recipe_yaml: str, *, resume: bool, overwrite: bool) -> None:
        """`create` the folder and record the recipe. A resumed run keeps the recipe it was
        trained with until it finishes, so resuming with another model is refused by naming
        the recipe that fits."""
        self.create(overwrite=overwrite and not resume)
        if not (resume and self.recipe_file.exists()):
            self.write_recipe(recipe_yaml)

    def first_eval_loss(self) -> float | None:
        """The eval loss logged before training (step 0), so a resumed run can still report
        "before -> after"."""
        if not self.metrics_jsonl.exists():
            return None
        for line in self.metrics_jsonl.read_text().splitlines():
            record = json.loads(line)
            if record.get("step") == 0 and "eval_loss" in record:
                return float(record["eval_loss"])
        return None

    def trim_metrics(self, step: int) -> int:
        """Drop the metrics.jsonl rows logged after `step` (a resume from checkpoint-`step`
        trains those steps again), atomically; returns how many were dropped. A line that is
        not JSON (cut short by a kill) is dropped too."""
        if not self.metrics_jsonl.exists():
            return 0
        kept, dropped = [], 0
        for line in self.metrics_jsonl.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                at = int(record["step"])
            except (ValueError, KeyError, TypeError):
                dropped += 1
                continue
            if at > step:
                dropped += 1
            else:
                kept.append(line + "\n")
        if dropped:
            write_text(self.metrics_jsonl, "".join(kept))
        return dropped

    def write_recipe(self, text: str) -> None:
        write_text(self.recipe_file, text)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.metrics_json, metrics)

    def mark_latest(self) -> None:
        write_text(self.path.parent / LATEST_FILE, self.path.name + "\n")


# Lock files this process holds, by path: open for the life of the process (the kernel frees
# them when it ends). Children our own launcher starts (llmkit.launch) inherit the parent's
# locks by name through WRITER_LOCKS_ENV, so rank 0 does not lock itself out.
_HELD: dict[str, int] = {}
WRITER_LOCKS_ENV = "LLMKIT_WRITER_LOCKS"


def writer_lock_path(output: Path) -> Path:
    output = Path(os.path.abspath(output))
    return output.parent / f".{output.name}.lock"


def hold_writer_lock(output: Path) -> None:
    """Make this process the one writer of `output` (a run folder, an evaluation folder, an
    export, a resumable file) until it exits, or raise a UsageError naming the process that
    already is. Call it before any work; calling it again for the same output is a no-op."""
    _acquire(output)


@contextmanager
def writer_lock(output: Path) -> Iterator[None]:
    """`hold_writer_lock` for the life of a block (the Python API: a caller may run several
    jobs in one process); a lock this process held already stays held."""
    key = _acquire(output)
    try:
        yield
    finally:
        if key is not None:
            fd = _HELD.pop(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _acquire(output: Path) -> str | None:
    """The lock's key when newly taken; None when this process (or its launcher) holds it."""
    lock = writer_lock_path(output)
    key = str(lock)
    if key in _HELD or key in os.environ.get(WRITER_LOCKS_ENV, "").split(os.pathsep):
        return None
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        # Nothing can be written beside the output (a file where its folder should be, a
        # read-only parent): the command's own check says so in its words ("output dir x is
        # not writable"). Known gap: a writable run folder under a read-only parent goes
        # unlocked.
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _lock_owner(fd)
        os.close(fd)
        who = f"llmkit process {pid}" if pid else "another llmkit process"
        raise UsageError(
            f"output {output} is being written by {who}; wait for it to finish or stop it "
            "(one writer per output)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd
    return key


def writer_locks_env() -> dict[str, str]:
    """The environment entry that lets this process's own workers write what it locked."""
    return {WRITER_LOCKS_ENV: os.pathsep.join(_HELD)} if _HELD else {}


def _lock_owner(fd: int) -> int | None:
    """The PID the holder wrote (it writes it right after locking: retry for up to 1 s)."""
    for _ in range(50):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.02)
    return None


def latest_run(runs_root: Path = Path("runs")) -> RunDir | None:
    """The newest finished run under `runs_root` (its final model or adapter saved), or None."""
    marker = runs_root / LATEST_FILE
    if marker.exists():
        run = RunDir(runs_root / marker.read_text().strip())
        if run.has_final_model():
            return run
    return None
