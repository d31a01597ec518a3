"""`llmkit prep`: read -> clean -> tokenize -> pack -> split, cached by content.

The cache key hashes the raw bytes of every source, the tokenizer (vocabulary, merges,
specials) and every option that changes the blocks. A second run with the same inputs only
memory-maps two .npy files (milliseconds); any change to a file, the tokenizer or an option
gives a new key, so a stale cache is never read. Entries are written to a temporary folder
and renamed into place, so a crash never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import assets
from llmkit.config.pretrain import PretrainRecipe
from llmkit.data import sources
from llmkit.data.packing import TOKEN_DTYPE, pack_causal, pack_sentences
from llmkit.data.tokenizer import build_trained_tokenizer, check_special_tokens, fingerprint
from llmkit.errors import UsageError
from llmkit.io.write import atomic_folder

CACHE_VERSION = 1
# Validation blocks are drawn with their own fixed seed, so changing train.seed never moves
# text between the splits (eval numbers stay comparable across seeds).
SPLIT_SEED = 1234
# Long documents are tokenized in chunks of ~64 KB cut at line ends, so the Rust tokenizer's
# batch encoding spreads one 200 KB play over all cores instead of one.
CHUNK_CHARS = 1 << 16
# Characters per tokenizer call (~1 s on 2 cores): the bound on how late Ctrl-C can land.
BATCH_CHARS = 1 << 22


@dataclass
class PreparedData:
    train: np.ndarray  # [n, block_size] token ids
    validation: np.ndarray
    train_lengths: np.ndarray | None  # masked LM: true length of each padded block
    validation_lengths: np.ndarray | None
    train_word_starts: np.ndarray | None  # masked LM: 1 where a token starts a word
    validation_word_starts: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None


def prep_cache_root() -> Path:
    return Path(os.environ.get("LLMKIT_PREP_CACHE") or assets.cache_home() / "prep")


def load_tokenizer_for(recipe: PretrainRecipe) -> Any:
    """The recipe's tokenizer; `train` trains one on the corpus (cached by content)."""
    from llmkit.models.load import load_tokenizer

    src = recipe.tokenizer.source
    if src is None:
        src = recipe.model.init or "embedded:gpt2"
    if src != "train":
        tok = load_tokenizer(src, trust_remote_code=recipe.model.trust_remote_code)
    else:
        tok = _trained_tokenizer(recipe)
    check_special_tokens(tok, recipe.task, "tokenizer.source")
    return tok


def _trained_tokenizer(recipe: PretrainRecipe) -> Any:
    from transformers import AutoTokenizer

    t = recipe.tokenizer
    fp = sources.fingerprint(recipe.data.sources)
    key = _hash(["tokenizer", fp, t.kind, t.vocab_size, t.min_frequency, recipe.task])
    folder = prep_cache_root() / "tokenizers" / key
    if not (folder / "tokenizer_config.json").exists():
        t0 = time.perf_counter()
        corpus = _read(recipe)
        tok = build_trained_tokenizer(
            corpus.documents,
            kind=t.kind,
            vocab_size=t.vocab_size,
            min_frequency=t.min_frequency,
            masked=recipe.task == "masked_lm",
        )
        atomic_folder(folder, lambda tmp: tok.save_pretrained(str(tmp)))
        print(
            f"trained {t.kind} tokenizer ({len(tok):,} tokens) in {time.perf_counter() - t0:.1f}s"
        )
    return AutoTokenizer.from_pretrained(str(folder))


