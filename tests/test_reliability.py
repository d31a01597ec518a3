"""Crash, interrupt and resume: no work lost, and resumed training equals uninterrupted training.

Runs are real CLI subprocesses killed with real signals. Kill points are found by watching the
run folder (a checkpoint being staged, a step in metrics.jsonl), not by hooks in llmkit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from safetensors.torch import load_file

from llmkit.io.runs import RunDir
from llmkit.train.checkpoints import checkpoint_problem

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")
# 20 steps, a checkpoint every 5, a log line every step, no evaluation: ~10 s alone on 2 cores.
ARGS = [
    "--max-steps",
    "20",
    "--set",
    "train.save_every=5",
    "--set",
    "train.log_every=1",
    "--set",
    "train.eval_every=null",
    "--set",
    "train.save_total_limit=null",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = tmp_path_factory.mktemp("reliability")
    shutil.copytree(REPO / "tests" / "data", wd / "tests" / "data")
    return wd


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> dict:
    out = run_cli("pretrain", TINY, *ARGS, "--output-dir", "runs/full", cwd=workdir)
    assert out.returncode == 0, out.stderr[-2000:]
    return load_file(workdir / "runs/full/model.safetensors")


def _start(workdir: Path, run: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmkit", "pretrain", TINY, *ARGS, "--output-dir", run, *extra],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"run ended before the kill point: {err[-2000:]}")
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)


def _logged_step(run: Path, step: int) -> Callable[[], bool]:
    def seen() -> bool:
        f = run / "metrics.jsonl"
        return f.exists() and f'"step": {step},' in f.read_text()

    return seen


def _losses(run: Path) -> list[tuple[int, float]]:
    """(step, training loss) of every training-loss row of metrics.jsonl, in order."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


KILL_POINTS = {
    # while checkpoint-10 is being written: it must not count, resume from checkpoint-5
    "mid-checkpoint": (lambda run: (run / ".staging" / "checkpoint-10").exists(), "checkpoint-5"),
    # between checkpoints, after step 13 was logged: resume from checkpoint-10
    "mid-interval": (lambda run: _logged_step(run, 13)(), "checkpoint-10"),
    # right at the start, after the first checkpoint
    "early": (lambda run: (run / "checkpoint-5").exists(), "checkpoint-5"),
}


