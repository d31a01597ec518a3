"""Perplexity: exp(mean negative log-likelihood per scored token, in nats), two ways.

- sliding window over the texts joined into one stream (the Hugging Face guide "Perplexity of
  fixed-length models"): every token but the first is scored with up to max_length of context;
- per document: each text cut into non-overlapping max_length chunks, each without context
  (what a Trainer's eval loss on packed blocks measures).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmkit.data.collate import IGNORE_INDEX
from llmkit.errors import UsageError
from llmkit.models.load import accepts_logits_to_keep


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token, nats
    tokens: int  # tokens that were predicted and scored
    method: str  # "sliding" or "per_document"
    max_length: int
    stride: int


@dataclass(frozen=True)
class _Window:
    """Tokens [begin, end) of stream `doc`, of which the last `targets` are scored."""

    doc: int
    begin: int
    end: int
    targets: int


# Input tokens per forward pass. Logits dominate memory: 4096 tokens / window 1024 = 4 windows,
# x 513 kept positions x 50,257 vocab x 4 bytes = 0.4 GB.
DEFAULT_BATCH_TOKENS = 4096


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, targets) per window, as in the Hugging Face guide "Perplexity of
    fixed-length models": windows start every `stride` tokens, each scores only the tokens the
    previous window did not reach (`targets`), with the rest of the window as context."""
    windows = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def perplexity_sliding(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    stride: int,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> Perplexity:
    """Perplexity of the texts joined by blank lines into one stream, sliding window.

    As in the Hugging Face guide, except for the token count: the guide's loss x `trg_len`
    counts the first token of the stream, which has no prediction (and its newer
    `num_valid_tokens - batch_size` drops one real target per later window). Here each window
    counts exactly the targets it scored: (stream length - 1) in all when stride < max_length.
    """
    stream = _tokenize(tokenizer, ["\n\n".join(texts)])
    return perplexity_of_ids(
        model,
        stream,
        max_length=max_length,
        stride=stride,
        method="sliding",
        batch_tokens=batch_tokens,
    )


def perplexity_per_document(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> Perplexity:
    """Perplexity with each text cut independently into non-overlapping `max_length` chunks.

    Each chunk starts without context, so this is higher than the sliding window's; it is what
    a Trainer's eval loss on packed blocks measures. It is the sliding window with stride =
    max_length, run per document.
    """
    streams = _tokenize(tokenizer, texts)
    return perplexity_of_ids(
        model,
        streams,
        max_length=max_length,
        stride=max_length,
        method="per_document",
        batch_tokens=batch_tokens,
    )


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    # verbose=False: a whole book is longer than model_max_length on purpose; we window it.
    return [list(tokenizer(t, verbose=False)["input_ids"]) for t in texts]


def perplexity_of_ids(
    model: Any,
    streams: Sequence[Sequence[int]],
    *,
    max_length: int,
    stride: int,
    method: str,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> Perplexity:
    """Perplexity of token-id streams, each windowed on its own (see `sliding_windows`).

    Packed validation blocks of a run, scored with stride = max_length >= block size, give
    exp(the Trainer's eval loss): each block is one stream whose first token is context.
    """
    if not 1 <= stride <= max_length:
        raise UsageError(f"stride must be between 1 and max_length ({max_length}), got {stride}")
    windows = [
        _Window(doc, begin, end, targets)
        for doc, ids in enumerate(streams)
        if len(ids) >= 2
        for begin, end, targets in sliding_windows(len(ids), max_length, stride)
    ]
    # A window's first token has no context inside it, so it is never predicted: with overlap
    # that only costs each stream's first token; without (stride = max_length) one per chunk.
    tokens = sum(min(w.targets, w.end - w.begin - 1) for w in windows)
    if tokens == 0:
        raise UsageError("nothing to score: every text is shorter than 2 tokens")
    nll_sum, counted = _score_windows(model, streams, windows, batch_tokens)
    assert counted == tokens, f"scored {counted} tokens, expected {tokens}"
    nll = nll_sum / tokens
    return Perplexity(math.exp(nll), nll, tokens, method, max_length, stride)


def _score_windows(
    model: Any, streams: Sequence[Sequence[int]], windows: list[_Window], batch_tokens: int
) -> tuple[float, int]:
    """Summed NLL (float64) and number of scored targets over all windows, in batches of
    equal-length windows (no padding, so no attention mask and no position-id questions)."""
    import torch

    device = next(model.parameters()).device
    keeps_logits = accepts_logits_to_keep(model)
    order = sorted(windows, key=lambda w: (w.end - w.begin, w.targets))
    nll_sum, counted = 0.0, 0
    with torch.inference_mode():
        for batch in _equal_length_batches(order, batch_tokens):
            length = batch[0].end - batch[0].begin
            ids = torch.tensor(
                [list(streams[w.doc][w.begin : w.end]) for w in batch], device=device
            )
            targets = torch.tensor([w.targets for w in batch], device=device)
            # Only the last (targets + 1) positions' logits are needed: position t predicts
            # token t + 1. Keeping 513 of 1024 halves the lm_head cost and the memory.
            keep = min(length, int(targets.max()) + 1) if keeps_logits else length
            kwargs = {"logits_to_keep": keep} if keeps_logits else {}
            # use_cache=False: nothing is generated, and building the KV cache cost ~10%.
            logits = model(input_ids=ids, use_cache=False, **kwargs).logits[:, -keep:].float()
            # Labels for the kept positions: the next token, and -100 after the last one. The
            # logits stay contiguous (no slicing copy of B x keep x vocab floats).
            labels = torch.full((len(batch), keep), IGNORE_INDEX, device=device)
            labels[:, :-1] = ids[:, length - keep + 1 :]
            # Label j sits at window position (length - keep + 1 + j); it counts if it is among
            # the window's last `targets` tokens (the rest of the window is context).
            position = torch.arange(length - keep + 1, length + 1, device=device)
            labels[position[None, :] < (length - targets)[:, None]] = IGNORE_INDEX
            nll = torch.nn.functional.cross_entropy(
                logits.view(-1, logits.size(-1)), labels.view(-1), reduction="none"
            )
            scored = labels.view(-1) != IGNORE_INDEX
            nll_sum += float(nll[scored].double().sum())
            counted += int(scored.sum())
    return nll_sum, counted


def _equal_length_batches(windows: list[_Window], batch_tokens: int) -> Iterator[list[_Window]]:
    batch: list[_Window] = []
    for w in windows:
        length = w.end - w.begin
        full = batch and (len(batch) + 1) * length > batch_tokens
        if batch and (full or batch[0].end - batch[0].begin != length):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


def model_context_length(model: Any) -> int | None:
    """Longest input the model's position embeddings allow, if its config says."""
    config = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
