"""Torch datasets and the collators that batch them: pretraining blocks (causal and masked)
and fine-tuning examples (padded or packed).

Packing (`pack=True` in the collator) concatenates a batch into one row and restarts
`position_ids` at 0 for every example. transformers turns position-id restarts into a
block-diagonal causal mask (`masking_utils.find_packed_sequence_indices`) for SDPA and eager
attention, and into varlen kernels for FlashAttention-2, so attention never crosses examples;
the first label of every example is -100 so no example is trained to predict the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

if TYPE_CHECKING:
    from llmkit.config.pretrain import PretrainRecipe
    from llmkit.data.examples import Encoded
    from llmkit.data.prep import PreparedData

# Label of a position that is not scored: torch's cross_entropy ignore_index, which
# transformers' losses and Trainer's token count use too.
IGNORE_INDEX = -100


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
    labels[:, 0] = IGNORE_INDEX
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


def pretraining_datasets(
    recipe: PretrainRecipe, data: PreparedData, tokenizer: Any
) -> tuple[Any, Any, Any]:
    """(train dataset, validation dataset, collator) over a pretraining recipe's blocks."""
    if recipe.task == "causal_lm":
        return CausalBlocks(data.train), CausalBlocks(data.validation), collate_causal
    assert data.train_lengths is not None and data.train_word_starts is not None
    assert data.validation_lengths is not None and data.validation_word_starts is not None
    collator = MaskedLMCollator(
        tokenizer=tokenizer,
        mlm_probability=recipe.masking.mlm_probability,
        whole_word_mask=recipe.masking.whole_word_mask,
        seed=recipe.train.seed,
    )
    return (
        MaskedBlocks(data.train, data.train_lengths, data.train_word_starts),
        MaskedBlocks(
            data.validation, data.validation_lengths, data.validation_word_starts, fixed_masks=True
        ),
        collator,
    )


# --- fine-tuning examples ---------------------------------------------------------------


class Examples(torch.utils.data.Dataset["Encoded"]):
    def __init__(self, items: list[Encoded]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Encoded:
        return self.items[i]


@dataclass(frozen=True)
class SftCollator:
    """Pad a batch to its longest example (right padding, mask 0, label -100), or with
    `pack` concatenate it into one row of length sum(lengths) with restarting position ids.
    `scored_logits_only`: see `keep_scored_logits` (needs a model that takes `logits_to_keep`,
    `llmkit.models.accepts_logits_to_keep`)."""

    pad_id: int
    pack: bool = False
    scored_logits_only: bool = True

    def __call__(self, batch: list[Encoded]) -> dict[str, Any]:
        out = pack_batch(batch) if self.pack else pad_batch(batch, self.pad_id)
        return keep_scored_logits(out) if self.scored_logits_only else out


def keep_scored_logits(batch: dict[str, Any]) -> dict[str, Any]:
    """Project onto the vocabulary only at positions whose next token is scored.

    The output projection is most of a small model's FLOPs (SmolLM2: 49,152 x 576 of 135M
    weights; the benchmark's 4x256 Llama: ~70%), and with completion-only loss most positions
    (system prompt, question, padding) are never scored. transformers 5 takes a boolean
    `logits_to_keep` [batch, seq] and flattens the kept hidden states before `lm_head`; the
    loss then needs the matching flat `shift_labels`. Same positions, same sum, same count
    (Trainer counts `shift_labels`), so the same loss: tested against full logits.
    """
    labels = batch["labels"]
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    keep = shifted != IGNORE_INDEX
    return {**batch, "logits_to_keep": keep, "shift_labels": shifted[keep]}


def pad_batch(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        # Label 0 is never a target (the model shifts by one); -100 keeps Trainer's count of
        # scored tokens exact, as in the packed path below.
        labels[row, :n] = torch.tensor([IGNORE_INDEX, *e.labels[1:]])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_batch(batch: list[Encoded]) -> dict[str, Any]:
    """[1, sum(lengths)]: no attention_mask (its absence lets transformers read example
    boundaries from position_ids); each example's first label is -100.

    `use_cache=False` matters: with a KV cache object present, transformers 5.23 skips the
    packed-sequence check (`_preprocess_mask_arguments`), attention silently crosses examples
    and the second example's logits moved by up to 9.2 in a tiny Llama we measured.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in batch:
        ids += e.input_ids
        labels += [IGNORE_INDEX, *e.labels[1:]]
        positions += range(len(e.input_ids))
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "use_cache": False,
    }
