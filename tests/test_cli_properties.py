"""The CLI as a whole, under hostile invocations that hypothesis builds (issue 13).

One invariant, whatever the command, values, files and output paths:
  - exit 0 with valid outputs (every JSON/JSONL file written parses as strict JSON), or
    exit 2 with exactly one `error:` line, the last one (or "error: N problems:" followed
    only by its "  - " items);
  - never a traceback;
  - every file that existed before is byte-identical afterwards, unless it lies inside a
    folder llmkit made (one with its `.llmkit` marker) or is the file output of a command
    given `--overwrite` (a file has no marker: replacing one takes the user's word).

Invocations run in-process through `llmkit.cli.main` (the console script's code path,
without ~4 s of imports each), each in a fresh folder holding the user's files: a corpus,
prompts, predictions, a folder of someone else's notes, an earlier llmkit run, and hostile
files (binary, truncated JSON, wrong JSON types, a 1 MB line, a file that is a folder).
The fast tier runs 40 examples; the slow tier 600.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")

USER_FILES: dict[str, str | bytes] = {
    "corpus/a.txt": "".join(
        f"Line {i}: to be, or not to be, that is question {i}.\n" for i in range(80)
    ),
    "corpus/b.jsonl": "".join(
        f'{{"text": "Now is the winter {i} of our discontent."}}\n' for i in range(40)
    ),
    "q.txt": "Hello there\nThe king said\n",
    "q.jsonl": '{"prompt": "Hi", "id": 1}\n{"prompt": "Yes", "id": 2}\n',
    "p.txt": "the cat sat\na dog ran\n",
    "r.txt": "the cat sat down\na dog ran off\n",
    "notes/keep.txt": "someone else's notes\n",
    "binary.bin": bytes(range(256)) * 8,
    "cut.jsonl": '{"text": "whole"}\n{"text": "cut sh',
    "types.jsonl": '{"text": ["a list"]}\n{"text": 7}\n{"text": null}\n{"prompt": {"x": 1}}\n',
    "long.txt": "x" * (1 << 20) + "\n",
    "latin1.txt": "caf\xe9\n".encode("latin-1"),
    "empty.txt": "",
    "old/.llmkit": '{"kind": "run"}',
    "old/config.json": "{}",
    "old/model.safetensors": b"weights of an earlier run",
    # Files that are not what their suffix says, or not UTF-8 (issue 23, rule 5).
    "latin1.jsonl": '{"text": "ok"}\n{"text": "caf\xe9"}\n'.encode("latin-1"),
    "latin1.csv": "text\nna\xefve\n".encode("latin-1"),
    "fake.parquet": "text\nhello\n",
    "csv.jsonl": "text,label\nhello,1\n",
    "json.csv": '{"text": "hello"}\n',
}
INPUTS = [*sorted(USER_FILES), "corpus", "notes", "old", "missing.txt", "/dev/null", "."]
OUTPUTS = [
    "out.jsonl", "new/deep/out.jsonl", "q.txt", "q.jsonl", "notes", "notes/keep.txt", "old",
    "p.txt", "corpus", ".", "..", "../escape.jsonl", "out.npy", "runs", "runs/x",
]  # fmt: skip
HOSTILE_VALUES = [
    "inf", "-inf", ".nan", "nan", "1e308", "-1", "0", "", "null", "[]", "{}", "[1, 2",
    "99999999999999999999", "../x", "x/y", "true", "3", "0.5", "abc", "'quoted'",
]  # fmt: skip
# Recipe fields with values that are valid for them: half the overrides draw from these, so
# invocations that should succeed (and write outputs) are exercised too, not only refusals.
GOOD_VALUES = {
    "name": ["run2", "x"], "train.lr": ["1.0e-3", "0.01"], "train.max_steps": ["1", "2"],
    "train.epochs": ["1", "0.5"], "train.batch_size": ["2", "4"], "train.seed": ["0", "7"],
    "train.warmup": ["0", "0.5"], "train.output_dir": ["runs/a", "fresh"],
    "data.block_size": ["16", "32"], "data.validation": ["0.2", "0.5"],
    "data.min_chars": ["1", "5"], "data.sources": ["[corpus]", "[corpus/a.txt]"],
    "model.hidden_size": ["32", "64"], "model.num_heads": ["2", "1"],
    "model.pad_vocab_to_multiple_of": ["8", "64"], "tokenizer.source": ["embedded:gpt2"],
    "train.devices": ["1"], "nonsense.key": ["1"],
}  # fmt: skip

values = st.one_of(st.sampled_from(HOSTILE_VALUES), st.text(max_size=8))
# What `generate -` reads: UTF-8, or UTF-8 with a byte that never is at a random offset.
stdin_bytes = st.one_of(
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(
        st.text(max_size=20), st.sampled_from([b"\xff", b"\xc3", b"\x80"]), st.text(max_size=5)
    ).map(
        lambda p: (
            p[0].encode("utf-8", "surrogatepass") + p[1] + p[2].encode("utf-8", "surrogatepass")
        )
    ),
)
paths_in = st.sampled_from(INPUTS)
paths_out = st.sampled_from(OUTPUTS)


@st.composite
def override(draw: st.DrawFn) -> list[str]:
    field = draw(st.sampled_from(sorted(GOOD_VALUES)))
    value = draw(st.one_of(values, st.sampled_from(GOOD_VALUES[field])))
    return ["--set", f"{field}={value}"]


overrides = st.lists(override(), max_size=2).map(lambda pairs: [a for p in pairs for a in p])


@st.composite
def invocations(draw: st.DrawFn) -> list[str]:
    """One command line, weighted toward the commands that answer in well under a second."""
    kind = draw(st.sampled_from(["prep", "prep", "generate", "generate", "eval", "eval",
                                 "tokenizer", "export", "pretrain", "embed"]))  # fmt: skip
    if kind == "prep":
        source = draw(st.one_of(paths_in, st.just("corpus")))
        return ["prep", TINY, "--set", f"data.sources=[{source}]", *draw(overrides)]
    if kind == "generate":
        argv = ["generate", "--model", "{tiny}", "--max-new-tokens", "4"]
        if draw(st.booleans()):
            argv += ["--input", draw(st.one_of(paths_in, st.sampled_from(["q.txt", "q.jsonl"])))]
            if draw(st.booleans()):
                argv += ["--output", draw(paths_out)]
                argv += ["--overwrite"] if draw(st.booleans()) else []
        else:
            argv.append(draw(st.one_of(st.text(max_size=12), st.just("-"))))
        flag = draw(st.sampled_from(["--temperature", "--top-p", "--top-k", "--seed",
                                     "--num-beams", "-n", "--batch-size", "--stop"]))  # fmt: skip
        # Sizes past the bounds too (issue 23): 100,000 sequences, a 300-character stop string.
        big = ["100000", "y" * 300, "\\n"]
        return [*argv, flag, draw(st.one_of(values, st.sampled_from(["1", "2", "0.5", *big])))]
    if kind == "eval":
        preds = draw(st.one_of(paths_in, st.just("p.txt")))
        argv = ["eval", "--preds", preds, "--refs", draw(st.one_of(paths_in, st.just("r.txt")))]
        if draw(st.booleans()):
            argv += ["--output-dir", draw(paths_out)]
        else:
            argv += ["--name", draw(st.one_of(values, st.just("run1")))]
        if draw(st.booleans()):
            argv += ["--metrics", draw(st.sampled_from(["bleu", "bleu,rouge", "blue", ""]))]
        return argv + (["--overwrite"] if draw(st.booleans()) else [])
    if kind == "tokenizer":
        return ["prep", "tokenizer", draw(st.one_of(paths_in, st.just("corpus"))), "--output",
                draw(st.one_of(paths_out, st.just("tok"))),
                "--vocab-size", draw(st.sampled_from(["300", "0", "-5", "abc"]))]  # fmt: skip
    if kind == "export":
        argv = ["export", draw(paths_in), "--output", draw(paths_out)]
        return argv + (["--overwrite"] if draw(st.booleans()) else [])
    if kind == "embed":
        argv = ["embed", draw(paths_in), "--output", draw(paths_out),
                "--batch-size", draw(st.sampled_from(["4", "0", "-1"]))]  # fmt: skip
        return argv + (["--overwrite"] if draw(st.booleans()) else [])
    argv = ["pretrain", TINY, "--max-steps", "1", "--set", "train.eval_every=null"]
    if draw(st.booleans()):
        argv += ["--output-dir", draw(paths_out)]
    return argv + draw(overrides) + (["--overwrite"] if draw(st.booleans()) else [])


def _snapshot(root: Path) -> dict[str, str]:
    found = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            found[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def _in_llmkit_folder(root: Path, rel: str) -> bool:
    return any((root / parent / ".llmkit").exists() for parent in Path(rel).parents)


def _run(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    from llmkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, sys.stdin
    sys.argv, sys.stdin = ["llmkit", *argv], io.TextIOWrapper(io.BytesIO(stdin))
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, sys.stdin = saved
    return int(code or 0) if not isinstance(code, str) else 1, out.getvalue(), err.getvalue()


def check_invariant(argv: list[str], tiny: Path, stdin: bytes = b"") -> None:
    argv = [a.replace("{tiny}", str(tiny)) for a in argv]
    home = Path(tempfile.mkdtemp(prefix="llmkit-prop-"))
    root = home / "work"
    old_cwd = Path.cwd()
    try:
        for name, content in USER_FILES.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        shutil.copytree(REPO / "tests" / "data", root / "tests" / "data")
        before = _snapshot(root)
        os.chdir(root)
        code, _, err = _run(argv, stdin)
        os.chdir(old_cwd)

        command = "prep tokenizer" if argv[:2] == ["prep", "tokenizer"] else argv[0]
        event(f"{command}: exit {code}")
        assert "Traceback" not in err, f"{argv}\n{err}"
        assert code in (0, 2), f"{argv}: exit {code}\n{err[-3000:]}"
        if code == 2:  # one error line, last, or "error: N problems:" and its "  - " items
            lines = err.strip().splitlines()
            starts = [i for i, line in enumerate(lines) if line.startswith("error")]
            assert len(starts) == 1 and lines[starts[0]].startswith("error: "), f"{argv}\n{err}"
            assert all(line.startswith("  - ") for line in lines[starts[0] + 1 :]), f"{argv}\n{err}"
        after = _snapshot(root)
        consented = _overwritten_file(argv, root)
        for rel, digest in before.items():
            if after.get(rel) != digest and (root / rel).resolve() != consented:
                assert _in_llmkit_folder(root, rel), f"{argv} changed or deleted {rel}"
        written = [root / rel for rel in after if rel not in before]
        for path in written:
            if path.suffix == ".json":
                json.loads(path.read_text(), parse_constant=_no_constant)
            elif path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    json.loads(line, parse_constant=_no_constant)
    finally:
        os.chdir(old_cwd)
        shutil.rmtree(home, ignore_errors=True)


def _overwritten_file(argv: list[str], root: Path) -> Path | None:
    """The file a generate/embed command was told to replace (`--output F --overwrite`)."""
    if argv[0] not in ("generate", "embed") or "--overwrite" not in argv:
        return None
    flag = "--output" if "--output" in argv else "-o"
    return (root / argv[argv.index(flag) + 1]).resolve() if flag in argv else None


def _no_constant(name: str) -> None:
    raise AssertionError(f"non-JSON constant {name} in an output")


COMMON = {
    "deadline": None,
    "derandomize": True,  # CI sees the same examples every run; a failure reproduces
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@settings(max_examples=40, **COMMON)
@given(argv=invocations(), stdin=stdin_bytes)
def test_hostile_invocations_keep_the_invariant(
    argv: list[str], stdin: bytes, tiny_gpt2_dir: Path
) -> None:
    check_invariant(argv, tiny_gpt2_dir, stdin)


@pytest.mark.slow
@settings(max_examples=600, **COMMON)
@given(argv=invocations(), stdin=stdin_bytes)
def test_600_hostile_invocations_keep_the_invariant(
    argv: list[str], stdin: bytes, tiny_gpt2_dir: Path
) -> None:
    check_invariant(argv, tiny_gpt2_dir, stdin)
