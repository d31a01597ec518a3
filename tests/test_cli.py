"""One CLI style (issue 14): clean piped output, --version, completion, `recipes NAME`,
old flag spellings as hidden aliases, every error one `error:` line, shipped recipes that run
from any folder, and the no-argument defaults the README promises."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from llmkit import __version__

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")

# Every command and subcommand; each gets a bad option and must answer with one line.
COMMANDS = [
    ["recipes"],
    ["pretrain"],
    ["finetune"],
    ["export"],
    ["generate"],
    ["chat"],
    ["embed"],
    ["eval"],
    ["prep"],
    ["prep", "tokenizer"],
]


def test_version_prints_llmkit_and_the_libraries_that_decide_behaviour() -> None:
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(
        rf"llmkit {re.escape(__version__)} \(torch \S+, transformers \S+, peft \S+, "
        r"python \d+\.\d+\.\d+\)\n",
        out.stdout,
    ), out.stdout


def test_shell_completion_script_is_offered() -> None:
    script = "import sys; from llmkit.cli import main; sys.argv[0] = 'llmkit'; main()"
    out = subprocess.run(
        [sys.executable, "-c", script, "--show-completion", "bash"],
        capture_output=True,
        text=True,
        env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert "_LLMKIT_COMPLETE" in out.stdout and "complete" in out.stdout
    assert "--install-completion" in run_cli("--help").stdout


def test_recipes_name_prints_the_shipped_file_and_a_bare_name_finds_it() -> None:
    from llmkit.config.loader import RECIPES_DIR

    for name in ("pretrain/tiny-cpu", "tiny-cpu"):
        out = run_cli("recipes", name)
        assert out.returncode == 0, out.stderr
        assert out.stdout == (RECIPES_DIR / "pretrain/tiny-cpu.yaml").read_text()


def test_an_unknown_recipe_is_one_line_naming_the_close_ones() -> None:
    out = run_cli("recipes", "tiny-cpo")
    assert out.returncode == 2
    assert out.stderr == "error: recipe tiny-cpo not found (did you mean pretrain/tiny-cpu?)\n"
    far = run_cli("recipes", "zzzz")
    assert far.stderr == "error: recipe zzzz not found (see `llmkit recipes`)\n"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_bad_option_is_one_error_line_and_exit_2(command: list[str]) -> None:
    out = run_cli(*command, "--zzz")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"error: No such option: --zzz (see `python -m llmkit {' '.join(command)} --help`)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prep", "tokenizer"], "error: Missing argument 'sources'."),
        (["embed"], "error: Missing argument 'file'."),
        (["no-such-command"], "error: No such command 'no-such-command'."),
        (["generate", "--max-new-tokens", "many"], "error: Invalid value for '--max-new-tokens'"),
        (["recipes", "a", "b"], "error: Got unexpected extra argument"),
    ],
)
def test_parsing_errors_are_one_error_line(args: list[str], message: str) -> None:
    out = run_cli(*args)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith(message), out.stderr
    assert "╭" not in out.stderr  # no typer box


def test_old_spelling_of_a_renamed_flag_still_works_but_is_not_listed(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"body": f"line {i} of text"}) + "\n" for i in range(20)))
    args = ["prep", "tokenizer", str(src), "--vocab-size", "300", "--min-frequency", "1"]
    new = run_cli(*args, "-o", str(tmp_path / "new"), "--field", "body")
    old = run_cli(*args, "-o", str(tmp_path / "old"), "--text-column", "body")
    assert new.returncode == 0 and old.returncode == 0, old.stderr
    read = (tmp_path / "new" / "tokenizer.json").read_text()
    assert read == (tmp_path / "old" / "tokenizer.json").read_text()
    both = run_cli(*args, "-o", str(tmp_path / "both"), "--field", "body", "--text-column", "x")
    assert both.returncode == 0, both.stderr  # the new spelling wins
    listed = run_cli("prep", "tokenizer", "--help").stdout
    assert "--field" in listed and "--text-column" not in listed


def test_the_tiny_recipe_corpus_is_embedded_and_equals_the_test_excerpts() -> None:
    from llmkit import assets

    files = assets.shakespeare_excerpt_files()
    assert [f.read_bytes() for f in files] == [
        (REPO / "tests/data" / f.name).read_bytes() for f in files
    ]


def test_shipped_tiny_recipes_run_outside_the_repository(tmp_path: Path) -> None:
    for recipe in ("tiny-cpu", "tiny-bert-cpu"):
        out = run_cli("prep", str(REPO / f"recipes/pretrain/{recipe}.yaml"), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "2 documents" in out.stderr + out.stdout or "cache hit" in out.stderr + out.stdout


def test_piped_training_output_has_no_bars_or_escape_codes(tmp_path: Path) -> None:
    out = run_cli(
        "pretrain", TINY, "--max-steps", "2", "--set", "train.log_every=1",
        "--set", "train.eval_every=2", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "\r" not in text and "\x1b" not in text, repr(text[:400])
    assert "%|" not in text  # no tqdm bar, even one drawn once
    lines = text.splitlines()
    assert any(line.startswith("step     1/2 | loss") for line in lines), text
    # the final evaluation repeats step 2's: printed once
    assert sum(line.startswith("step     2/2 | eval loss") for line in lines) == 1, text


def test_generate_with_no_prompt_continues_the_default_one(tiny_gpt2_dir: Path) -> None:
    out = run_cli("generate", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "2", "--greedy")
    assert out.returncode == 0, out.stderr
    assert "prompt: Once upon a time (the default" in out.stderr
    assert out.stdout.strip() != ""
    empty = run_cli("generate", "", "--model", str(tiny_gpt2_dir))  # given, but empty: an error
    assert (empty.returncode, empty.stderr) == (2, "error: the prompt is empty\n")


def test_export_with_no_run_and_no_runs_is_one_line(tmp_path: Path) -> None:
    out = run_cli("export", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: no RUN given and no finished run in runs/")
    assert len(out.stderr.splitlines()) == 1


def test_a_new_classifier_head_is_one_line_not_a_load_report(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from llmkit.config.finetune import FinetuneRecipe
    from llmkit.config.loader import load_recipe
    from llmkit.models.load import load_for_finetuning, load_tokenizer

    recipe = load_recipe(FinetuneRecipe, REPO / "recipes/finetune/minilm-topics.yaml")
    load_for_finetuning(recipe, load_tokenizer(recipe.base_model), ["a", "b", "c"])
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err
    assert "new classification head (3 labels): classifier.bias, classifier.weight\n" in err


def test_only_tied_weights_are_dropped_from_the_resume_report() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmkit.io.quiet import MISSING_ON_RESUME, tied_weights_not_missing

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=50))
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("transformers.trainer")
    handler = Keep()
    logger.addHandler(handler)
    try:
        with tied_weights_not_missing(model):
            logger.warning(f"{MISSING_ON_RESUME}{['lm_head.weight']}.")
            logger.warning(f"{MISSING_ON_RESUME}{['transformer.h.0.attn.c_attn.weight']}.")
    finally:
        logger.removeHandler(handler)
    assert seen == [f"{MISSING_ON_RESUME}['transformer.h.0.attn.c_attn.weight']."]


def test_escape_codes_are_stripped_from_library_logs_when_not_a_terminal() -> None:
    code = (
        "import logging, sys; from llmkit.io.quiet import quiet_libraries; quiet_libraries(); "
        "logging.basicConfig(stream=sys.stderr, format='%(message)s'); "
        "logging.getLogger('transformers.modeling_utils').warning('\\x1b[1mX LOAD REPORT\\x1b[0m')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stderr == "X LOAD REPORT\n"


def test_each_silenced_warning_is_targeted_and_explained() -> None:
    from llmkit.io.quiet import HARMLESS_WARNINGS

    for message, category, _module, why in HARMLESS_WARNINGS:
        assert message.strip(".*") and category is not Warning and len(why) > 40
