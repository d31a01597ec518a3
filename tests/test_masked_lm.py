"""A masked LM (BERT) in `llmkit eval` (pseudo-perplexity, masked accuracy) and `llmkit
generate` (fill [MASK]): checked against a direct, unbatched computation, in English and
Chinese, on a tiny BERT built from a config with MiniLM's real WordPiece tokenizer."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, run_cli, save_tiny_bert
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.evaluation import masked

LINES = [
    "to be or not to be, that is the question.",
    "我爱北京天安门。",
    "Ich bin ein Berliner.",
    "東京は日本の首都です。",
]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BertForMaskedLM (width 32) with MiniLM's tokenizer (30,522 tokens)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-mlm"), "BertForMaskedLM", 64)


@pytest.fixture(scope="module")
def loaded(mlm_dir: Path) -> tuple[Any, Any]:
    from llmkit.models.load import load_masked_lm

    model, tok, _ = load_masked_lm(str(mlm_dir))
    return model, tok


def direct_pppl(model: Any, tok: Any, lines: list[str]) -> tuple[float, float]:
    """Salazar et al.'s definition, one masked copy and one full forward at a time."""
    nll, hits, n = 0.0, 0, 0
    for line in lines:
        ids = tok(line, return_tensors="pt").input_ids[0]
        for t in range(1, len(ids) - 1):  # every token but [CLS] and [SEP]
            x = ids.clone()
            x[t] = tok.mask_token_id
            with torch.no_grad():
                logp = torch.log_softmax(model(x[None]).logits[0, t], dim=-1)
            nll -= logp[ids[t]].item()
            hits += int(logp.argmax().item() == ids[t].item())
            n += 1
    return math.exp(nll / n), hits / n


def test_pseudo_perplexity_equals_the_direct_computation(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    rows = masked.text_rows(tok, ["\n".join(LINES)], max_length=64)
    assert len(rows) == len(LINES)
    got = masked.score_rows(model, tok, rows)
    want, accuracy = direct_pppl(model, tok, LINES)
    assert got.pseudo_perplexity == pytest.approx(want, rel=1e-4)
    assert got.accuracy == pytest.approx(accuracy)
    # "我爱北京天安门。" is 8 tokens (one per character) in MiniLM's WordPiece: every
    # character is scored, as a word would be in English.
    assert got.tokens == sum(len(tok(line).input_ids) - 2 for line in LINES)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(
        st.text(
            st.characters(categories=("L", "N", "P", "Zs")),  # every script's letters
            min_size=1,
            max_size=40,
        ).filter(str.strip),
        min_size=1,
        max_size=4,
    ),
    batch_tokens=st.integers(1, 300),
)
def test_batching_never_changes_the_score(
    loaded: tuple[Any, Any], texts: list[str], batch_tokens: int
) -> None:
    model, tok = loaded
    rows = masked.text_rows(tok, texts, max_length=64)
    if not any(len(r) > 2 for r in rows):
        return  # nothing but spaces/unknowns folded away: nothing to score
    one = masked.score_rows(model, tok, rows)
    old = masked.BATCH_TOKENS
    try:
        masked.BATCH_TOKENS = batch_tokens
        other = masked.score_rows(model, tok, rows)
    finally:
        masked.BATCH_TOKENS = old
    assert other.pseudo_perplexity == pytest.approx(one.pseudo_perplexity, rel=1e-4)
    assert other.accuracy == one.accuracy and other.tokens == one.tokens


def test_eval_reports_pseudo_perplexity_of_a_masked_lm(
    mlm_dir: Path, loaded: tuple[Any, Any], tmp_path: Path
) -> None:
    text = tmp_path / "held-out.txt"
    text.write_text("\n".join(LINES) + "\n\n", encoding="utf-8")
    out = run_cli(
        "eval", "--model", str(mlm_dir), "--text", str(text), "--output-dir", "ev", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pseudo-perplexity" in out.stdout and "masked accuracy" in out.stdout
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["mode"] == "masked"
    want, accuracy = direct_pppl(*loaded, LINES)
    assert report["metrics"]["pseudo_perplexity"] == pytest.approx(want, rel=1e-4)
    assert report["metrics"]["masked_accuracy"] == pytest.approx(100 * accuracy)


def test_generate_fills_the_mask_with_top_k_tokens_and_probabilities(
    mlm_dir: Path, loaded: tuple[Any, Any]
) -> None:
    model, tok = loaded
    prompt = "我爱北京天[MASK]门。"
    out = run_cli("generate", "--model", str(mlm_dir), "--json", "--top-k", "3", prompt)
    assert out.returncode == 0, out.stderr[-2000:]
    (fills,) = json.loads(out.stdout)["fills"]  # one mask
    enc = tok(prompt, return_tensors="pt")
    at = int((enc.input_ids[0] == tok.mask_token_id).nonzero())
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits[0, at], dim=-1)
    top = probs.topk(3)
    assert [f["token"] for f in fills] == tok.convert_ids_to_tokens(top.indices.tolist())
    assert [f["probability"] for f in fills] == pytest.approx(top.values.tolist(), abs=1e-6)

    plain = run_cli("generate", "--model", str(mlm_dir), "to be or [MASK] to [MASK] .")
    assert plain.returncode == 0, plain.stderr[-2000:]
    lines = plain.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["[MASK] 1", "[MASK] 2"]
    assert all(len(line.split(":", 1)[1].split()) == 10 for line in lines)  # 5 x (token, p)


def test_a_prompt_without_a_mask_is_one_error_line(mlm_dir: Path) -> None:
    out = run_cli("generate", "--model", str(mlm_dir), "to be or not to be")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: the prompt has no [MASK] to fill: a masked LM predicts the token at each "
        '[MASK] (e.g. "to be or not to [MASK] .")'
    ]


@pytest.mark.slow
def test_a_bert_run_gets_a_pseudo_perplexity_and_fills_a_mask(tmp_path: Path) -> None:
    """Done-when of issue 28: a BERT pretraining run, scored on its own validation split."""
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    recipe = str(REPO / "recipes/pretrain/tiny-bert-cpu.yaml")
    trained = run_cli("pretrain", recipe, "--max-steps", "30", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = tmp_path / "runs" / "tiny-bert-cpu"
    out = run_cli("eval", "--model", str(run), "--output-dir", "ev", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "validation split of" in report["data"]["text"]
    # Trained 30 steps on a 1,000-token WordPiece: far below a uniform guess's 1,000.
    assert report["metrics"]["pseudo_perplexity"] < 500
    assert report["details"]["pseudo_perplexity"]["tokens"] >= 1000
    filled = run_cli("generate", "--model", str(run), "to be or not to [MASK] .", cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr[-2000:]
    assert filled.stdout.startswith("[MASK]:")


def test_a_masked_lm_without_a_run_or_text_is_one_error_line(mlm_dir: Path, tmp_path: Path) -> None:
    out = run_cli("eval", "--model", str(mlm_dir), "--output-dir", "ev", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {mlm_dir} has no recipe.yaml: score the model on text files instead"
    ]
    assert not (tmp_path / "ev" / "metrics.json").exists()
