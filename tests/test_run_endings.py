"""How runs end (issue 14): never a step past max_steps, the kept weights evaluated once, the
summary says what was kept and why training stopped, `--resume` of a finished run does
nothing, and a failed start leaves no folder (or one that `--resume` names as such)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")
CADENCE = ["--set", "train.eval_every=3", "--set", "train.save_every=3"]


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _evals_at(run: Path, step: int) -> int:
    return sum(1 for r in _records(run) if r["step"] == step and "eval_loss" in r)


def _state_step(ckpt: Path) -> int:
    return int(json.loads((ckpt / "trainer_state.json").read_text())["global_step"])


def _files(run: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(run)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(run.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny-cpu run of 6 steps (eval and checkpoint every 3) and its stdout."""
    work = tmp_path_factory.mktemp("endings")
    shutil.copytree(REPO / "tests" / "data", work / "tests" / "data")
    out = run_cli("pretrain", TINY, "--max-steps", "6", *CADENCE, cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    return work / "runs" / "tiny-cpu", out.stdout


def _copy(finished: tuple[Path, str], tmp_path: Path) -> Path:
    work = tmp_path / "w"
    shutil.copytree(finished[0].parents[1], work)
    return work


def test_a_run_evaluates_its_final_weights_once_and_says_why_it_stopped(
    finished: tuple[Path, str],
) -> None:
    run, stdout = finished
    assert "stopped: reached max_steps 6; kept the final weights (step 6)" in stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stop_reason"] == "reached max_steps 6"
    assert metrics["kept_checkpoint"] is None and metrics["steps"] == metrics["max_steps"] == 6
    # One evaluation of the final weights (Trainer's, at step 6), and it is the one reported.
    assert _evals_at(run, 6) == 1
    # (The training loss is logged at step 6 too: every checkpoint and the last step log it.)
    evals = [r["eval_loss"] for r in _records(run) if r["step"] == 6 and "eval_loss" in r]
    assert metrics["eval_loss"] == evals[0]
    assert max(r["step"] for r in _records(run)) == 6 == _state_step(run / "checkpoint-6")


def test_resuming_a_finished_run_says_so_and_touches_nothing(
    finished: tuple[Path, str], tmp_path: Path
) -> None:
    work = _copy(finished, tmp_path)
    run = work / "runs" / "tiny-cpu"
    before = _files(run)
    out = run_cli("pretrain", TINY, "--max-steps", "6", *CADENCE, "--resume", cwd=work)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [
        "runs/tiny-cpu already finished at step 6 (max_steps 6): nothing to do; "
        "raise --max-steps to train further"
    ]
    assert _files(run) == before


def test_resume_with_more_steps_trains_exactly_to_the_new_max_steps(
    finished: tuple[Path, str], tmp_path: Path
) -> None:
    work = _copy(finished, tmp_path)
    run = work / "runs" / "tiny-cpu"
    out = run_cli("pretrain", TINY, "--max-steps", "9", *CADENCE, "--resume", cwd=work)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from runs/tiny-cpu/checkpoint-6" in out.stdout
    assert "stopped: reached max_steps 9; kept the final weights (step 9)" in out.stdout
    assert max(r["step"] for r in _records(run)) == 9 == _state_step(run / "checkpoint-9")
    assert _evals_at(run, 9) == 1


def test_a_checkpoint_at_max_steps_without_its_final_model_becomes_it_untrained(
    finished: tuple[Path, str], tmp_path: Path
) -> None:
    """Killed while saving the final model: resuming saves checkpoint-6 as it, no step 7."""
    work = _copy(finished, tmp_path)
    run = work / "runs" / "tiny-cpu"
    for f in ("config.json", "model.safetensors", "metrics.json"):
        (run / f).unlink()
    out = run_cli("pretrain", TINY, "--max-steps", "6", *CADENCE, "--resume", cwd=work)
    assert out.returncode == 0, out.stderr[-2000:]
    saying = "runs/tiny-cpu/checkpoint-6 is at max_steps 6: saving checkpoint-6 as the final model"
    assert saying in out.stdout
    assert (run / "model.safetensors").read_bytes() == (
        run / "checkpoint-6" / "model.safetensors"
    ).read_bytes()
    assert max(r["step"] for r in _records(run)) == 6 and not (run / "checkpoint-7").exists()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6
    fewer = run_cli("pretrain", TINY, "--max-steps", "4", *CADENCE, "--resume", cwd=work)
    assert fewer.returncode == 0 and "already finished at step 6 (max_steps 4)" in fewer.stdout


def test_early_stopping_names_the_best_checkpoint_and_why(tmp_path: Path) -> None:
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    # lr 0.3 overshoots: the eval loss rises after the first evaluation (8.4, 22.7, 13.1).
    args = ["pretrain", TINY, "--max-steps", "12", "--set", "train.lr=0.3"]
    args += ["--set", "train.eval_every=2", "--set", "train.early_stopping_patience=2"]
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / "tiny-cpu"
    metrics = json.loads((run / "metrics.json").read_text())
    evals = {r["step"]: r["eval_loss"] for r in _records(run) if "eval_loss" in r and r["step"]}
    best = min(evals, key=evals.__getitem__)
    assert metrics["steps"] < 12 and max(evals) == metrics["steps"]
    assert metrics["stop_reason"] == "early stopping: eval_loss did not improve for 2 evaluations"
    assert metrics["kept_checkpoint"] == f"checkpoint-{best}"
    assert metrics["eval_loss"] == evals[best]
    assert f"kept checkpoint-{best} (best eval_loss {evals[best]:.4g})" in out.stdout
    again = run_cli(*args, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"already finished at step {metrics['steps']} (early stopping:" in again.stdout


def test_bad_data_leaves_no_run_folder_and_resume_of_a_stub_says_start_again(
    tmp_path: Path,
) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    out = run_cli("pretrain", TINY, "--set", "data.sources=[empty.txt]", cwd=tmp_path)
    assert out.returncode == 2 and "the corpus is empty" in out.stderr
    assert not (tmp_path / "runs" / "tiny-cpu").exists()
    stub = tmp_path / "runs" / "old"  # what a failed start left before this change
    stub.mkdir(parents=True)
    (stub / ".llmkit").write_text('{"kind": "run"}')
    (stub / "recipe.yaml").write_text("name: old\n")
    again = run_cli("pretrain", TINY, "--resume", "--output-dir", "runs/old", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        "error: runs/old never reached a checkpoint, so there is nothing to resume: run the "
        "same command without --resume to start it again"
    ]


def test_finetune_keeps_the_best_checkpoint_evaluated_once_and_resume_does_nothing(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from llmkit.commands.finetune import run_finetune
    from llmkit.config.finetune import FinetuneRecipe
    from llmkit.config.loader import load_recipe
    from llmkit.errors import AlreadyFinished

    overrides = [
        f"model.init={tiny_llama_dir}",
        f"train.output_dir={tmp_path / 'ft'}",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.eval_every=2",
        "train.save_every=2",
        "train.log_every=1",
        "data.max_eval_examples=8",
    ]
    recipe = load_recipe(FinetuneRecipe, None, overrides)
    result = run_finetune(recipe)
    run = result.run.path
    evals = {r["step"]: r["eval_loss"] for r in _records(run) if "eval_loss" in r and r["step"]}
    best = min(evals, key=evals.__getitem__)
    assert sorted(evals) == [2, 4] and _evals_at(run, 4) == 1 and _evals_at(run, best) == 1
    assert result.metrics["kept_checkpoint"] == f"checkpoint-{best}"
    assert result.metrics["eval_loss"] == evals[best]
    assert result.metrics["stop_reason"] == "reached max_steps 4"
    assert max(r["step"] for r in _records(run)) == 4 == _state_step(run / "checkpoint-4")
    before = _files(run)
    with pytest.raises(AlreadyFinished) as done:
        run_finetune(recipe, resume=True)
    assert done.value.code == 0
    assert str(done.value.message).endswith("already finished at step 4 (max_steps 4)")
    assert _files(run) == before


def test_a_run_measured_in_epochs_ends_and_resumes_by_epochs(tmp_path: Path) -> None:
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    args = ["pretrain", TINY, "--set", "train.max_steps=-1", "--set", "train.epochs=0.5"]
    args += ["--set", "train.eval_every=null", "--set", "train.save_every=5"]
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / "tiny-cpu"
    metrics = json.loads((run / "metrics.json").read_text())
    steps = metrics["steps"]
    assert metrics["stop_reason"] == f"finished 0.5 epochs ({steps} steps)"
    assert metrics["epochs"] == 0.5 and _state_step(run / f"checkpoint-{steps}") == steps
    assert _evals_at(run, steps) == 1  # no evaluation while training: one after it
    again = run_cli(*args, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"already finished at step {steps} (epochs 0.5): nothing to do" in again.stdout