def prepare(recipe: PretrainRecipe, tokenizer: Any, *, verbose: bool = True) -> PreparedData:
    """Blocks for the recipe, from the cache when the content hash matches."""
    d = recipe.data
    val_is_file = isinstance(d.validation, str)
    key = _hash(
        [
            CACHE_VERSION,
            recipe.task,
            sources.fingerprint(d.sources),
            sources.fingerprint([str(d.validation)]) if val_is_file else d.validation,
            fingerprint(tokenizer),
            d.block_size,
            d.min_chars,
            d.dedupe,
            d.text_column,
        ]
    )
    folder = prep_cache_root() / key
    t0 = time.perf_counter()
    data = _load_cached(folder)
    if data is not None:
        if verbose:
            print(
                f"prep: cache hit {folder} ({time.perf_counter() - t0:.2f}s): "
                f"{data.meta['n_tokens']:,} tokens, {len(data.train):,} train + "
                f"{len(data.validation):,} validation blocks of {d.block_size}"
            )
        return _cap_eval(data, d.max_eval_blocks)

    timings: dict[str, float] = {}
    corpus = _read(recipe)
    timings["read+clean"] = time.perf_counter() - t0
    arrays, n_tokens, t_tok, t_pack = _tokenize_and_pack(recipe, tokenizer, corpus.documents)
    timings["tokenize"], timings["pack"] = t_tok, t_pack

    t1 = time.perf_counter()
    if val_is_file:
        val_corpus = sources.read_corpus(
            [str(d.validation)], text_column=d.text_column, min_chars=d.min_chars, dedupe=d.dedupe
        )
        val_arrays, _, _, _ = _tokenize_and_pack(recipe, tokenizer, val_corpus.documents)
        train_arrays = arrays
    else:
        train_arrays, val_arrays = _split(arrays, float(d.validation))
    timings["split"] = time.perf_counter() - t1
    if len(train_arrays["blocks"]) == 0 or len(val_arrays["blocks"]) == 0:
        raise UsageError(
            f"data: the corpus ({n_tokens:,} tokens) is too short for one training and one "
            f"validation block of data.block_size={d.block_size}; add text or lower block_size"
        )
    meta = {
        "task": recipe.task,
        "n_documents": len(corpus.documents),
        "n_lines_read": corpus.n_lines_read,
        "n_lines_kept": corpus.n_lines_kept,
        "n_chars": corpus.n_chars,
        "n_tokens": n_tokens,
        "block_size": d.block_size,
        "n_train_blocks": len(train_arrays["blocks"]),
        "n_validation_blocks": len(val_arrays["blocks"]),
        "vocab_size": len(tokenizer),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }

    def write(tmp: Path) -> None:
        for split, arrs in (("train", train_arrays), ("validation", val_arrays)):
            for name, arr in arrs.items():
                np.save(tmp / f"{split}_{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    atomic_folder(folder, write)
    if verbose:
        phases = " | ".join(f"{k} {v:.2f}s" for k, v in timings.items())
        print(
            f"prep: {len(corpus.documents):,} documents, {corpus.n_lines_kept:,}/"
            f"{corpus.n_lines_read:,} lines kept, {n_tokens:,} tokens -> "
            f"{meta['n_train_blocks']:,} train + {meta['n_validation_blocks']:,} validation "
            f"blocks of {d.block_size} ({phases})"
        )
        print(f"prep: cached in {folder}")
    return _cap_eval(_load(folder), d.max_eval_blocks)


def _read(recipe: PretrainRecipe) -> sources.Corpus:
    d = recipe.data
    return sources.read_corpus(
        d.sources, text_column=d.text_column, min_chars=d.min_chars, dedupe=d.dedupe
    )


def _tokenize_and_pack(
    recipe: PretrainRecipe, tokenizer: Any, documents: list[str]
) -> tuple[dict[str, np.ndarray], int, float, float]:
    d = recipe.data
    t0 = time.perf_counter()
    if recipe.task == "causal_lm":
        chunks, owner = _chunk_documents(documents)
        ids = _encode(tokenizer, chunks)
        docs: list[list[int]] = [[] for _ in documents]
        for i, chunk_ids in zip(owner, ids, strict=True):
            docs[i].extend(chunk_ids)
        t_tok = time.perf_counter() - t0
        t1 = time.perf_counter()
        blocks = pack_causal(docs, eos_id=tokenizer.eos_token_id, block_size=d.block_size)
        return {"blocks": blocks}, sum(map(len, docs)), t_tok, time.perf_counter() - t1

    # Masked LM: sentences (lines) are the unit of packing; remember where words start.
    lines = [doc.split("\n") for doc in documents]
    flat = [ln for doc in lines for ln in doc]
    encodings = _encode_with_words(tokenizer, flat)
    t_tok = time.perf_counter() - t0
    t1 = time.perf_counter()
    sentence_ids, it = [], iter(encodings)
    for doc in lines:
        sentence_ids.append([next(it) for _ in doc])
    # Token ids and word-start flags are packed the same way, so they stay aligned.
    blocks, lengths = pack_sentences(
        [[ids for ids, _ in doc] for doc in sentence_ids],
        cls_id=tokenizer.cls_token_id,
        sep_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id,
        block_size=d.block_size,
    )
    starts, _ = pack_sentences(
        [[st for _, st in doc] for doc in sentence_ids],
        cls_id=1,
        sep_id=1,
        pad_id=1,
        block_size=d.block_size,
    )
    n_tokens = sum(len(ids) for ids, _ in encodings)
    arrays = {"blocks": blocks, "lengths": lengths, "word_starts": starts.astype(np.uint8)}
    return arrays, n_tokens, t_tok, time.perf_counter() - t1


def _chunk_documents(documents: list[str]) -> tuple[list[str], list[int]]:
    chunks: list[str] = []
    owner: list[int] = []
    for i, doc in enumerate(documents):
        start = 0
        while start < len(doc):
            end = doc.find("\n", start + CHUNK_CHARS)
            end = len(doc) if end == -1 else end + 1
            chunks.append(doc[start:end])
            owner.append(i)
            start = end
    return chunks, owner


def _batches(texts: list[str]) -> Iterator[list[str]]:
    """Runs of texts of ~BATCH_CHARS in all. One Rust batch call cannot be interrupted, so
    Ctrl-C waits for the batch in flight: ~1 s, not the whole corpus (17 s seen)."""
    start = size = 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= BATCH_CHARS:
            yield texts[start : i + 1]
            start, size = i + 1, 0
    if start < len(texts):
        yield texts[start:]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return list(tokenizer(texts, add_special_tokens=False)["input_ids"])
    # encode_batch_fast skips offset tracking: ~1.5x faster than tokenizer(...) on 2 cores.
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for batch in _batches(texts) for e in encode(batch, add_special_tokens=False)]


