"""`llmkit prep`: stream -> clean -> tokenize -> split -> pack into shards, cached by content.

The cache key hashes the raw bytes of every source, the tokenizer (vocabulary, merges,
specials) and every option that changes the blocks. A second run with the same inputs only
memory-maps the .npy files (milliseconds); any change to a file, the tokenizer or an option
gives a new key, so a stale cache is never read. A new entry is streamed into
`.<key>.partial/` shard by shard (`llmkit.data.pipeline`, `llmkit.data.shards`) and renamed
into place when whole: a crash never leaves half an entry, and a rerun resumes the partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import assets
from llmkit.config.pretrain import PretrainRecipe
from llmkit.data import pipeline, shards, sources, stream, words
from llmkit.data.packing import TOKEN_DTYPE
from llmkit.data.tokenizer import (
    BUILD_VERSION,
    Coverage,
    build_trained_tokenizer,
    check_special_tokens,
    fingerprint,
)
from llmkit.errors import UsageError
from llmkit.io.write import atomic_folder, write_json

# 2: streamed shards, uint16 ids when the vocabulary fits, validation by a hash per piece.
# 3: lines over 2 KB cut into pieces by size, rows counted as rows (a partial entry of 2
#    would resume with other piece boundaries and counts).
CACHE_VERSION = 3


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


def writable_cache_root() -> Path:
    """The prep cache folder, made if missing, or one line saying why it cannot be written
    (a read-only parent gave a PermissionError traceback from the first mkdir)."""
    root = prep_cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".llmkit-probe-"):
            pass
    except OSError as e:
        where = "LLMKIT_PREP_CACHE" if os.environ.get("LLMKIT_PREP_CACHE") else "LLMKIT_CACHE"
        raise UsageError(
            f"cannot write the prep cache {root}: {e.strerror or e}; set {where} to a "
            "writable folder"
        ) from None
    return root


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
    key = _hash(
        ["tokenizer", fp, t.kind, t.vocab_size, t.min_frequency, recipe.task, BUILD_VERSION]
    )
    folder = prep_cache_root() / "tokenizers" / key
    if not (folder / "tokenizer_config.json").exists():
        writable_cache_root()  # a read-only cache serves what it holds, refuses new entries
        t0 = time.perf_counter()
        d = recipe.data
        seen = stream.SeenHashes() if d.dedupe else None
        texts = (
            piece.text
            for piece in stream.pieces(
                sources.expand_sources(d.sources),
                (0, 0),
                text_column=d.text_column,
                min_chars=d.min_chars,
                seen=seen,
            )
            if piece.lines
        )
        alphabet: set[str] = set()
        tok = build_trained_tokenizer(
            texts,
            kind=t.kind,
            vocab_size=t.vocab_size,
            min_frequency=t.min_frequency,
            masked=recipe.task == "masked_lm",
            alphabet=alphabet,
        )
        atomic_folder(folder, lambda tmp: tok.save_pretrained(str(tmp)))
        print(
            f"trained {t.kind} tokenizer ({len(tok):,} tokens, {len(alphabet):,} distinct "
            f"characters in the text) in {time.perf_counter() - t0:.1f}s"
        )
        if t.vocab_size < len(alphabet):  # Chinese: thousands of characters
            print(Coverage(len(alphabet), 0, "", t.vocab_size, len(tok)).lines(t.kind)[0])
    return AutoTokenizer.from_pretrained(str(folder))


def prepare(recipe: PretrainRecipe, tokenizer: Any, *, verbose: bool = True) -> PreparedData:
    """Blocks for the recipe, from the cache when the content hash matches; otherwise
    streamed into a new entry (resuming a killed run's partial entry)."""
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
            # Only when on, so the keys of every other entry stay as they were.
            *([words.SEGMENTER] if _chinese_words(recipe) else []),
        ]
    )
    folder = prep_cache_root() / key
    t0 = time.perf_counter()
    data = _load_cached(folder)
    if data is None:
        writable_cache_root()
        work = shards.work_folder(folder)
        with shards.locked(work):
            data = _load_cached(folder)  # a twin process may have finished it meanwhile
            if data is None:
                resumed = (work / shards.MANIFEST).exists()
                if resumed and verbose:
                    print(f"prep: resuming the partial entry {work}")
                try:
                    meta = _build(recipe, tokenizer, folder, progress=verbose)
                except shards.Damaged as e:
                    aside = shards.set_aside(work)
                    print(
                        f"warning: prep partial entry {work} is damaged ({e}); its files are "
                        f"set aside in {aside}; preparing it again"
                    )
                    meta = _build(recipe, tokenizer, folder, progress=verbose)
                write_json(work / "meta.json", meta)
                shards.publish(work, folder)
                if verbose:
                    _report(meta, folder)
                return _cap_eval(_load(folder), d.max_eval_blocks)
        if work.exists() and folder.exists():
            shutil.rmtree(work, ignore_errors=True)  # the empty folder our lock made
    if verbose:
        print(
            f"prep: cache hit {folder} ({time.perf_counter() - t0:.2f}s): "
            f"{data.meta['n_tokens']:,} tokens, {len(data.train):,} train + "
            f"{len(data.validation):,} validation blocks of {d.block_size}"
        )
    return _cap_eval(data, d.max_eval_blocks)


