"""Packing token streams into fixed-size training blocks.

Causal LM (as HF `run_clm.py`'s `group_texts`): documents are joined with EOS between them
and cut into `block_size` blocks; the tail shorter than a block is dropped. No padding, so
every position is a training target.

Masked LM (as BERT's pretraining data): consecutive sentences (lines) of one document are
packed greedily into `[CLS] s1 s2 ... [SEP]` blocks of at most `block_size` tokens; a
sentence is split only when it alone is longer than a block, and blocks never cross a
document boundary. Blocks are stored right-padded with their true lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# uint32 halves the cache size against int64 and holds any vocabulary (< 4.29e9 ids).
TOKEN_DTYPE = np.uint32


def pack_causal(docs: Sequence[Sequence[int]], *, eos_id: int, block_size: int) -> np.ndarray:
    """[n_blocks, block_size] array of `doc0 EOS doc1 EOS ...` cut into blocks."""
    total = sum(len(d) + 1 for d in docs)
    stream = np.empty(total, dtype=TOKEN_DTYPE)
    pos = 0
    for d in docs:
        stream[pos : pos + len(d)] = d
        stream[pos + len(d)] = eos_id
        pos += len(d) + 1
    n_blocks = total // block_size
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size)


def pack_sentences(
    docs: Sequence[Sequence[Sequence[int]]],
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    block_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(blocks [n, block_size] right-padded with pad_id, lengths [n]) for masked LM."""
    room = block_size - 2  # [CLS] and [SEP]
    blocks: list[list[int]] = []
    for sentences in docs:
        current: list[int] = []
        for sent in sentences:
            # A sentence longer than a block is the only thing ever split.
            for start in range(0, len(sent), room):
                piece = sent[start : start + room]
                if current and len(current) + len(piece) > room:
                    blocks.append(current)
                    current = []
                current.extend(piece)
        if current:
            blocks.append(current)
    out = np.full((len(blocks), block_size), pad_id, dtype=TOKEN_DTYPE)
    lengths = np.empty(len(blocks), dtype=np.int32)
    for i, body in enumerate(blocks):
        out[i, 0] = cls_id
        out[i, 1 : len(body) + 1] = body
        out[i, len(body) + 1] = sep_id
        lengths[i] = len(body) + 2
    return out, lengths