def _encode_with_words(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    backend = tokenizer.backend_tokenizer
    out = []
    encodings = (
        e
        for batch in _batches(texts)
        for e in backend.encode_batch(batch, add_special_tokens=False)
    )
    for e in encodings:
        prev: int | None = None
        starts = []
        for w in e.word_ids:
            starts.append(int(w is None or w != prev))
            prev = w
        out.append((e.ids, starts))
    return out


def _split(
    arrays: dict[str, np.ndarray], fraction: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    n = len(arrays["blocks"])
    n_val = max(1, round(n * fraction)) if n > 1 else 0
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (
        {k: v[train_idx] for k, v in arrays.items()},
        {k: v[val_idx] for k, v in arrays.items()},
    )


def _load_cached(folder: Path) -> PreparedData | None:
    """A cache entry, or None when there is none or it is damaged (a file cut short, deleted
    or edited): a damaged entry is removed, with a warning, and prepared again."""
    if not folder.exists():
        return None
    try:
        data = _load(folder)
        if data.meta["n_train_blocks"] != len(data.train):
            raise ValueError("block count differs from meta.json")
        return data
    except (OSError, ValueError, EOFError, KeyError, AssertionError) as e:
        print(f"warning: prep cache entry {folder} is damaged ({e}); preparing it again")
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _load(folder: Path) -> PreparedData:
    def arr(name: str) -> np.ndarray | None:
        f = folder / f"{name}.npy"
        return np.load(f, mmap_mode="r") if f.exists() else None

    train, val = arr("train_blocks"), arr("validation_blocks")
    assert train is not None and val is not None
    return PreparedData(
        train=train,
        validation=val,
        train_lengths=arr("train_lengths"),
        validation_lengths=arr("validation_lengths"),
        train_word_starts=arr("train_word_starts"),
        validation_word_starts=arr("validation_word_starts"),
        meta=json.loads((folder / "meta.json").read_text()),
        cache_dir=folder,
    )


def _cap_eval(data: PreparedData, cap: int | None) -> PreparedData:
    if cap is None or len(data.validation) <= cap:
        return data
    data.validation = data.validation[:cap]
    if data.validation_lengths is not None:
        data.validation_lengths = data.validation_lengths[:cap]
    if data.validation_word_starts is not None:
        data.validation_word_starts = data.validation_word_starts[:cap]
    return data


def _hash(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def load_prepared(recipe: PretrainRecipe) -> PreparedData:
    """Blocks of a recipe (e.g. a run's recipe.yaml), preparing them if not cached."""
    return prepare(recipe, load_tokenizer_for(recipe), verbose=False)


__all__ = ["TOKEN_DTYPE", "PreparedData", "load_prepared", "load_tokenizer_for", "prepare"]
