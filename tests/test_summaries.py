"""Summarization on data that installs from PyPI (issue 28, part 3): `embedded:aclsum`, the
ACLSum abstracts with their challenge/approach/outcome summaries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from hypothesis import given
from hypothesis import strategies as st

from llmkit.data import examples, summaries

TOKENIZED = re.compile(r" [.,;:)]|\( | 's\b")


def test_aclsum_pairs_and_held_out_split() -> None:
    train, held_out = examples.EMBEDDED_ROWS["embedded:aclsum"]()
    # The authors' split: train + val (100 + 50) to learn from, their 100 test papers held out.
    assert (len(train), len(held_out)) == (150, 100)
    assert not {r["id"] for r in train} & {r["id"] for r in held_out}
    assert len({r["id"] for r in train + held_out}) == 250
    for r in train + held_out:
        assert all(isinstance(r[k], str) and r[k] for k in ("source", "target", *summaries.ASPECTS))
        # The summary is the three aspects in order, each a sentence of its own.
        assert r["target"] == " ".join(r[k] for k in summaries.ASPECTS)
        assert not TOKENIZED.search(r["source"]), r["source"]
    first = held_out[0]
    assert first["id"] == "E09-1056" and first["source"].startswith("Handling terminology")
    assert "Machine Translation (MT) systems" in first["source"]  # "( MT )" detokenized
    words = [len(r["source"].split()) for r in held_out]
    assert 100 < sum(words) / len(words) < 200  # abstracts, not introductions


@given(st.lists(st.sampled_from(["word", ",", ".", "(", ")", "'s", "n't", "F", "1", "-"])))
def test_detokenize_only_removes_spaces(tokens: list[str]) -> None:
    text = " ".join(tokens)
    out = summaries.detokenize(text)
    assert out.replace(" ", "") == text.replace(" ", "")
    assert summaries.detokenize(out) == out
    assert not re.search(r" [.,)]", out)


@pytest.mark.slow
def test_summarize_recipe_scores_rouge_on_held_out_papers(tmp_path: Path) -> None:
    """The shipped recipe, cut to 2 steps of 2 papers and 2 short summaries per evaluation:
    the run folder's metrics.jsonl holds ROUGE before training (step 0) and after (step 2),
    and metrics.json the final and before ROUGE-L."""
    out = tmp_path / "summ"
    recipe = REPO / "recipes" / "finetune" / "summarize-aclsum.yaml"
    settings = ["data.max_eval_examples=2", "eval.generate_examples=2", "eval.max_new_tokens=16"]
    settings += ["train.eval_every=2", "train.save_every=2", "train.batch_size=2"]
    args = [f"--set={s}" for s in settings]
    proc = run_cli("finetune", str(recipe), "--output-dir", str(out), "--max-steps", "2", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = [e for e in lines if "eval_rougeL" in e]
    assert [e["step"] for e in scored] == [0, 2], scored
    assert all(0 <= e["eval_rougeL"] <= 100 and "eval_rouge1" in e for e in scored)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "rougeL" in metrics and "rougeL_before" in metrics
