"""Tokenizers: load an existing one, or train BPE / WordPiece / Unigram with `tokenizers`.

Trained tokenizers are saved as Hugging Face fast tokenizers whose special tokens match the
model family: EOS (`<|endoftext|>`, also used as BOS/PAD) for causal models;
[PAD] [UNK] [CLS] [SEP] [MASK] with a `[CLS] A [SEP]` template for BERT.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from llmkit.errors import UsageError
from llmkit.io.quiet import plain_output

TokenizerKind = Literal["bpe", "wordpiece", "unigram"]
EOS = "<|endoftext|>"
BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def build_trained_tokenizer(
    texts: Iterable[str], *, kind: str, vocab_size: int, min_frequency: int, masked: bool
) -> Any:
    """Train on `texts` and wrap as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers as tt
    from transformers import PreTrainedTokenizerFast

    specials = list(BERT_SPECIALS.values()) if masked else [EOS]
    unk = "[UNK]" if masked else None
    if kind == "bpe":
        # Byte-level BPE as in GPT-2: every byte is in the alphabet, so nothing is ever UNK.
        tok = Tokenizer(models.BPE(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer: Any = tt.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk or "[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = tt.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials if masked else [*specials, "[UNK]"],
        )
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = tt.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token=unk or EOS
        )
    else:
        raise UsageError(f"tokenizer kind '{kind}' is not one of bpe, wordpiece, unigram")
    # Its Rust progress bar leaves three blank lines in a pipe or a log.
    trainer.show_progress = not plain_output()
    tok.train_from_iterator(texts, trainer=trainer)
    if masked:
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, **BERT_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def train_tokenizer(
    sources: list[str],
    output: Path,
    *,
    kind: str,
    vocab_size: int,
    min_frequency: int,
    text_column: str = "text",
    masked: bool | None = None,
) -> Any:
    """Read and clean the sources, train, save to `output` (whole or not at all), report."""
    from llmkit.data.sources import read_corpus
    from llmkit.io.write import atomic_folder

    t0 = time.perf_counter()
    corpus = read_corpus(sources, text_column=text_column, min_chars=1, dedupe=False)
    tok = build_trained_tokenizer(
        corpus.documents,
        kind=kind,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        masked=(kind == "wordpiece") if masked is None else masked,
    )
    if output.exists():  # an empty folder (the command refuses one that holds anything)
        output.rmdir()
    atomic_folder(output, lambda tmp: tok.save_pretrained(str(tmp)))
    n_tokens = sum(len(ids) for ids in tok(corpus.documents, add_special_tokens=False)["input_ids"])
    print(
        f"trained {kind} tokenizer: {len(tok):,} tokens in the vocabulary, "
        f"{corpus.n_chars / 1e6:.1f}M chars -> {n_tokens:,} tokens "
        f"({corpus.n_chars / max(n_tokens, 1):.2f} chars/token), {time.perf_counter() - t0:.1f}s"
    )
    print(f"saved to {output}")
    return tok


def fingerprint(tokenizer: Any) -> str:
    """A hash of everything that changes token ids: vocabulary, merges, normalizer, specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = (
        backend.to_str()
        if backend is not None
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256((body + specials).encode()).hexdigest()[:16]


def check_special_tokens(tokenizer: Any, task: str, where: str) -> None:
    """The tokens the task needs must exist, or training silently learns nonsense."""
    if task == "masked_lm":
        missing = [k for k in ("mask_token", "pad_token") if getattr(tokenizer, k, None) is None]
        if missing:
            raise UsageError(
                f"{where}: masked LM needs a tokenizer with {' and '.join(missing)} "
                "(use a BERT tokenizer or tokenizer.source=train with kind=wordpiece)"
            )
    elif tokenizer.eos_token is None:
        raise UsageError(f"{where}: causal LM needs a tokenizer with an eos_token")
