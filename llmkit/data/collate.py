"""Torch datasets over the cached block arrays, and the collators that batch them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling


class CausalBlocks(torch.utils.data.Dataset):
    """Fixed-size blocks; `collate_causal` makes the labels."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.blocks[i].astype(np.int64))}


def collate_causal(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack blocks. Not `DataCollatorForLanguageModeling(mlm=False)`: with GPT-2's
    pad == eos it would set the EOS between documents to -100 and never learn to end one.

    Label 0 of each block is set to -100. The model drops it anyway (token t predicts label
    t+1), but Trainer divides the summed loss by the number of labels that are not -100, and
    transformers 5.23 skips label 0 in that count only for models whose `loss_type` is
    "ForCausalLM" (GPT-2's is None): with all 64 counted and 63 scored, every loss it reported
    was 63/64 of the true mean (10.478 instead of 10.644 on a 64-token block).
    """
    ids = torch.stack([e["input_ids"] for e in examples])
    labels = ids.clone()
    labels[:, 0] = -100
    return {"input_ids": ids, "labels": labels}


class MaskedBlocks(torch.utils.data.Dataset):
    """Sentence-packed blocks trimmed to their true length (the collator pads per batch).

    `fixed_masks=True` (validation) makes the collator draw the same masks for a block at
    every evaluation, so eval perplexity moves only when the model does.
    """

    def __init__(
        self,
        blocks: np.ndarray,
        lengths: np.ndarray,
        word_starts: np.ndarray,
        *,
        fixed_masks: bool = False,
    ) -> None:
        self.blocks, self.lengths, self.word_starts = blocks, lengths, word_starts
        self.fixed_masks = fixed_masks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = int(self.lengths[i])
        item: dict[str, Any] = {
            "input_ids": self.blocks[i, :n],
            "word_starts": self.word_starts[i, :n],
        }
        if self.fixed_masks:
            item["mask_seed"] = i
        return item


class MaskedLMCollator(DataCollatorForLanguageModeling):
    """Pads to the longest block in the batch, then masks with the parent's rules
    (80% [MASK] / 10% random / 10% unchanged of `mlm_probability` of the tokens).

    Whole-word masking in transformers 5 finds words from `offset_mapping`; we store a
    word-start flag per token instead and synthesise offsets from it: a token that starts a
    word begins one character after the previous one ends, so the parent sees a gap.
    """

    def torch_call(self, examples: list[Any]) -> dict[str, Any]:
        tok = self.tokenizer
        width = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(examples)
        ids = np.full((n, width), tok.pad_token_id, dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        starts = np.ones((n, width), dtype=np.int64)
        for row, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[row, :k] = e["input_ids"]
            attention[row, :k] = 1
            starts[row, :k] = e["word_starts"]
        special = np.isin(ids, tok.all_special_ids).astype(np.int64)
        offsets = None
        if self.whole_word_mask:
            # end_i = i + (number of word starts up to i); start_i = end_i - 1.
            ends = np.arange(width)[None, :] + np.cumsum(starts, axis=1)
            offsets = torch.from_numpy(np.stack([ends - 1, ends], axis=-1))
        train_generator = self.generator
        if "mask_seed" in examples[0]:
            # Validation: the batch's block indices seed its masks.
            seed = hash(tuple(int(e["mask_seed"]) for e in examples)) % (2**63)
            self.generator = torch.Generator().manual_seed(seed)
        try:
            input_ids, labels = self.torch_mask_tokens(
                torch.from_numpy(ids),
                special_tokens_mask=torch.from_numpy(special),
                offset_mapping=offsets,
            )
        finally:
            self.generator = train_generator
        return {
            "input_ids": input_ids,
            "attention_mask": torch.from_numpy(attention),
            "labels": labels,
        }
