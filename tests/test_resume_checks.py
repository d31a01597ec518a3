"""Resumes are verified, never trusted: damaged partial prep entries and `.partial` files.

A prep partial entry with any byte flipped or any file cut short resumes to the same bytes as
a clean run (the damage is found by its checksums, set aside with one note, and the entry
built again); a resumable generate job refuses, in one line, a resume whose options differ
and a `.partial` file it did not write.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.commands.generate import run_generate
from llmkit.config.inference import GenerateRequest
from llmkit.config.loader import load_recipe
from llmkit.config.pretrain import PretrainRecipe
from llmkit.data import pipeline, shards
from llmkit.data.prep import load_tokenizer_for, prepare
from llmkit.errors import UsageError
from llmkit.inference import resumable

TINY = REPO / "recipes/pretrain/tiny-cpu.yaml"
SHARD_CHARS = 2_000  # tests/data (44 KB) in ~20 shards
OVERRIDES = [f"data.sources=[{REPO / 'tests/data'}]", "data.dedupe=true"]


class Killed(Exception):
    """Stands for a kill -9 after some whole shards (test_prep_stream kills a real process)."""


def _recipe() -> PretrainRecipe:
    return load_recipe(PretrainRecipe, TINY, OVERRIDES)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], Path]:
    """(the clean entry's files, a cache root holding a partial entry of 8 whole shards)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("damaged")
    try:
        mp.setattr(pipeline, "SHARD_CHARS", SHARD_CHARS)
        recipe, tok = _recipe(), None
        tok = load_tokenizer_for(recipe)
        mp.setenv("LLMKIT_PREP_CACHE", str(root / "clean"))
        clean = _files(prepare(recipe, tok, verbose=False).cache_dir or Path())

        commit = shards.Store.commit
        calls = [0]

        def commit_then_die(self: shards.Store, *args: object) -> None:
            commit(self, *args)  # type: ignore[arg-type]
            calls[0] += 1
            if calls[0] == 8:
                raise Killed

        mp.setattr(shards.Store, "commit", commit_then_die)
        mp.setenv("LLMKIT_PREP_CACHE", str(root / "partial"))
        with pytest.raises(Killed):
            prepare(recipe, tok, verbose=False)
    finally:
        mp.undo()
    (work,) = (root / "partial").glob(".*.partial")
    assert json.loads((work / "manifest.json").read_text())["shards"] == 8
    assert list((work / "dedupe").glob("*.npy"))  # dedupe hashes are part of what is checked
    return clean, root / "partial"


def _damageable(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_damaged_partial_entry_resumes_to_the_clean_bytes(
    built: tuple[dict[str, bytes], Path],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    data: st.DataObject,
) -> None:
    clean, template = built
    root = tmp_path_factory.mktemp("case")
    shutil.copytree(template, root, dirs_exist_ok=True)
    (work,) = root.glob(".*.partial")
    name = data.draw(st.sampled_from([n for n in _damageable(work) if n != ".lock"]), "file")
    target = work / name
    raw = bytearray(target.read_bytes())
    how = data.draw(st.sampled_from(["flip", "truncate", "delete"]), "how")
    # What the manifest vouches for: every byte of the dedupe files and of the columns' rows
    # (a column's first 128 bytes are its .npy header, written when the entry is finished);
    # the manifest itself, when deleted, just means "start over".
    column = name.endswith(".npy") and not name.startswith("dedupe")
    vouched = name != "manifest.json"
    if how == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1), "offset")
        vouched = vouched and not (column and at < shards.HEADER)
        raw[at] ^= data.draw(st.integers(1, 255), "mask")
        target.write_bytes(bytes(raw))
    elif how == "truncate":
        target.write_bytes(bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]))
    else:
        target.unlink()

    monkeypatch.setattr(pipeline, "SHARD_CHARS", SHARD_CHARS)
    monkeypatch.setenv("LLMKIT_PREP_CACHE", str(root))
    capsys.readouterr()
    recipe = _recipe()
    result = prepare(recipe, load_tokenizer_for(recipe), verbose=False)
    notes = [line for line in capsys.readouterr().out.splitlines() if "damaged" in line]
    assert _files(result.cache_dir or Path()) == clean
    assert len(notes) <= 1  # one note when the damage was in what the manifest vouches for
    if vouched:
        assert notes, f"{how} in {name} went unnoticed"
    if notes:
        assert notes[0].startswith(f"warning: prep partial entry {work} is damaged (")
        assert list(root.glob(".*.partial.damaged"))  # set aside, not deleted