@pytest.mark.parametrize(
    "point",
    [
        "mid-checkpoint",
        pytest.param("mid-interval", marks=pytest.mark.slow),
        pytest.param("early", marks=pytest.mark.slow),
    ],
)
def test_kill_9_then_resume_equals_uninterrupted(
    workdir: Path, uninterrupted: dict, point: str
) -> None:
    run = workdir / "runs" / f"kill-{point}"
    condition, expected_checkpoint = KILL_POINTS[point]
    proc = _start(workdir, str(run.relative_to(workdir)))
    _wait_for(lambda: condition(run), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists()  # it really died before finishing

    resumed = run_cli("pretrain", TINY, *ARGS, "--output-dir", str(run), "--resume", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {run}/{expected_checkpoint}" in resumed.stdout
    assert _max_diff(load_file(run / "model.safetensors"), uninterrupted) == 0.0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 20
    # The steps between the checkpoint and the kill are logged once, as uninterrupted, and
    # train_loss covers all 20 steps, not only those after the resume.
    full = workdir / "runs" / "full"
    got_rows, want_rows = _losses(run), _losses(full)
    assert [s for s, _ in got_rows] == [s for s, _ in want_rows]
    assert [x for _, x in got_rows] == pytest.approx([x for _, x in want_rows], abs=1e-6)
    got, want = (json.loads((r / "metrics.json").read_text()) for r in (run, full))
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)


@pytest.mark.signals
@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)],
)
def test_signal_saves_a_checkpoint_exits_and_resumes_exactly(
    workdir: Path, uninterrupted: dict, sig: signal.Signals, code: int
) -> None:
    run = workdir / "runs" / f"sig-{sig.name}"
    proc = _start(workdir, str(run.relative_to(workdir)))
    _wait_for(_logged_step(run, 7), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code
    stopped = int(err.split("stopped at step ")[1].split(";")[0])
    assert 7 <= stopped < 20
    assert checkpoint_problem(run / f"checkpoint-{stopped}") is None

    resumed = run_cli("pretrain", TINY, *ARGS, "--output-dir", str(run), "--resume", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {run}/checkpoint-{stopped}" in resumed.stdout
    assert _max_diff(load_file(run / "model.safetensors"), uninterrupted) == 0.0


@pytest.mark.signals
def test_two_process_run_stops_together_on_sigterm(workdir: Path) -> None:
    run = workdir / "runs" / "ddp"
    proc = _start(workdir, str(run.relative_to(workdir)), "--devices", "2")
    _wait_for(_logged_step(run, 6), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143
    assert err.count("stopped at step") == 1  # rank 0 reports; both ranks stopped
    stopped = int(err.split("stopped at step ")[1].split(";")[0])
    assert checkpoint_problem(run / f"checkpoint-{stopped}") is None
    # Both ranks wrote their RNG state into the same, single checkpoint.
    assert {p.name for p in (run / f"checkpoint-{stopped}").glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }


def test_corrupt_last_checkpoint_is_set_aside_and_the_previous_one_used(workdir: Path) -> None:
    run = workdir / "runs" / "corrupt"
    first = run_cli(
        "pretrain", TINY, *ARGS, "--max-steps", "10", "--output-dir", str(run), cwd=workdir
    )
    assert first.returncode == 0, first.stderr[-2000:]
    weights = run / "checkpoint-10" / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:  # a disk that filled up mid-write
        f.truncate(size // 2)
    assert "cut short" in (checkpoint_problem(run / "checkpoint-10") or "")

    resumed = run_cli(
        "pretrain",
        TINY,
        *ARGS,
        "--max-steps",
        "12",
        "--output-dir",
        str(run),
        "--resume",
        cwd=workdir,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"warning: {run}/checkpoint-10 cannot be resumed (model.safetensors: cut short" in (
        resumed.stdout
    )
    assert f"resuming from {run}/checkpoint-5" in resumed.stdout
    assert (run / "corrupt-checkpoint-10" / "model.safetensors").stat().st_size == size // 2
    assert [p.name for p in RunDir(run).checkpoints()][-1] == "checkpoint-12"


def test_checkpoint_checks_name_what_is_wrong(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    assert checkpoint_problem(ckpt) == "trainer_state.json is missing"
    (ckpt / "trainer_state.json").write_text('{"global_step": 3')
    assert checkpoint_problem(ckpt) == "trainer_state.json is cut short or corrupt"
    (ckpt / "trainer_state.json").write_text('{"global_step": 2}')
    assert checkpoint_problem(ckpt) == "trainer_state.json says step 2, folder says 3"
    (ckpt / "trainer_state.json").write_text('{"global_step": 3}')
    assert checkpoint_problem(ckpt) == "no model weights"
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, ckpt / "model.safetensors")
    assert checkpoint_problem(ckpt) == "optimizer.pt is missing"
    torch.save({"state": {}}, ckpt / "optimizer.pt")
    torch.save({"last_epoch": 3}, ckpt / "scheduler.pt")
    assert checkpoint_problem(ckpt) is None
    data = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(data[: len(data) - 40])
    assert checkpoint_problem(ckpt) == "optimizer.pt: cut short or corrupt"
    os.remove(ckpt / "optimizer.pt")


@pytest.mark.slow
def test_lora_finetune_killed_and_resumed_equals_uninterrupted(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """LoRA on a tiny Llama with chatterbot chats: kill -9 between checkpoints, resume, and the
    adapter equals the uninterrupted run's."""
    args = [
        "finetune",
        "--set",
        f"model.init={tiny_llama_dir}",
        "--max-steps",
        "12",
        "--set",
        "train.save_every=4",
        "--set",
        "train.log_every=1",
        "--set",
        "train.eval_every=null",
        "--set",
        "train.batch_size=4",
        "--set",
        "data.max_eval_examples=4",
        "--set",
        "train.save_total_limit=null",
    ]
    full = run_cli(*args, "--output-dir", "runs/full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]

    run = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args, "--output-dir", str(run)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(_logged_step(run, 6), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(*args, "--output-dir", str(run), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {run}/checkpoint-4" in resumed.stdout
    a = load_file(tmp_path / "runs/full/adapter_model.safetensors")
    b = load_file(run / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert _max_diff(a, b) == 0.0
