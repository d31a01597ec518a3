"""Bad input survey: every kind of mistake gives exit code 2, one `error:` line that names the
field, file or line, no traceback, and leaves every file that was there untouched.

Cases run in-process through `llmkit.cli.main` (the same code path as the console script, minus
~4 s of imports per case); the few that need a real process limit run as subprocesses.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, run_cli

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")
TINY_BERT = str(REPO / "recipes/pretrain/tiny-bert-cpu.yaml")


@dataclass
class Case:
    argv: list[str]
    expected: str
    files: dict[str, str | bytes] = field(default_factory=dict)


def _jsonl(*lines: str) -> str:
    return "\n".join(lines) + "\n"


CASES: dict[str, Case] = {
    # --- recipes and overrides -----------------------------------------------------------
    "bad YAML": Case(
        ["pretrain", "r.yaml"], "r.yaml:3:1: invalid YAML", {"r.yaml": "train:\n  lr: [1\n"}
    ),
    "unknown key": Case(
        ["pretrain", "r.yaml"],
        "train.learning_rate: unknown key",
        {"r.yaml": "train: {learning_rate: 1}\n"},
    ),
    "wrong type": Case(
        ["pretrain", "r.yaml"],
        "train.batch_size: Input should be a valid integer",
        {"r.yaml": "train: {batch_size: many}\n"},
    ),
    "negative learning rate": Case(
        ["pretrain", "--set", "train.lr=-0.1"], "train.lr: Input should be greater than 0"
    ),
    "invalid choice": Case(
        ["pretrain", "--set", "train.precision=fp8"],
        "train.precision: Input should be 'auto', 'fp32'",
    ),
    "masked LM with a GPT": Case(
        ["pretrain", "--set", "task=masked_lm"], "model.arch: 'gpt2' is not a masked LM"
    ),
    "block above max positions": Case(
        ["pretrain", "--set", "data.block_size=4096"],
        "data.block_size: 4096 exceeds model.max_position_embeddings 128",
    ),
    "heads do not divide width": Case(
        ["pretrain", "--set", "model.num_heads=3"],
        "model.num_heads: 3 does not divide hidden_size 128",
    ),
    "validation fraction out of range": Case(
        ["pretrain", "--set", "data.validation=2.0"],
        "data.validation: a fraction must be between 0 and 1",
    ),
    "malformed override": Case(
        ["pretrain", "--set", "train.lr"], "override 'train.lr': expected PATH=VALUE"
    ),
    "override into a value": Case(
        ["pretrain", "--set", "train.lr.x=1"], "train.lr.x=1': lr is not a section"
    ),
    "recipe not found": Case(["pretrain", "nope.yaml"], "recipe nope.yaml not found"),
    "recipe is a list": Case(
        ["pretrain", "r.yaml"], "a recipe is a mapping of sections", {"r.yaml": "- 1\n"}
    ),
    "recipe not UTF-8": Case(
        ["pretrain", "r.yaml"], "r.yaml: not UTF-8 text", {"r.yaml": b"name: caf\xe9\n"}
    ),
    "early stopping without eval": Case(
        ["pretrain", "--set", "train.early_stopping_patience=2", "--set", "train.eval_every=null"],
        "train.early_stopping_patience: needs eval_every to be set",
    ),
    # --- data ------------------------------------------------------------------------------
    "missing data file": Case(
        ["prep", TINY, "--set", "data.sources=[gone.txt]"], "file gone.txt does not exist"
    ),
    "glob matches nothing": Case(
        ["prep", TINY, "--set", "data.sources=[c/*.txt]"], "no file matches c/*.txt"
    ),
    "empty corpus": Case(
        ["prep", TINY, "--set", "data.sources=[e.txt]"],
        "the corpus is empty after cleaning",
        {"e.txt": "\n   \n\n"},
    ),
    "corpus shorter than a block": Case(
        ["prep", TINY, "--set", "data.sources=[s.txt]"],
        "too short for one training and one validation block of data.block_size=64",
        {"s.txt": "Brevity is the soul of wit.\n"},
    ),
    "non-UTF-8 text": Case(
        ["prep", TINY, "--set", "data.sources=[l.txt]"],
        "l.txt:3: not valid UTF-8 (byte 0xe9",
        {"l.txt": b"one\ntwo\ncaf\xe9\n"},
    ),
    "JSONL with one malformed line": Case(
        ["prep", TINY, "--set", "data.sources=[d.jsonl]"],
        "d.jsonl:3: malformed JSON",
        {"d.jsonl": _jsonl('{"text": "a"}', '{"text": "b"}', '{"text": "c"')},
    ),
    "JSONL missing text column": Case(
        ["prep", TINY, "--set", "data.sources=[d.jsonl]"],
        "d.jsonl:1: no field 'text' (fields: body)",
        {"d.jsonl": _jsonl('{"body": "a"}')},
    ),
    "CSV missing text column": Case(
        ["prep", TINY, "--set", "data.sources=[d.csv]"],
        "d.csv:2: no field 'text' (fields: id, body); set data.text_column",
        {"d.csv": "id,body\n1,a\n"},
    ),
    "JSONL row not an object": Case(
        ["prep", TINY, "--set", "data.sources=[d.jsonl]"],
        "d.jsonl:1: expected a JSON object, got list",
        {"d.jsonl": _jsonl("[1, 2]")},
    ),
    "unknown embedded corpus": Case(
        ["prep", TINY, "--set", "data.sources=[embedded:wikipedia]"],
        "unknown embedded corpus 'embedded:wikipedia'",
    ),
    "missing tokenizer folder": Case(
        ["prep", TINY, "--set", "tokenizer.source=./no-tok"], "model folder ./no-tok does not exist"
    ),
    "masked LM with a tokenizer without [MASK]": Case(
        ["prep", TINY_BERT, "--set", "tokenizer.source=embedded:gpt2"],
        "tokenizer.source: masked LM needs a tokenizer with mask_token",
    ),
    "tokenizer output folder not empty": Case(
        ["prep", "tokenizer", "a.txt", "--output", "tok"],
        "--output tok is not empty",
        {"a.txt": "some text\n", "tok/keep.txt": "precious"},
    ),
    # --- models ----------------------------------------------------------------------------
    "unknown embedded model": Case(
        ["pretrain", TINY, "--set", "model.init=embedded:gpt5"],
        "unknown embedded model 'embedded:gpt5'",
    ),
    "model folder without config": Case(
        ["pretrain", TINY, "--set", "model.init=empty-model"],
        "model folder empty-model has no config.json",
        {"empty-model/README.md": "nothing here"},
    ),
    "model ships its own code": Case(
        ["generate", "--model", "custom", "hi"],
        "custom ships its own Python code",
        {
            "custom/config.json": '{"model_type": "custom", "auto_map": '
            '{"AutoConfig": "configuration_custom.CustomConfig"}}',
            "custom/configuration_custom.py": "open('PWNED', 'w').write('ran')\n",
        },
    ),
    # --- evaluation ------------------------------------------------------------------------
    "unknown metric name": Case(
        ["eval", "--preds", "p.txt", "--refs", "r.txt", "--metrics", "bleu,blue"],
        "--metrics: unknown metric blue (valid: ",
        {"p.txt": "a cat\n", "r.txt": "the cat\n"},
    ),
    "preds and refs of different lengths": Case(
        ["eval", "--preds", "p.txt", "--refs", "r.txt"],
        "p.txt has 2 predictions but r.txt has 3 references",
        {"p.txt": "a\nb\n", "r.txt": "a\nb\nc\n"},
    ),
    "empty predictions file": Case(
        ["eval", "--preds", "p.txt", "--refs", "r.txt"],
        "p.txt is empty",
        {"p.txt": "", "r.txt": "a\n"},
    ),
    "eval results already there": Case(
        ["eval", "--preds", "p.txt", "--refs", "r.txt", "--name", "old"],
        "metrics.json already exists: pass --overwrite",
        {"p.txt": "a\n", "r.txt": "a\n", "runs/eval/old/metrics.json": "{}"},
    ),
    "generate input with a bad line": Case(
        ["generate", "--input", "q.jsonl"],
        "q.jsonl:2: malformed JSON",
        {"q.jsonl": '{"prompt": "hi"}\n{"prompt": \n'},
    ),
    # --- run folders -----------------------------------------------------------------------
    "output folder holds a run": Case(
        ["pretrain", TINY, "--output-dir", "runs/old"],
        "output dir runs/old already holds a run",
        {
            "runs/old/recipe.yaml": "name: old\n",
            "runs/old/config.json": "{}",
            "runs/old/model.safetensors": b"weights",
        },
    ),
    "resume without checkpoint": Case(
        ["pretrain", TINY, "--resume", "--output-dir", "runs/new"],
        "--resume: no checkpoint-* folder in runs/new",
    ),
    "output folder is a file": Case(
        ["pretrain", TINY, "--output-dir", "taken"],
        "output dir taken exists and is not a folder",
        {"taken": "a file"},
    ),
    "output folder unwritable": Case(
        ["pretrain", TINY, "--output-dir", "afile/run"],
        "output dir afile/run is not writable",
        {"afile": "a file where a folder should be"},
    ),
}


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _invoke(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    from llmkit.cli import main

    monkeypatch.setattr(sys, "argv", ["llmkit", *argv])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[kind]
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)

    code, err = _invoke(case.argv, monkeypatch, capsys)

    assert code == 2, err
    assert case.expected in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost or changed


def test_model_code_never_runs_without_trust_remote_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES["model ships its own code"]
    for name, content in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(str(content))
    monkeypatch.chdir(tmp_path)
    code, err = _invoke(case.argv, monkeypatch, capsys)
    assert code == 2 and "pass --trust-remote-code" in err
    assert not (tmp_path / "PWNED").exists()


def test_survey_covers_at_least_30_kinds() -> None:
    assert len(CASES) + len(PROCESS_CASES) >= 30


def _limit_file_size() -> None:
    # 4 MB: enough for the prep cache and recipe, not for the tiny model's 13 MB checkpoint.
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


PROCESS_CASES = ["no disk space for a checkpoint"]


def test_no_disk_space_for_a_checkpoint(tmp_path: Path) -> None:
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmkit",
            "pretrain",
            TINY,
            "--max-steps",
            "5",
            "--set",
            "train.save_every=5",
            "--set",
            "train.eval_every=null",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=600,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("error: cannot write checkpoint-5 to runs/tiny-cpu:"), err
    assert "(is the disk full?)" in err
    assert "Traceback" not in out.stderr
    run = tmp_path / "runs" / "tiny-cpu"
    assert (run / "recipe.yaml").exists()
    assert not (run / "checkpoint-5").exists() and not (run / ".staging" / "checkpoint-5").exists()


def test_cli_entry_point_gives_the_same_one_line_error() -> None:
    out = run_cli("pretrain", "--set", "train.lr=-1", "--dry-run")
    assert out.returncode == 2
    recipe = REPO / "recipes/pretrain/gpt-shakespeare.yaml"
    assert out.stderr.strip().splitlines() == [
        f"error: {recipe}: train.lr: Input should be greater than 0 (got -1)"
    ]
