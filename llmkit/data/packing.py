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


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 when every id fits (GPT-2's 50,257 do: half the disk and page cache of uint32)."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


class SentencePacker:
    """`pack_sentences` fed one piece at a time (streaming prep): a block goes on across
    consecutive pieces of one document and ends at the document's end, as in
    `pack_sentences`. Each item is (token ids, word-start flags) of one sentence."""

    def __init__(self, block_size: int, carry: list[list[int]] | None = None) -> None:
        self.room = block_size - 2  # [CLS] and [SEP]
        self.ids: list[int] = carry[0] if carry else []
        self.starts: list[int] = carry[1] if carry else []

    def carry(self) -> list[list[int]]:
        """The block under way, saved with a shard so a resumed prep goes on with it."""
        return [self.ids, self.starts]

    def add(
        self, sentences: list[tuple[list[int], list[int]]], *, fresh: bool, doc_end: bool
    ) -> list[tuple[list[int], list[int]]]:
        """Finished block bodies. `fresh`: the piece does not continue the previous one."""
        out: list[tuple[list[int], list[int]]] = []
        if fresh:
            self._flush(out)
        for ids, starts in sentences:
            for at in range(0, len(ids), self.room):
                piece = ids[at : at + self.room]
                if self.ids and len(self.ids) + len(piece) > self.room:
                    self._flush(out)
                self.ids.extend(piece)
                self.starts.extend(starts[at : at + self.room])
        if doc_end:
            self._flush(out)
        return out

    def _flush(self, out: list[tuple[list[int], list[int]]]) -> None:
        if self.ids:
            out.append((self.ids, self.starts))
            self.ids, self.starts = [], []


def sentence_rows(
    bodies: list[tuple[list[int], list[int]]],
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    block_size: int,
    dtype: type[np.unsignedinteger],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blocks, lengths, word_starts) rows for block bodies, laid out as `pack_sentences`."""
    n = len(bodies)
    blocks = np.full((n, block_size), pad_id, dtype=dtype)
    starts = np.ones((n, block_size), dtype=np.uint8)
    lengths = np.empty(n, dtype=np.int32)
    for i, (ids, flags) in enumerate(bodies):
        blocks[i, 0], blocks[i, len(ids) + 1] = cls_id, sep_id
        blocks[i, 1 : len(ids) + 1] = ids
        starts[i, 1 : len(ids) + 1] = flags
        lengths[i] = len(ids) + 2
    return blocks, lengths, starts
