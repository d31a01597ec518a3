"""Bad input survey: every kind of mistake gives exit code 2, one `error:` line that names the
field, file or line, no traceback, and leaves every file that was there untouched.

Cases run in-process through `llmkit.cli.main` (the same code path as the console script, minus
~4 s of imports per case); the few that need a real process limit run as subprocesses.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
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
    argv: list[str]  # "{tiny}" stands for a tiny GPT-2 model folder
    expected: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # symlink -> target
    model: dict[str, str | bytes | None] | None = (
        None  # the tiny model copied to m/, files replaced
    )
    stdin: bytes | None = None


def _jsonl(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def _alpaca_with_a_null_output() -> str:
    rows = [{"instruction": f"say {i}", "output": None if i == 3 else str(i)} for i in range(12)]
    return "".join(json.dumps(r) + "\n" for r in rows)


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
    "config override of a key llmkit sets": Case(
        ["pretrain", TINY, "--set", "model.config_overrides.n_embd=32"],
        "model.config_overrides: n_embd is set by llmkit from model.hidden_size",
    ),
    "config override transformers refuses": Case(
        ["pretrain", TINY, "--set", "model.config_overrides.layer_norm_epsilon=abc"],
        "model.config_overrides: the gpt2 model cannot be built with them: ",
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
    "unknown embedded dataset": Case(
        ["finetune", "--set", "data.sources=[embedded:reviews-fr]", "--max-steps", "1"],
        "unknown embedded dataset 'embedded:reviews-fr' (valid: embedded:chatterbot, ",
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
    # --- issue 13: lost or overwritten data --------------------------------------------------
    "empty run name": Case(
        ["pretrain", TINY, "--set", "name="], "name: must be a plain folder name"
    ),
    "run name escaping runs/": Case(
        ["pretrain", TINY, "--set", "name=../escape"], "name: must be a plain folder name"
    ),
    "eval name escaping runs/eval": Case(
        ["eval", "--preds", "p.txt", "--refs", "p.txt", "--name", "../../x"],
        "--name: must be a plain folder name",
        {"p.txt": "a\n"},
    ),
    "overwrite a folder of user data": Case(
        ["pretrain", TINY, "--output-dir", "mydata", "--overwrite"],
        "output dir mydata holds files llmkit did not make",
        {"mydata/notes.txt": "precious\n"},
    ),
    "overwrite runs/ itself": Case(
        ["pretrain", TINY, "--output-dir", "runs", "--overwrite"],
        "output dir runs holds files llmkit did not make",
        {"runs/other/.llmkit": '{"kind": "run"}', "runs/other/config.json": "{}"},
    ),
    "overwrite an unmarked run": Case(
        ["pretrain", TINY, "--output-dir", "runs/old", "--overwrite"],
        "runs/old is not made by llmkit (no .llmkit file), so llmkit will not replace it",
        {"runs/old/config.json": "{}", "runs/old/model.safetensors": b"weights"},
    ),
    "export into its own run": Case(
        ["export", "lora", "--output", "lora", "--overwrite"],
        "output lora is also an input (lora)",
        {"lora/adapter_config.json": '{"base_model_name_or_path": "gpt2"}'},
    ),
    "export over a folder of user data": Case(
        ["export", "lora", "--output", "mydata", "--overwrite"],
        "mydata is not made by llmkit (no .llmkit file)",
        {
            "lora/adapter_config.json": '{"base_model_name_or_path": "gpt2"}',
            "mydata/notes.txt": "precious\n",
        },
    ),
    "generate output is its input": Case(
        ["generate", "--model", "{tiny}", "--input", "q.txt", "--output", "q.txt"],
        "output q.txt is also an input (q.txt)",
        {"q.txt": "Hello\n"},
    ),
    "generate output is another name for its input": Case(
        ["generate", "--model", "{tiny}", "--input", "q.txt", "--output", "d/../q.txt"],
        "is also an input (q.txt)",
        {"q.txt": "Hello\n", "d/x": ""},
    ),
    "embed output is its input": Case(
        ["embed", "in.jsonl", "--output", "in.jsonl"],
        "output in.jsonl is also an input (in.jsonl)",
        {"in.jsonl": '{"text": "hi"}\n'},
    ),
    "generate output is an existing file": Case(
        ["generate", "--model", "{tiny}", "--input", "q.txt", "--output", "mine.jsonl"],
        "output mine.jsonl already exists: pass --overwrite to replace it",
        {"q.txt": "Hello\n", "mine.jsonl": '{"precious": 1}\n'},
    ),
    "embed output is an existing file": Case(
        ["embed", "q.txt", "--output", "mine.npy"],
        "output mine.npy already exists: pass --overwrite to replace it",
        {"q.txt": "Hello\n", "mine.npy": b"mine"},
    ),
    "generate output is a folder": Case(
        ["generate", "--model", "{tiny}", "--input", "q.txt", "--output", "outdir"],
        "output outdir is a folder; give a file name",
        {"q.txt": "Hello\n", "outdir/keep.txt": "x"},
    ),
    "eval into a folder of user data": Case(
        ["eval", "--preds", "p.txt", "--refs", "p.txt", "--output-dir", "mydata"],
        "output dir mydata holds files llmkit did not make",
        {"p.txt": "a\n", "mydata/predictions.jsonl": "mine\n", "mydata/notes.txt": "x"},
    ),
    "non-finite learning rate": Case(
        ["pretrain", TINY, "--set", "train.lr=.nan"], "train.lr: Input should be a finite number"
    ),
    "infinite epochs": Case(
        ["pretrain", TINY, "--set", "train.epochs=.inf"],
        "train.epochs: Input should be a finite number",
    ),
    "absurd max steps": Case(
        ["pretrain", TINY, "--max-steps", "1000000000000000000000000000000"],
        "train.max_steps: Input should be less than or equal to 1000000000",
    ),
    "huge vocab padding": Case(
        ["pretrain", TINY, "--set", "model.pad_vocab_to_multiple_of=1000000000000"],
        "model.pad_vocab_to_multiple_of: Input should be less than or equal to 4096",
    ),
    # --- tracebacks that became one line ---------------------------------------------------
    "truncated safetensors": Case(
        ["generate", "--model", "m", "hi"],
        "cannot load model m:",
        model={"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{"},
    ),
    "broken tokenizer.json": Case(
        ["generate", "--model", "m", "hi"],
        "cannot load tokenizer m:",
        model={"tokenizer.json": "{"},
    ),
    "config.json of {}": Case(
        ["generate", "--model", "m", "hi"], "cannot load model m:", model={"config.json": "{}"}
    ),
    "adapter_config.json not JSON": Case(
        ["generate", "--model", "a", "hi"],
        "a/adapter_config.json: not a valid adapter config",
        {"a/adapter_config.json": "{not json"},
    ),
    "dangling symlink in a corpus folder": Case(
        ["prep", TINY, "--set", "data.sources=[corpus]"],
        "corpus/gone.txt is a broken symbolic link",
        {"corpus/a.txt": "To be or not to be\n"},
        links={"corpus/gone.txt": "nowhere.txt"},
    ),
    "symlink loop in a corpus folder": Case(
        ["prep", TINY, "--set", "data.sources=[corpus]"],
        "is a broken symbolic link (or a loop of them)",
        {"corpus/a.txt": "To be or not to be\n"},
        links={"corpus/loop1.txt": "loop2.txt", "corpus/loop2.txt": "loop1.txt"},
    ),
    "FIFO as a source": Case(
        ["prep", TINY, "--set", "data.sources=[/dev/stdin]"],
        "is not a regular file (a FIFO, socket or device)",
    ),
    "/dev/zero as a source": Case(
        ["prep", TINY, "--set", "data.sources=[/dev/zero]"],
        "/dev/zero is not a regular file (a FIFO, socket or device)",
    ),
    "deeply nested JSON": Case(
        ["prep", TINY, "--set", "data.sources=[d.jsonl]"],
        "d.jsonl:1: JSON nested too deeply",
        {"d.jsonl": "[" * 100_000 + "]" * 100_000 + "\n"},
    ),
    "NaN temperature": Case(
        ["generate", "--model", "{tiny}", "hi", "--temperature", "nan"],
        "--temperature: Input should be a finite number",
    ),
    "seed out of range": Case(
        ["pretrain", TINY, "--seed", "99999999999"],
        "train.seed: Input should be less than or equal to 4294967295",
    ),
    "generation seed out of range": Case(
        ["generate", "--model", "{tiny}", "hi", "--seed", "-1"],
        "--seed: Input should be greater than or equal to 0",
    ),
    "more sequences than beams": Case(
        ["generate", "--model", "{tiny}", "hi", "--num-beams", "2", "-n", "3"],
        "num_return_sequences",
    ),
    "non-UTF-8 on stdin": Case(
        ["generate", "--model", "{tiny}", "-"],
        "stdin:1: not valid UTF-8 (byte 0xe9 at offset 3)",
        stdin=b"caf\xe9\n",
    ),
    "empty LoRA target list": Case(
        ["finetune", "--set", "lora.target_modules=[]"],
        "lora.target_modules: List should have at least 1 item",
    ),
    "template without {source}": Case(
        ["finetune", "--set", "task=text2text", "--set", "data.template=Translate:"],
        "data.template: template 'Translate:' must contain {source}",
    ),
    "template with a stray brace": Case(
        ["finetune", "--set", "task=text2text", "--set", "data.template={source} {"],
        "data.template: template '{source} {': {source} is the only placeholder",
    ),
    "max new tokens absurd": Case(
        ["generate", "--model", "{tiny}", "hi", "--max-new-tokens", "1000000000"],
        "--max-new-tokens: Input should be less than or equal to 1000000",
    ),
    "batch size 0": Case(
        ["eval", "--model", "{tiny}", "--batch-size", "0"],
        "--batch-size: Input should be greater than or equal to 1",
    ),
    "stride above the window": Case(
        ["eval", "--model", "{tiny}", "--text", "t.txt", "--max-length", "32", "--stride", "64"],
        "--stride must be between 1 and --max-length (32), got 64",
        {"t.txt": "words\n"},
    ),
    # --- silent wrong results that became one line -----------------------------------------
    "YAML key written twice": Case(
        ["pretrain", "r.yaml", "--dry-run"],
        "r.yaml:4:1: invalid YAML: key 'train' appears twice in one mapping (first on line 1)",
        {"r.yaml": "train:\n  lr: 1.0e-3\nname: x\ntrain:\n  max_steps: 5\n"},
    ),
    "YAML alias bomb": Case(
        ["pretrain", "r.yaml", "--dry-run"],
        "invalid YAML: the document expands to",
        {
            "r.yaml": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
                for i in range(6)
            )
        },
    ),
    "JSONL text that is a list": Case(
        ["prep", TINY, "--set", "data.sources=[d.jsonl]"],
        "d.jsonl:1: field 'text' must be a string, got ['a', 'b']",
        {"d.jsonl": '{"text": ["a", "b"]}\n'},
    ),
    "JSONL text that is a number": Case(
        ["prep", TINY, "--set", "data.sources=[d.jsonl]"],
        "d.jsonl:1: field 'text' must be a string, got 42",
        {"d.jsonl": '{"text": 42}\n'},
    ),
    "upper-case .JSONL read as JSONL": Case(
        ["prep", TINY, "--set", "data.sources=[D.JSONL]"],
        "D.JSONL:1: no field 'text' (fields: body)",
        {"D.JSONL": '{"body": "a"}\n'},
    ),
    "one-label classification set": Case(
        [
            "finetune",
            "finetune/minilm-topics",
            "--set",
            "data.sources=[c.jsonl]",
            "--set",
            "data.label_column=label",
            "--set",
            "data.validation=0.5",
            "--output-dir",
            "runs/c",
        ],
        "classification needs at least 2",
        {"c.jsonl": "".join(f'{{"text": "q{i}", "label": "only"}}\n' for i in range(20))},
    ),
    "alpaca row with a null output": Case(
        [
            "finetune",
            "--set",
            "data.sources=[a.jsonl]",
            "--set",
            "data.format=alpaca",
            "--set",
            "data.validation=0.5",
            "--set",
            "model.init={tiny}",
            "--output-dir",
            "runs/a",
        ],
        "column 'output' must be a string, got None",
        {"a.jsonl": _alpaca_with_a_null_output()},
    ),
}


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def _invoke(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stdin: bytes | None = None,
) -> tuple[int, str]:
    from llmkit.cli import main

    monkeypatch.setattr(sys, "argv", ["llmkit", *argv])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    case = CASES[kind]
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    for name, content in case.files.items():
        _write(tmp_path / name, content)
    for name, target in case.links.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, tmp_path / name)
    tiny = str(request.getfixturevalue("tiny_gpt2_dir")) if "{tiny}" in " ".join(case.argv) else ""
    if case.model is not None:
        shutil.copytree(request.getfixturevalue("tiny_gpt2_dir"), tmp_path / "m")
        for name, content in case.model.items():
            _write(tmp_path / "m" / name, content or "")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)

    argv = [a.replace("{tiny}", tiny) for a in case.argv]
    code, err = _invoke(argv, monkeypatch, capsys, case.stdin)

    assert code == 2, err
    assert case.expected in err
    # One error line, last; status lines may come first ("model: ..." once it has loaded).
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1, err
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
