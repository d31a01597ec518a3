"""Run folders: one per training run, loadable by plain `transformers`.

    runs/<name>/
      recipe.yaml        the resolved recipe (after overrides), so the run can be repeated
      metrics.jsonl      one JSON line per logging / eval step
      metrics.json       final numbers (eval loss and perplexity before and after, tokens/s)
      checkpoint-<N>/    Trainer checkpoints (model, optimizer, scheduler, RNG, data position)
      config.json, model.safetensors, tokenizer files, generation_config.json   final model

The final model sits at the run root, as in HF `run_clm.py`, so
`AutoModelForCausalLM.from_pretrained("runs/<name>")` just works. `runs/LATEST` holds the
name of the newest run that finished, for commands that default to "the latest run".
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import Fix, UsageError
from llmkit.io.write import write_json, write_text

RECIPE_FILE = "recipe.yaml"
METRICS_JSONL = "metrics.jsonl"
METRICS_JSON = "metrics.json"
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

    def holds_run(self) -> bool:
        return self.recipe_file.exists() or any(self.checkpoints())

    def has_final_model(self) -> bool:
        """A full model (config.json) or a LoRA adapter (adapter_config.json) at the root."""
        return any((self.path / f).exists() for f in ("config.json", "adapter_config.json"))

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
        if resume:
            if not self.checkpoints():
                raise UsageError(
                    f"no checkpoint-* folder in {self.path} to resume from", fix=Fix.RESUME
                )
            return
        if self.holds_run() and not overwrite:
            raise UsageError(
                f"output dir {self.path} already holds a run", fix=Fix.RESUME_OR_OVERWRITE
            )

    def create(self, *, overwrite: bool) -> None:
        """Make the folder (deleting an old run only when `overwrite`), checking it is writable."""
        if overwrite and self.holds_run():
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"output dir {self.path} is not writable: {e.strerror}") from e

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

    def write_recipe(self, text: str) -> None:
        write_text(self.recipe_file, text)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.metrics_json, metrics)

    def mark_latest(self) -> None:
        write_text(self.path.parent / LATEST_FILE, self.path.name + "\n")


def latest_run(runs_root: Path = Path("runs")) -> RunDir | None:
    """The newest finished run under `runs_root` (its final model or adapter saved), or None."""
    marker = runs_root / LATEST_FILE
    if marker.exists():
        run = RunDir(runs_root / marker.read_text().strip())
        if run.has_final_model():
            return run
    return None