def _build(
    recipe: PretrainRecipe, tokenizer: Any, folder: Path, *, progress: bool
) -> dict[str, Any]:
    d = recipe.data
    phases = [
        pipeline.Phase(
            sources.expand_sources(d.sources),
            1.0 if isinstance(d.validation, str) else float(d.validation),
        )
    ]
    if isinstance(d.validation, str):
        phases.append(pipeline.Phase(sources.expand_sources([d.validation]), 1.0))
        phases[0] = pipeline.Phase(phases[0].paths, 0.0)
    opt = pipeline.Options(
        recipe.task, d.block_size, d.text_column, d.min_chars, d.dedupe, _chinese_words(recipe)
    )
    state = pipeline.build(folder, phases, tokenizer, opt, progress=progress)
    counts = state["counts"]
    if counts["n_lines_kept"] + counts["n_rows_kept"] == 0:
        shutil.rmtree(shards.work_folder(folder), ignore_errors=True)  # ours, and useless
        raise UsageError(
            f"data.sources: the corpus is empty after cleaning ({kept_counts(counts)}; "
            f"min_chars={d.min_chars})"
        )
    if state["n_train_blocks"] == 0 or state["n_validation_blocks"] == 0:
        shutil.rmtree(shards.work_folder(folder), ignore_errors=True)
        raise UsageError(
            f"data: the corpus ({counts['n_tokens']:,} tokens) is too short for one training "
            f"and one validation block of data.block_size={d.block_size}; add text or lower "
            "block_size"
        )
    return {
        "task": recipe.task,
        **counts,
        "block_size": d.block_size,
        "n_train_blocks": state["n_train_blocks"],
        "n_validation_blocks": state["n_validation_blocks"],
        "vocab_size": len(tokenizer),
        "split": "validation: pieces (rows, ~1 KB of a text file) whose xxh3 hash < share",
        "seconds": {k: round(v, 3) for k, v in state["seconds"].items()},
    }


def _chinese_words(recipe: PretrainRecipe) -> bool:
    """Whole-word masking finds Chinese words with a segmenter (Chinese-BERT-wwm)."""
    return recipe.task == "masked_lm" and recipe.masking.whole_word_mask


def _report(meta: dict[str, Any], folder: Path) -> None:
    seconds = meta["seconds"]
    phases = " | ".join(f"{k} {v:.2f}s" for k, v in seconds.items() if k != "total")
    rate = meta["n_tokens"] / max(seconds["total"], 1e-9)
    print(
        f"prep: {meta['n_documents']:,} documents, {kept_counts(meta)}, "
        f"{meta['n_chars']:,} characters, {meta['n_tokens']:,} tokens -> "
        f"{meta['n_train_blocks']:,} train + {meta['n_validation_blocks']:,} validation "
        f"blocks of {meta['block_size']} ({phases}; {rate:,.0f} tokens/s)"
    )
    print(f"prep: cached in {folder}")


def kept_counts(counts: dict[str, Any]) -> str:
    """'38/40 rows kept (2 null, 1 too short or repeated), 80/100 lines kept (20 too short
    or repeated)': lines of text files and rows of tables, each part adding up to its read
    count."""
    parts = []
    for unit in ("lines", "rows"):
        read, kept = counts.get(f"n_{unit}_read", 0), counts.get(f"n_{unit}_kept", 0)
        if not read and unit == "rows":
            continue
        null = counts.get("n_rows_null", 0) if unit == "rows" else 0
        dropped = [f"{null:,} null"] if null else []
        if read - kept - null:
            dropped.append(f"{read - kept - null:,} too short or repeated")
        why = f" ({', '.join(dropped)})" if dropped else ""
        if read or not counts.get("n_rows_read", 0):
            parts.append(f"{kept:,}/{read:,} {unit} kept{why}")
    return ", ".join(parts)


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