def test_a_manifest_that_is_not_json_is_set_aside_in_one_line(
    built: tuple[dict[str, bytes], Path], tmp_path: Path
) -> None:
    _, template = built
    shutil.copytree(template, tmp_path / "cache")
    (work,) = (tmp_path / "cache").glob(".*.partial")
    (work / "manifest.json").write_bytes(b'{"version": 2, "shards": \xff')
    script = (
        "import sys\n"
        "from llmkit.data import pipeline\n"
        f"pipeline.SHARD_CHARS = {SHARD_CHARS}\n"
        "from llmkit.cli import main\n"
        "sys.argv = ['llmkit', *sys.argv[1:]]\n"
        "main()\n"
    )
    args = ["prep", str(TINY), *(a for o in OVERRIDES for a in ("--set", o))]
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "LLMKIT_PREP_CACHE": str(tmp_path / "cache")},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    warnings = [line for line in out.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: prep partial entry {work} is damaged (manifest.json is not JSON "
        f"(UnicodeDecodeError)); its files are set aside in {work}.damaged; preparing it again"
    ]
    rerun = run_cli(*args, env={"LLMKIT_PREP_CACHE": str(tmp_path / "cache")})
    assert rerun.returncode == 0 and "prep: cache hit" in rerun.stdout  # fixed for good


# --- resumable generate jobs ----------------------------------------------------------------------


def _job(folder: Path, model: Path, *, resume: bool) -> GenerateRequest:
    return GenerateRequest(
        model=str(model), input=folder / "q.txt", output=folder / "out.jsonl",
        batch_size=2, max_new_tokens=4, do_sample=True, seed=3, resume=resume,
    )  # fmt: skip


@pytest.fixture(scope="module")
def interrupted(
    tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path
) -> tuple[Path, bytes, bytes]:
    """(a folder with q.txt, the .partial of a job stopped after 5 of 20 batches, the bytes of
    the uninterrupted job's output), all made in this process, as the examples resume."""
    folder = tmp_path_factory.mktemp("interrupted")
    (folder / "q.txt").write_text("".join(f"Prompt number {i} says\n" for i in range(40)))
    run_generate(_job(folder, tiny_gpt2_dir, resume=False))
    whole = (folder / "out.jsonl").read_bytes()
    (folder / "out.jsonl").unlink()
    mp = pytest.MonkeyPatch()
    try:  # every line written, then a crash before the output file: the partial remains
        mp.setattr(resumable, "write_jsonl", lambda *a: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            run_generate(_job(folder, tiny_gpt2_dir, resume=False))
    finally:
        mp.undo()
    lines = (folder / "out.jsonl.partial").read_bytes().splitlines(keepends=True)
    assert len(lines) == 41
    partial = b"".join(lines[:11])  # the header and 5 batches of 2: stopped there
    return folder, partial, whole


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_damaged_partial_file_resumes_to_the_same_bytes_or_is_refused_in_one_line(
    interrupted: tuple[Path, bytes, bytes],
    tiny_gpt2_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    template, partial, whole = interrupted
    folder = tmp_path_factory.mktemp("job")
    shutil.copy(template / "q.txt", folder / "q.txt")
    raw = bytearray(partial)
    if data.draw(st.booleans(), "flip"):
        at = data.draw(st.integers(0, len(raw) - 1), "offset")
        raw[at] ^= data.draw(st.integers(1, 255), "mask")
    else:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), "length")]
    (folder / "out.jsonl.partial").write_bytes(bytes(raw))
    try:
        run_generate(_job(folder, tiny_gpt2_dir, resume=True))
    except UsageError as e:
        text = e.render()
        assert "\n" not in text and text.startswith("error: "), text
        assert (folder / "out.jsonl.partial").read_bytes() == bytes(raw)  # left as it was
        if "does not begin with the header llmkit writes" in text:
            assert "delete" not in text  # never advised for a file llmkit cannot vouch for
        return
    assert (folder / "out.jsonl").read_bytes() == whole
    assert not (folder / "out.jsonl.partial").exists()


def test_a_users_own_partial_file_is_not_called_llmkits(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("a prompt\n")
    mine = tmp_path / "out.jsonl.partial"
    mine.write_text("my notes, not llmkit's\n")
    args = ["generate", "--input", "q.txt", "--output", "out.jsonl"]
    for resume in ([], ["--resume"]):
        out = run_cli(*args, *resume, cwd=tmp_path)
        assert out.returncode == 2
        line = out.stderr.strip()
        assert line == (
            f"error: {mine.name} is in the way: llmkit keeps an unfinished job's results under "
            "that name, and this file does not begin with the header llmkit writes, so it is "
            "not one of them; move it or choose another output"
        )
    assert mine.read_text() == "my notes, not llmkit's\n"
