"""One writer per output, and Ctrl-C / SIGTERM at any moment of a command.

Real CLI subprocesses, real signals, two real concurrent writers. Every wait is on something
the command itself writes (an output line, the lock file's PID, a partial file), with
generous deadlines: `make test-load` runs these beside two CPU-burning processes.
"""

from __future__ import annotations

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

from llmkit.io.runs import RunDir, writer_lock_path

pytestmark = pytest.mark.signals

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")
# Far more steps than any test waits for: a signal can never arrive after the end.
LONG = ["--max-steps", "5000", "--set", "train.save_every=5", "--set", "train.log_every=1"]
LONG += ["--set", "train.eval_every=null"]
DEADLINE = 300  # seconds; a busy 2-core machine takes ~10x a quiet one's time
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # output lines arrive as they are printed


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    return tmp_path


def _start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args],
        cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"ended (exit {proc.returncode}) before {what}: {err[-2000:]}")
        assert time.monotonic() < deadline, f"{what} not seen in {DEADLINE} s"
        time.sleep(0.02)


def _wait_for_line(proc: subprocess.Popen[str], start: str) -> list[str]:
    """stdout lines up to and including the first that begins with `start`."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:  # the process ended
            proc.wait()
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"exit {proc.returncode} before a line {start!r}: {err[-2000:]}")
        seen.append(line)
        if line.startswith(start):
            return seen
    pytest.fail(f"no line {start!r} in {DEADLINE} s")


def _holds_lock(output: Path, proc: subprocess.Popen[str]) -> Callable[[], bool]:
    lock = writer_lock_path(output)
    return lambda: lock.exists() and lock.read_text().strip() == str(proc.pid)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0]


# --- one writer per output -----------------------------------------------------------------------


def test_a_second_pretrain_into_the_same_folder_exits_2_naming_the_first(workdir: Path) -> None:
    run = workdir / "runs" / "shared"
    first = _start(workdir, "pretrain", TINY, *LONG, "--output-dir", str(run))
    try:
        _wait_for(_holds_lock(run, first), first, "the first run's lock")
        second = run_cli("pretrain", TINY, *LONG, "--output-dir", str(run), cwd=workdir)
        assert second.returncode == 2
        line = _one_error_line(second.stderr)
        assert f"is being written by llmkit process {first.pid}" in line
        # Even with --overwrite or --resume: the lock comes before any other check.
        for flag in ("--overwrite", "--resume"):
            again = run_cli("pretrain", TINY, *LONG, "--output-dir", str(run), flag, cwd=workdir)
            assert again.returncode == 2 and f"process {first.pid}" in again.stderr, flag

        # kill -9 frees the lock (the kernel's): the run resumes from its checkpoint.
        _wait_for(lambda: bool(RunDir(run).checkpoints()), first, "a checkpoint")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=DEADLINE)
    finally:
        if first.poll() is None:
            first.kill()
    steps = int(RunDir(run).checkpoints()[-1].name.split("-")[1])
    resumed = run_cli(
        "pretrain", TINY, *LONG, "--max-steps", str(steps + 2), "--output-dir", str(run),
        "--resume", cwd=workdir,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "model.safetensors").exists()
    metrics_steps = (run / "metrics.jsonl").read_text().count('"step": 1,')
    assert metrics_steps == 1  # one writer: no interleaved second log


def test_a_second_generate_into_the_same_output_exits_2(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    (tmp_path / "q.txt").write_text("".join(f"Prompt number {i} says\n" for i in range(2000)))
    args = ["generate", "--model", str(tiny_gpt2_dir), "--input", "q.txt", "--batch-size", "2",
            "--max-new-tokens", "8", "--output", "out.jsonl"]  # fmt: skip
    first = _start(tmp_path, *args)
    try:
        _wait_for(lambda: (tmp_path / "out.jsonl.partial").exists(), first, "the partial file")
        second = run_cli(*args, "--resume", cwd=tmp_path)
        assert second.returncode == 2
        assert f"llmkit process {first.pid}" in _one_error_line(second.stderr)
    finally:
        first.kill()
        first.wait()
    assert not (tmp_path / "out.jsonl").exists()


def test_the_prep_cache_entry_has_one_writer_and_the_second_prep_waits(workdir: Path) -> None:
    """Two runs on the same data share one cache entry: the second waits for the first's
    entry (and says whose) rather than failing, then loads it."""
    cache = workdir / "cache"
    env = {**ENV, "LLMKIT_PREP_CACHE": str(cache)}
    args = ["prep", TINY, "--set", "data.sources=[embedded:shakespeare]"]
    first = subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = None
    try:
        deadline = time.monotonic() + DEADLINE
        while lock is None and time.monotonic() < deadline and first.poll() is None:
            found = [p for p in cache.glob(".*.partial/.lock") if p.read_text().strip()]
            lock = found[0] if found else None
            time.sleep(0.02)
        assert lock is not None, "the first prep never locked its entry"
        second = subprocess.run(
            [sys.executable, "-m", "llmkit", *args], cwd=workdir, env=env,
            capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip
        assert first.wait(timeout=DEADLINE) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 0, second.stderr[-2000:]
    out = second.stdout
    assert "prep: cache hit" in out or "waiting for llmkit process" in out, out
    if "waiting for" in out:  # it came while the first was writing: it named the first
        assert f"prep: waiting for llmkit process {first.pid}, which is preparing" in out


# --- signals at every phase ----------------------------------------------------------------------

# (the line that marks the moment, what the run folder holds after the signal)
PHASES = {
    "after prep": "prep: c",  # "prep: cached in" / "prep: cache hit"; the model build next
    "after model build": "model: ",
    "before training": "global batch: ",  # evaluation before training next
    "training": "step ",
}


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_any_phase_ends_the_run_promptly(
    workdir: Path, phase: str, sig: signal.Signals, code: int
) -> None:
    run = workdir / "runs" / "sig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "pretrain", TINY, *LONG, "--output-dir", str(run)],
        cwd=workdir, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        if phase == "training":
            # Step 2, not the file: the evaluation before training logs step 0 into it, and a
            # signal there is outside training ("interrupted", as it should be).
            logged = run / "metrics.jsonl"
            at_step_2 = lambda: logged.exists() and '"step": 2,' in logged.read_text()  # noqa: E731
            _wait_for(at_step_2, proc, "step 2")
        else:
            _wait_for_line(proc, PHASES[phase])
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    waited = time.monotonic() - sent
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert not (run / "model.safetensors").exists()  # it did not train on to the end
    last = err.strip().splitlines()[-1]
    if phase == "training":
        assert last == "continue with the same command and --resume"
        assert RunDir(run).checkpoints()  # the step in flight finished and was saved
    else:
        assert last == ("interrupted" if sig == signal.SIGINT else "terminated")
    # "Promptly": a step of the tiny model takes ~0.1 s; a whole run 5000 steps.
    assert waited < 60, f"exited {waited:.1f} s after the signal"


def test_a_lost_keyboard_interrupt_still_stops_at_the_next_phase(workdir: Path) -> None:
    """Python drops an exception raised while a finalizer runs (`__del__`), printing only
    "Exception ignored": a Ctrl-C landing there was lost and the run trained to the end with
    exit 0. The signal stays recorded and the next phase boundary stops the run."""
    script = (
        "import gc, os, signal, sys\n"
        "from llmkit.io import interrupt\n"
        "interrupt.install()\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        for _ in range(10**5): pass\n"  # the handler runs here, inside __del__
        "Finalized(); gc.collect()\n"
        "print('lost, still running', flush=True)\n"
        "try:\n"
        "    interrupt.check()\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=DEADLINE
    )
    assert "lost, still running" in out.stdout  # Python really swallowed the exception
    assert "Exception ignored" in out.stderr
    assert out.returncode == 130
