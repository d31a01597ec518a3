"""Encoder-decoder text-to-text: a T5 built from sizes learns English -> Italian, and the run
goes through eval, generate, LoRA on top of it, and export, with no hand-made prompts.

The T5 is tiny (width 64, 2 + 2 layers) over a 1,000-token BPE trained by `llmkit prep
tokenizer` on the pairs themselves: with GPT-2's 50,257 tokens the embedding alone would be
most of the model and a minute of CPU training would teach it nothing measurable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from llmkit.config.finetune import FinetuneRecipe
from llmkit.config.loader import RECIPES_DIR, load_recipe
from llmkit.data.examples import translation_rows
from llmkit.models.card import read_card

RECIPE = RECIPES_DIR / "finetune" / "t5-translation.yaml"
# 160 steps of a T5 from scratch: ~1.5 min on 2 quiet cores, ~4 under load.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmkit.commands.finetune import run_finetune

    tmp = tmp_path_factory.mktemp("t5")
    train, held_out = translation_rows()
    corpus = tmp / "pairs.txt"
    corpus.write_text("".join(f"{r['source']}\n{r['target']}\n" for r in train))
    proc = run_cli(
        "prep", "tokenizer", str(corpus), "--output", str(tmp / "tok"), "--vocab-size", "1000"
    )
    assert proc.returncode == 0, proc.stderr
    (tmp / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out[:32]))
    overrides = [
        f"model.scratch.tokenizer={tmp / 'tok'}",
        "model.scratch.d_model=64",
        "model.scratch.num_heads=2",
        "model.scratch.d_ff=256",
        "data.max_eval_examples=32",
        "eval.max_new_tokens=24",
        "train.max_steps=160",
        "train.eval_every=80",
        "train.save_every=80",
        "train.log_every=40",
        f"train.output_dir={tmp / 'run'}",
    ]
    run_finetune(load_recipe(FinetuneRecipe, RECIPE, overrides))
    return tmp / "run"


def test_a_t5_from_scratch_learns_to_translate(t5_run: Path) -> None:
    m = json.loads((t5_run / "metrics.json").read_text())
    # Measured: eval loss 7.47 -> 5.86, BLEU 0.00 -> 0.25, chrF 0.0 -> 2.0, ROUGE-L 4.3 (160
    # steps on 685 pairs teach frequent words, not Italian).
    assert m["eval_loss"] < m["eval_loss_before"] - 1, m
    assert m["chrf"] > m["chrf_before"] and m["bleu"] > m["bleu_before"], m
    card = read_card(t5_run)
    assert card is not None and (card.task, card.kind) == ("text2text", "seq2seq")
    config = json.loads((t5_run / "config.json").read_text())
    assert config["architectures"] == ["T5ForConditionalGeneration"]


def test_eval_and_generate_use_the_t5_run_as_trained(t5_run: Path) -> None:
    """The run's held-out pairs, scored by `llmkit eval`: the numbers its training reported."""
    _, held_out = translation_rows()
    val = t5_run.parent / "val-all.jsonl"
    # The run's validation set: every held-out pair, evenly strided down to 32.
    rows = held_out[:: len(held_out) // 32][:32]
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = t5_run.parent / "eval"
    proc = run_cli("eval", "--model", str(t5_run), "--data", str(val), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    got = json.loads((out / "metrics.json").read_text())["metrics"]
    trained = json.loads((t5_run / "metrics.json").read_text())
    assert round(got["chrf"], 3) == trained["chrf"] and round(got["bleu"], 3) == trained["bleu"]
    proc = run_cli("generate", "--model", str(t5_run), "What is AI?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "an answer"
    assert "T5ForConditionalGeneration" in proc.stderr


def test_lora_on_a_t5_folder_then_export_gives_a_plain_model(t5_run: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "finetune",
        str(RECIPE),
        "--set",
        f"model.init={t5_run}",
        "--set",
        "model.scratch=null",
        "--set",
        "lora.enabled=true",
        "--set",
        "data.max_eval_examples=8",
        "--set",
        "eval.max_new_tokens=8",
        "--set",
        "train.eval_every=null",
        "--max-steps",
        "4",
        "--output-dir",
        str(tmp_path / "lora"),
    )
    assert proc.returncode == 0, proc.stderr
    adapter = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_2_SEQ_LM" and sorted(adapter["target_modules"]) == [
        "q",
        "v",
    ]
    proc = run_cli("export", str(tmp_path / "lora"), "--output", str(tmp_path / "merged"))
    assert proc.returncode == 0, proc.stderr
    card = read_card(tmp_path / "merged")
    assert card is not None and card.kind == "seq2seq"
    answers = [
        run_cli("generate", "--model", str(tmp_path / m), "--max-new-tokens", "8", "Good night")
        for m in ("lora", "merged")
    ]
    assert all(a.returncode == 0 for a in answers), [a.stderr for a in answers]
    assert answers[0].stdout == answers[1].stdout  # merging changes no answer
