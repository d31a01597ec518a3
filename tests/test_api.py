"""The Python API (llmkit.api): the same library as the CLI, typed errors, no sys.exit, and
the README's Python examples run as written."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmkit

FAST = {"max_steps": 6, "eval_every": 6, "save_every": 6, "log_every": 2}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> llmkit.Run:
    out = tmp_path_factory.mktemp("api") / "tiny"
    return llmkit.pretrain("tiny-cpu", train={**FAST, "output_dir": out})


def test_pretrain_returns_the_run_the_cli_would_write(tiny_run: llmkit.Run) -> None:
    on_disk = json.loads((tiny_run.path / "metrics.json").read_text())
    assert tiny_run.metrics == on_disk
    assert tiny_run.metrics["steps"] == 6
    assert tiny_run.stop_reason == "reached max_steps 6"
    assert (tiny_run.path / "config.json").is_file()
    assert "max_steps: 6" in (tiny_run.path / "recipe.yaml").read_text()
    rows = [json.loads(line) for line in (tiny_run.path / "metrics.jsonl").open()]
    assert [r for r in rows if "eval_loss" in r][-1]["eval_loss"] == pytest.approx(
        tiny_run.metrics["eval_loss"]
    )


def test_a_loaded_run_generates_and_scores_text(tiny_run: llmkit.Run) -> None:
    model = llmkit.load(tiny_run)
    text = model.generate("ROMEO:", max_new_tokens=5)
    assert isinstance(text, str)
    both = model.generate(["ROMEO:", "JULIET:"], max_new_tokens=5)
    assert both[0] == text and len(both) == 2  # greedy: batched equals alone
    ppl = model.perplexity("To be, or not to be, that is the question.")
    assert math.isfinite(ppl) and 1.0 < ppl < 60_000  # GPT-2's vocabulary: 50,257 tokens


@pytest.mark.slow  # a CLI subprocess: ~13 s on a busy 2-core machine
def test_perplexity_equals_the_cli_eval(tiny_run: llmkit.Run, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("Tomorrow, and tomorrow, and tomorrow,\nCreeps in this petty pace.\n")
    out = tmp_path / "eval"
    cli = run_cli(
        "eval", "--model", str(tiny_run.path), "--text", str(text), "--output-dir", str(out)
    )
    assert cli.returncode == 0, cli.stderr
    reported = json.loads((out / "metrics.json").read_text())
    values = json.dumps(reported)
    ppl = llmkit.load(tiny_run.path).perplexity(text.read_text())
    assert f"{ppl:.4f}"[:6] in values or any(
        isinstance(v, float) and v == pytest.approx(ppl, rel=1e-5) for v in _numbers(reported)
    )


def _numbers(data: object) -> list[float]:
    if isinstance(data, dict):
        return [x for v in data.values() for x in _numbers(v)]
    if isinstance(data, list):
        return [x for v in data for x in _numbers(v)]
    return [float(data)] if isinstance(data, int | float) and not isinstance(data, bool) else []


def test_resuming_a_finished_run_changes_nothing(
    tiny_run: llmkit.Run, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_run.path.rglob("*") if p.is_file()}
    again = llmkit.pretrain("tiny-cpu", resume=True, train={**FAST, "output_dir": tiny_run.path})
    assert again.metrics == tiny_run.metrics
    assert "already finished at step 6" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tiny_run.path.rglob("*") if p.is_file()} == before


def test_bad_input_is_a_usage_error_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"train\.max_steps") as e:
        llmkit.pretrain("tiny-cpu", train={"max_steps": "many", "output_dir": out})
    assert isinstance(e.value, llmkit.UsageError)
    with pytest.raises(llmkit.UsageError, match="did you mean pretrain/tiny-cpu"):
        llmkit.pretrain("tiny-cpo", **{"train.output_dir": out})
    with pytest.raises(llmkit.UsageError, match=r"train\.devices is 2"):
        llmkit.pretrain("tiny-cpu", train__devices=2, train__output_dir=out)
    assert not out.exists()


def test_an_existing_run_is_never_overwritten_unasked(tiny_run: llmkit.Run) -> None:
    before = (tiny_run.path / "metrics.json").read_bytes()
    with pytest.raises(llmkit.UsageError, match=r"overwrite=True|overwrite it"):
        llmkit.pretrain("tiny-cpu", train={**FAST, "output_dir": tiny_run.path})
    assert (tiny_run.path / "metrics.json").read_bytes() == before


def test_generation_options_are_checked_by_name(tiny_run: llmkit.Run) -> None:
    model = llmkit.load(tiny_run)
    with pytest.raises(llmkit.UsageError, match="max_new_tokens"):
        model.generate("ROMEO:", max_new_tokens=0)
    with pytest.raises(llmkit.UsageError, match=r"classifier|classification"):
        model.classify("a text")


def test_plot_returns_the_figure_and_the_file(tiny_run: llmkit.Run, tmp_path: Path) -> None:
    drawn = tiny_run.plot(tmp_path / "curves.png")
    assert drawn.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn.figure is not None and len(drawn.figure.axes) >= len(drawn.panels)
    assert drawn._repr_png_()[:4] == b"\x89PNG"  # what a notebook shows
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"not llmkit's")
    with pytest.raises(llmkit.UsageError, match=r"mine\.png"):
        tiny_run.plot(mine)
    assert mine.read_bytes() == b"not llmkit's"


@pytest.fixture(scope="module")
def wide_llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A random 2-layer Llama with SmolLM2's chat template, its weights drawn wide (0.2) so
    greedy answers are words, not one repeated newline (as in test_chat)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("wide-llama")
    tok = smollm2_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow  # a CLI subprocess
def test_chat_answers_as_the_cli_chat_does(
    wide_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_llama_dir = wide_llama_dir
    model = llmkit.load(tiny_llama_dir)
    answer = model.chat("Hello there", do_sample=False, max_new_tokens=8)
    assert answer and answer in capsys.readouterr().out  # streamed as it came
    cli = subprocess.run(
        [sys.executable, "-m", "llmkit", "chat", str(tiny_llama_dir), "--greedy",
         "--max-new-tokens", "8"],
        input="Hello there\n", capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "LLMKIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert answer in cli.stdout
    with pytest.raises(llmkit.UsageError, match="empty"):
        model.chat("  ")


def test_prep_and_embed_give_arrays(tiny_bert_dir: Path) -> None:
    import numpy as np

    data = llmkit.prep("tiny-cpu")
    assert data.train.ndim == 2 and data.train.shape[1] == 64  # tiny-cpu's data.block_size
    vectors = llmkit.load(tiny_bert_dir).embed(["a sentence", "今天天气很好", "x"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # cosine = dot


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.text(
            alphabet=st.characters(categories=("L", "N"), min_codepoint=0x30, max_codepoint=0xFFFF),
            min_size=1,
            max_size=12,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_evaluate_scores_identical_lists_as_perfect_in_any_script(texts: list[str]) -> None:
    scores = llmkit.evaluate(preds=texts, refs=texts, metrics=["em", "f1", "chrf"])
    assert scores["exact_match"] == pytest.approx(100.0)  # percent, as the CLI reports
    assert scores["f1"] == pytest.approx(100.0)


@pytest.mark.slow  # a CLI subprocess
def test_evaluate_equals_the_cli_on_files(tmp_path: Path) -> None:
    preds = ["the cat sat on the mat", "今天天气很好", "a dog"]
    refs = ["the cat sat on a mat", "今天天气不错", "a dog barked"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prediction": p}) + "\n" for p in preds))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"reference": r}) + "\n" for r in refs))
    cli = run_cli(
        "eval", "--preds", str(tmp_path / "p.jsonl"), "--refs", str(tmp_path / "r.jsonl"),
        "--metrics", "bleu,rouge,em", "--output-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    ours = llmkit.evaluate(preds=preds, refs=refs, metrics="bleu,rouge,em")
    assert set(ours) >= {"bleu", "rougeL", "exact_match"}
    for value in ours.values():
        assert any(v == pytest.approx(value) for v in _numbers(report))
    with pytest.raises(llmkit.UsageError, match="unknown metric"):
        llmkit.evaluate(preds=preds, refs=refs, metrics="blue")


def test_import_llmkit_loads_no_heavy_library() -> None:
    heavy = "('torch', 'transformers', 'datasets')"
    code = f"import sys, llmkit; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert sorted(llmkit.__all__) == sorted(set(llmkit.__all__))
    assert all(getattr(llmkit, name) is not None for name in llmkit.__all__)


def readme_python_blocks() -> list[str]:
    """The ```python blocks of README.md's Python section, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow  # a fresh process that pretrains: ~60-90 s on a busy 2-core machine
def test_the_readme_python_examples_run(tmp_path: Path) -> None:
    blocks = readme_python_blocks()
    assert len(blocks) >= 2
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs").is_dir()
