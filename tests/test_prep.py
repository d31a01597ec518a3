"""Data prep: reading, cleaning, packing, tokenizer training, and the content-keyed cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli

from llmkit.data.packing import pack_causal, pack_sentences
from llmkit.data.sources import read_corpus
from llmkit.errors import UsageError


def test_cleaning_strips_drops_short_and_duplicate_lines(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("  To be, or not to be  \n\nAy\nTo be, or not to be\nExit.\n")
    corpus = read_corpus([str(tmp_path / "a.txt")], text_column="text", min_chars=3, dedupe=True)
    assert corpus.documents == ["To be, or not to be\nExit."]
    assert (corpus.n_lines_read, corpus.n_lines_kept) == (5, 2)


def test_jsonl_and_csv_rows_are_documents(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"body": "first row"}\n\n{"body": "second row"}\n')
    (tmp_path / "b.csv").write_text('id,body\n1,"third, with comma"\n')
    corpus = read_corpus([str(tmp_path)], text_column="body", min_chars=1, dedupe=True)
    assert corpus.documents == ["first row", "second row", "third, with comma"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "bad.jsonl:2: malformed JSON"),
        ("cols.jsonl", b'{"body": "x"}\n', "cols.jsonl:1: no field 'text' (fields: body)"),
        ("cols.csv", b"body\nx\n", "cols.csv:2: no field 'text' (fields: body)"),
        ("latin.txt", b"fine line\ncaf\xe9\n", "latin.txt:2: not valid UTF-8"),
        ("empty.txt", b"\n  \n", "the corpus is empty after cleaning"),
    ],
)
def test_bad_sources_name_file_and_line(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_corpus([str(tmp_path / name)], text_column="text", min_chars=1, dedupe=True)


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"file nope\.txt does not exist"):
        read_corpus(["nope.txt"], text_column="text", min_chars=1, dedupe=True)


def test_pack_causal_separates_documents_with_eos_and_drops_the_tail() -> None:
    blocks = pack_causal([[1, 2, 3], [4, 5], [6]], eos_id=0, block_size=4)
    # stream: 1 2 3 0 4 5 0 6 0 -> two full blocks, tail [0] dropped
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6]]


def test_pack_sentences_never_crosses_documents_and_splits_only_long_sentences() -> None:
    docs = [[[1, 2], [3, 4], [5, 6, 7, 8, 9, 10, 11]], [[20, 21]]]
    blocks, lengths = pack_sentences(docs, cls_id=101, sep_id=102, pad_id=0, block_size=6)
    rows = [b[:n].tolist() for b, n in zip(blocks, lengths, strict=True)]
    assert rows == [
        [101, 1, 2, 3, 4, 102],
        [101, 5, 6, 7, 8, 102],
        [101, 9, 10, 11, 102],
        [101, 20, 21, 102],  # the second document starts its own block
    ]
    assert blocks[3].tolist()[4:] == [0, 0]


def test_second_prep_reads_the_cache_and_a_changed_file_misses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for f in (REPO / "tests" / "data").glob("*.txt"):
        (data / f.name).write_text(f.read_text())
    args = ["prep", str(REPO / "recipes/pretrain/tiny-cpu.yaml"), "--set", f"data.sources=[{data}]"]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "cache hit" not in first.stdout
    assert (
        "tokens ->" in first.stdout and "read+clean" in first.stdout and "tokenize" in first.stdout
    )

    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0
    assert "prep: cache hit" in second.stdout
    cache_dir = Path(second.stdout.split("cache hit ")[1].split(" ")[0])
    meta = json.loads((cache_dir / "meta.json").read_text())
    train = np.load(cache_dir / "train_blocks.npy")
    assert train.shape == (meta["n_train_blocks"], 64)
    # ~38 KB of Shakespeare is ~10k GPT-2 tokens
    assert 8_000 < meta["n_tokens"] < 14_000

    with (data / "hamlet.txt").open("a") as f:
        f.write("A line that was not there before.\n")
    third = run_cli(*args, cwd=tmp_path)
    assert "cache hit" not in third.stdout


def test_corpus_shorter_than_a_block_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_text("Only a few words here.\n")
    out = run_cli(
        "prep",
        str(REPO / "recipes/pretrain/tiny-cpu.yaml"),
        "--set",
        f"data.sources=[{tmp_path / 'tiny.txt'}]",
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "too short for one training and one validation block of data.block_size=64" in out.stderr


@pytest.mark.parametrize(
    ("kind", "specials"),
    [
        ("wordpiece", ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"]),
        ("bpe", ["<|endoftext|>"]),
        ("unigram", ["<|endoftext|>"]),
    ],
)
def test_prep_tokenizer_trains_and_saves_a_fast_tokenizer(
    tmp_path: Path, kind: str, specials: list[str]
) -> None:
    out_dir = tmp_path / "tok"
    out = run_cli(
        "prep",
        "tokenizer",
        str(REPO / "tests" / "data"),
        "--output",
        str(out_dir),
        "--kind",
        kind,
        "--vocab-size",
        "600",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert f"trained {kind} tokenizer" in out.stdout
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    assert tok.is_fast
    assert 300 < len(tok) <= 600
    assert set(specials) <= set(tok.all_special_tokens)
    text = "Something is rotten in the state of Denmark."
    ids = tok(text)["input_ids"]
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.lower().replace(" ", "") == text.lower().replace(" ", "")
    if kind == "wordpiece":  # BERT template: [CLS] ... [SEP]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
