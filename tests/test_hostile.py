"""Issue 13's rules, each where it lives: nothing llmkit did not make is lost, divergence
stops training before anything is saved, damaged caches are rebuilt, long documents work,
and interrupts at any phase leave a resumable run or nothing.

The survey of one-line errors is tests/test_bad_input.py; the property-based test of the CLI
as a whole is tests/test_cli_properties.py.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli, wait_until_caught

from llmkit.errors import UsageError
from llmkit.io.runs import RunDir
from llmkit.io.write import MARKER, check_output, replace_folder

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    return tmp_path


def test_a_diverging_run_stops_at_once_and_saves_nothing_from_that_step(work: Path) -> None:
    """lr 1e30 is finite (the schema accepts it) but the weights overflow within two steps."""
    out = run_cli(
        "pretrain", TINY, "--max-steps", "20", "--set", "train.lr=1.0e+30",
        "--set", "train.save_every=100", "--set", "train.eval_every=null",
        "--set", "train.warmup=0", cwd=work,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step "), last
    assert "no checkpoint exists" in last and "lower train.lr" in last
    assert "Traceback" not in out.stderr
    run = work / "runs" / "tiny-cpu"
    assert not (run / "model.safetensors").exists() and not (run / "config.json").exists()
    assert not (run / "metrics.json").exists() and not (work / "runs" / "LATEST").exists()
    for line in (run / "metrics.jsonl").read_text().splitlines():  # strict JSON throughout
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def _limit_file_size() -> None:
    # 4 MB: enough for the prep cache and recipe, not for the tiny model's 13 MB weights.
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


def test_a_full_disk_at_the_final_save_leaves_no_half_model(work: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmkit", "pretrain", TINY, "--max-steps", "2",
         "--set", "train.save_every=null", "--set", "train.eval_every=null"],
        cwd=work, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=600,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot save the final model to runs/tiny-cpu:"), last
    assert "(is the disk full?)" in last and "Traceback" not in out.stderr
    run = work / "runs" / "tiny-cpu"
    assert not (run / "config.json").exists()  # not a model folder: nothing loads half of one
    assert not (run / "model.safetensors").exists() and not (run / ".staging" / "final").exists()


def test_overwrite_replaces_llmkit_runs_only(work: Path) -> None:
    args = ["pretrain", TINY, "--max-steps", "1", "--set", "train.eval_every=null"]
    first = run_cli(*args, cwd=work)
    assert first.returncode == 0, first.stderr[-2000:]
    run = work / "runs" / "tiny-cpu"
    assert json.loads((run / MARKER).read_text()) == {"kind": "run"}
    again = run_cli(*args, "--overwrite", cwd=work)
    assert again.returncode == 0, again.stderr[-2000:]
    (run / MARKER).unlink()  # as if someone else made the folder
    refused = run_cli(*args, "--overwrite", cwd=work)
    assert refused.returncode == 2
    assert "is not made by llmkit (no .llmkit file)" in refused.stderr
    assert (run / "model.safetensors").exists()


def test_a_run_that_stopped_before_training_does_not_block_its_rerun(work: Path) -> None:
    bad = run_cli("pretrain", TINY, "--set", "data.sources=[nope.txt]", cwd=work)
    assert bad.returncode == 2
    run = RunDir(work / "runs" / "tiny-cpu")
    assert not run.path.exists()  # the folder is made only once the inputs have loaded
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / MARKER).write_text('{"kind": "run"}')
    (run.path / "recipe.yaml").write_text("name: tiny-cpu\n")  # what an older start left
    run.check(resume=False, overwrite=False)  # no "already holds a run"
    with pytest.raises(UsageError, match="never reached a checkpoint"):
        run.check(resume=True, overwrite=False)


def test_resume_with_another_model_shape_names_the_recipe_it_needs(work: Path) -> None:
    args = ["pretrain", TINY, "--set", "train.save_every=1", "--set", "train.eval_every=null"]
    first = run_cli(*args, "--max-steps", "1", cwd=work)
    assert first.returncode == 0, first.stderr[-2000:]
    out = run_cli(*args, "--max-steps", "2", "--resume", "--set", "model.hidden_size=32", cwd=work)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "checkpoint-1 does not fit this recipe's model" in last, last
    assert "runs/tiny-cpu/recipe.yaml" in last and "Traceback" not in out.stderr
    kept = (work / "runs" / "tiny-cpu" / "recipe.yaml").read_text()
    assert "hidden_size: 64" in kept  # the recipe it was trained with, not the one refused


def test_a_damaged_prep_cache_entry_is_rebuilt(work: Path, tmp_path: Path) -> None:
    env = {"LLMKIT_PREP_CACHE": str(tmp_path / "cache")}
    first = run_cli("prep", TINY, cwd=work, env=env)
    assert first.returncode == 0, first.stderr
    blocks = next((tmp_path / "cache").glob("*/train_blocks.npy"))
    blocks.write_bytes(blocks.read_bytes()[:200])  # cut short
    again = run_cli("prep", TINY, cwd=work, env=env)
    assert again.returncode == 0, again.stderr
    assert "is damaged" in again.stdout and "preparing it again" in again.stdout
    assert "cache hit" not in again.stdout
    third = run_cli("prep", TINY, cwd=work, env=env)
    assert "cache hit" in third.stdout  # the rebuilt entry is whole


def test_a_csv_cell_over_128_kb_is_one_long_document(work: Path) -> None:
    long_text = " ".join(f"word{i}" for i in range(40_000))  # ~350 KB in one cell
    (work / "long.csv").write_text(f'id,text\n1,"{long_text}"\n2,"a short one"\n')
    out = run_cli(
        "prep", TINY, "--set", "data.sources=[long.csv]", "--set", "data.validation=0.1", cwd=work
    )
    assert out.returncode == 0, out.stderr
    assert "2 documents" in out.stdout


@pytest.mark.signals
def test_ctrl_c_during_prep_exits_promptly_and_leaves_nothing_in_the_way(
    work: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "LLMKIT_PREP_CACHE": str(tmp_path / "fresh-cache")}
    # A tokenizer trained on the corpus is cached before the corpus is tokenized: the sign
    # that prep is under way (the run folder is made only after prep). 5,000 steps: the run
    # can never have ended when the signal lands, however busy the machine (with 1 step, a
    # prep that finished first once gave exit 0).
    args = ["pretrain", "--max-steps", "5000", "--set", "tokenizer.source=train"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    trained = tmp_path / "fresh-cache" / "tokenizers"
    deadline = time.monotonic() + 600
    while not any(trained.glob("*/tokenizer_config.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no tokenizer trained"
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)  # tokenizing 5 MB of Shakespeare takes ~4 s on 2 cores
    _, err = proc.communicate(timeout=300)
    waited = time.monotonic() - sent
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert waited < 60, f"exited {waited:.1f} s after Ctrl-C"  # a step or a shard, not a run
    assert not (work / "runs" / "gpt-shakespeare").exists()  # nothing in the way


@pytest.mark.signals
def test_sigterm_outside_training_exits_143_with_a_message(work: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "generate", "-"],
        cwd=work, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # The one handler is installed first thing in llmkit's main: from then on, any moment
    # (here: while the model loads or stdin is read) ends with 143 and a message.
    wait_until_caught(proc, signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated", err


# --- the writer ----------------------------------------------------------------------------------


def test_replace_folder_keeps_the_old_folder_when_the_new_one_fails(tmp_path: Path) -> None:
    target = tmp_path / "export"
    replace_folder(target, lambda f: (f / "model.bin").write_text("v1"), kind="export")

    def crash(folder: Path) -> None:
        (folder / "model.bin").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        replace_folder(target, crash, kind="export")
    assert (target / "model.bin").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no half folder anywhere
    replace_folder(target, lambda f: (f / "model.bin").write_text("v2"), kind="export")
    assert (target / "model.bin").read_text() == "v2"
    with pytest.raises(UsageError, match="an llmkit export folder"):
        replace_folder(target, lambda f: None, kind="run")


def test_check_output_refuses_inputs_under_any_name(tmp_path: Path) -> None:
    data = tmp_path / "q.txt"
    data.write_text("x")
    os.link(data, tmp_path / "hard.txt")
    (tmp_path / "soft.txt").symlink_to(data)
    for alias in ("q.txt", "hard.txt", "soft.txt", "sub/../q.txt"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(UsageError, match="is also an input"):
            check_output(tmp_path / alias, [data])
    check_output(tmp_path / "new" / "out.jsonl", [data])  # a new file in a new folder is fine
