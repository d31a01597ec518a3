"""`llmkit embed`: unit-length sentence vectors from the embedded all-MiniLM-L6-v2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli

from llmkit.commands.embed import run_embed
from llmkit.config.requests import EmbedRequest
from llmkit.inference.embed import embed_texts
from llmkit.models.load import load_encoder

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming an acoustic guitar.",  # paraphrase of 0
    "The stock market fell sharply on Monday.",  # unrelated to 0
    "How do I bake sourdough bread at home?",
]


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any, int]:
    return load_encoder("embedded:minilm")


def test_cli_writes_unit_vectors_that_know_paraphrases(tmp_path: Path) -> None:
    src = tmp_path / "sentences.txt"
    src.write_text("\n".join(SENTENCES[:2]) + "\n\n" + "\n".join(SENTENCES[2:]) + "\n")
    out = tmp_path / "vectors.npy"
    proc = run_cli("embed", str(src), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "embedded 4 texts (dim 384)" in proc.stderr

    vectors = np.load(out)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32  # the blank line is skipped
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = vectors @ vectors.T  # unit vectors: dot product = cosine
    # Measured: guitar/guitar 0.69, guitar/stocks -0.06, guitar/bread 0.05.
    assert cosine[0, 1] > 0.6
    assert cosine[0, 2] < 0.2 and cosine[0, 3] < 0.2


def test_jsonl_output_holds_text_and_its_vector(
    tmp_path: Path, minilm: tuple[Any, Any, int]
) -> None:
    src = tmp_path / "rows.jsonl"
    src.write_text(
        "".join(json.dumps({"id": i, "body": s}) + "\n" for i, s in enumerate(SENTENCES))
    )
    run_embed(EmbedRequest(file=src, output=tmp_path / "v.jsonl", field="body"))
    lines = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [line["text"] for line in lines] == SENTENCES
    model, tok, max_tokens = minilm
    expected = embed_texts(model, tok, SENTENCES, max_tokens=max_tokens)
    np.testing.assert_allclose(np.array([line["embedding"] for line in lines]), expected, atol=1e-6)


def test_batching_and_padding_do_not_change_vectors(minilm: tuple[Any, Any, int]) -> None:
    model, tok, max_tokens = minilm
    alone = embed_texts(model, tok, ["Hi there"], max_tokens=max_tokens)
    # In a batch with a 30-word sentence, "Hi there" gets ~30 padding tokens: masked out.
    long = " ".join(["word"] * 30)
    batched = embed_texts(model, tok, [long, "Hi there"], batch_size=2, max_tokens=max_tokens)
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)


def test_truncates_at_the_models_256_tokens(minilm: tuple[Any, Any, int]) -> None:
    model, tok, max_tokens = minilm
    assert max_tokens == 256  # from sentence_bert_config.json, what the model was trained on
    head = " ".join(["alpha"] * 300)
    vectors = embed_texts(model, tok, [head, head + " omega" * 50], max_tokens=max_tokens)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # the tail never got in


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["in.txt", "--output", "v.csv"], "error: --output v.csv: use a .npy or .jsonl file name"),
        (["nope.txt", "--output", "v.npy"], "error: file nope.txt does not exist"),
    ],
)
def test_cli_bad_usage_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "in.txt").write_text("hello\n")
    proc = run_cli("embed", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message
