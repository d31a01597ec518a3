"""Tokenizers: load an existing one, or train BPE / WordPiece / Unigram with `tokenizers`.

Trained tokenizers are saved as Hugging Face fast tokenizers whose special tokens match the
model family: EOS (`<|endoftext|>`, also used as BOS/PAD) for causal models;
[PAD] [UNK] [CLS] [SEP] [MASK] with a `[CLS] A [SEP]` template for BERT.

Every character of the training text is covered: byte-level BPE spells any character the
merges missed in its UTF-8 bytes, and the WordPiece and unigram trainers put the whole
alphabet in the vocabulary (Chinese text has thousands of characters: People's Daily
1998-01 holds 4,687 distinct ones, so a vocab_size below that grows, or for unigram is
refused with the size needed).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.errors import UsageError
from llmkit.io.quiet import plain_output

TokenizerKind = Literal["bpe", "wordpiece", "unigram"]
# Bump when what `build_trained_tokenizer` makes changes, so a tokenizer cached by older code
# is trained again (prep's cache key holds it). 2: WordPiece keeps accents, decodes CJK unspaced.
BUILD_VERSION = 2
EOS = "<|endoftext|>"
BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


# Characters that BERT's normalizer makes words of their own (CJK ideographs, as in Google's
# BERT `_is_chinese_char`), kana, and the CJK / full-width punctuation around them: Chinese and
# Japanese put no space between these, so the WordPiece decoder must not either.
CJK_NO_SPACE = (
    "\u3000-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
    "\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
)


def build_trained_tokenizer(
    texts: Iterable[str],
    *,
    kind: str,
    vocab_size: int,
    min_frequency: int,
    masked: bool,
    alphabet: set[str] | None = None,
) -> Any:
    """Train on `texts` and wrap as a `PreTrainedTokenizerFast`. `alphabet`, when given, is
    filled with every non-space character seen."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
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
        # strip_accents=False: stripping decomposes (NFD) and drops combining marks, which
        # turns Japanese が into か and Hangul syllables into loose jamo.
        tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # WordPiece puts a space before every word; BERT's normalizer made each CJK character
        # a word, so "今天" would decode as "今 天". No space before CJK characters.
        tok.decoder = decoders.Sequence(
            [decoders.WordPiece(), decoders.Replace(Regex(f"^ (?=[{CJK_NO_SPACE}])"), "")]
        )
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
    seen = alphabet if alphabet is not None else set()
    try:
        tok.train_from_iterator(_tracking(texts, seen), trainer=trainer)
    except Exception as e:  # tokenizers raises a bare Exception
        if "not large enough to contain all chars" not in str(e):
            raise
        raise UsageError(
            f"vocab_size {vocab_size:,} is smaller than the text's alphabet "
            f"({len(seen):,} distinct characters): a unigram vocabulary holds every "
            f"character, so raise vocab_size above {len(seen) + len(specials):,}, or use "
            "kind bpe (byte-level: characters it has no room for are spelled in bytes)"
        ) from None
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


def _tracking(texts: Iterable[str], alphabet: set[str]) -> Iterator[str]:
    for text in texts:
        alphabet.update(text)
        yield text
    alphabet.difference_update({c for c in alphabet if c.isspace()})


@dataclass(frozen=True)
class Coverage:
    """How a trained tokenizer covers the characters of its training text."""

    n_chars: int  # distinct non-space characters in the text
    n_unknown: int  # of which some occurrence encodes to the unknown token
    unknown: str  # up to 20 of them, for the report
    vocab_size: int  # requested
    size: int  # what the trainer made

    def lines(self, kind: str) -> list[str]:
        out = []
        if self.vocab_size < self.n_chars:
            how = (
                "the rarer characters are spelled in UTF-8 bytes (byte-level fallback)"
                if kind == "bpe"
                else f"the vocabulary holds all of them ({self.size:,} tokens)"
            )
            out.append(
                f"note: vocab_size {self.vocab_size:,} is smaller than the text's alphabet "
                f"({self.n_chars:,} distinct characters): {how}"
            )
        if self.n_unknown:
            out.append(
                f"warning: {self.n_unknown:,} of the {self.n_chars:,} characters seen encode "
                f"to the unknown token: {self.unknown}"
            )
        else:
            out.append(f"coverage: all {self.n_chars:,} characters seen encode without [UNK]")
        return out


def coverage(tok: Any, texts: list[str], alphabet: set[str], vocab_size: int) -> Coverage:
    """Which seen characters become the unknown token inside the texts themselves (a
    character may be known at a word's start and not inside one, as WordPiece's ##x)."""
    unknown: set[str] = set()
    unk = tok.unk_token_id  # causal kinds: EOS, what a unigram model gives unknown text
    encode = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    for text, e in zip(texts, encode, strict=True):
        spans = zip(e.ids, e.offsets, strict=True)
        unknown.update(text[a:b] for i, (a, b) in spans if i == unk)
    unknown = {c for piece in unknown for c in piece if not c.isspace()}
    return Coverage(
        len(alphabet), len(unknown), "".join(sorted(unknown)[:20]), vocab_size, len(tok)
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
    alphabet: set[str] = set()
    tok = build_trained_tokenizer(
        corpus.documents,
        kind=kind,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        masked=(kind == "wordpiece") if masked is None else masked,
        alphabet=alphabet,
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
    for line in coverage(tok, corpus.documents, alphabet, vocab_size).lines(kind):
        print(line)
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
