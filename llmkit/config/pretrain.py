"""The typed pretraining recipe (`llmkit pretrain`, `llmkit prep`): one pydantic model per
concern, one documented field per knob.

A recipe YAML maps onto `PretrainRecipe`; unknown keys and wrong types are errors, and
cross-field rules live next to the fields they relate (`_check_*` validators), so a bad recipe
fails before any data is read or model built.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from llmkit.config.base import Section
from llmkit.config.recipe import RecipeBase, TrainConfig, ValidationSplit

Task = Literal["causal_lm", "masked_lm"]
Arch = Literal["gpt2", "llama", "bert", "lstm"]
CAUSAL_ARCHS: tuple[Arch, ...] = ("gpt2", "llama", "lstm")


class DataConfig(Section):
    """Where the text comes from and how it is cleaned, split and packed."""

    sources: list[str] = Field(
        default_factory=lambda: ["embedded:shakespeare"],
        min_length=1,
        description="Text files, globs or folders (.txt/.jsonl/.json/.csv), "
        "`embedded:shakespeare`, or `hub:NAME` for a Hugging Face dataset (needs a hub).",
    )
    text_column: str = Field("text", description="Column holding the text in .jsonl/.csv/hub rows.")
    validation: ValidationSplit = Field(
        0.05,
        description="Held-out share of pieces (rows, ~1 KB of a text file; 0 < x < 1) chosen by "
        "a hash of their text, or a file used as the validation set.",
    )
    min_chars: int = Field(
        1, ge=1, description="Drop lines (or rows) shorter than this after stripping."
    )
    dedupe: bool = Field(True, description="Drop exact duplicate lines (rows), keeping the first.")
    block_size: int = Field(256, ge=8, description="Tokens per training block.")
    max_eval_blocks: int | None = Field(
        128,
        ge=1,
        description="Cap on validation blocks, so evaluation stays a small share of training time.",
    )


class TokenizerConfig(Section):
    """The tokenizer: an existing one, or one trained on the corpus."""

    source: str | None = Field(
        None,
        description="`embedded:gpt2` (OpenAI's GPT-2 BPE), a tokenizer/model folder, a hub name, "
        "or `train` to train one on the corpus with the options below. Default: model.init's "
        "tokenizer when continuing a model, else embedded:gpt2.",
    )
    kind: Literal["bpe", "wordpiece", "unigram"] = Field(
        "bpe", description="Algorithm when source is `train` (wordpiece for BERT)."
    )
    vocab_size: int = Field(8000, ge=64, description="Vocabulary size when training.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency when training.")


# The transformers config keys llmkit sets itself when building from a config
# (llmkit.models.build), each with the recipe field (or source) that decides it. A
# `config_overrides` key among them was passed twice and crashed with a TypeError traceback.
SET_BY_LLMKIT: dict[str, dict[str, str]] = {
    "gpt2": {
        "vocab_size": "the tokenizer",
        "n_positions": "model.max_position_embeddings",
        "n_embd": "model.hidden_size",
        "n_layer": "model.num_layers",
        "n_head": "model.num_heads",
        "n_inner": "model.intermediate_size",
        "resid_pdrop": "model.dropout",
        "embd_pdrop": "model.dropout",
        "attn_pdrop": "model.dropout",
        "bos_token_id": "the tokenizer",
        "eos_token_id": "the tokenizer",
    },
    "llama": {
        "vocab_size": "the tokenizer",
        "hidden_size": "model.hidden_size",
        "intermediate_size": "model.intermediate_size",
        "num_hidden_layers": "model.num_layers",
        "num_attention_heads": "model.num_heads",
        "num_key_value_heads": "model.num_kv_heads",
        "max_position_embeddings": "model.max_position_embeddings",
        "attention_dropout": "model.dropout",
        "tie_word_embeddings": "llmkit (tied input and output embeddings)",
        "bos_token_id": "the tokenizer",
        "eos_token_id": "the tokenizer",
        "pad_token_id": "the tokenizer",
    },
    "bert": {
        "vocab_size": "the tokenizer",
        "hidden_size": "model.hidden_size",
        "intermediate_size": "model.intermediate_size",
        "num_hidden_layers": "model.num_layers",
        "num_attention_heads": "model.num_heads",
        "max_position_embeddings": "model.max_position_embeddings",
        "hidden_dropout_prob": "model.dropout",
        "attention_probs_dropout_prob": "model.dropout",
        "pad_token_id": "the tokenizer",
    },
    "lstm": {
        "vocab_size": "the tokenizer",
        "hidden_size": "model.hidden_size",
        "num_hidden_layers": "model.num_layers",
        "dropout": "model.dropout",
        "bos_token_id": "the tokenizer",
        "eos_token_id": "the tokenizer",
    },
}


class ModelConfig(Section):
    """The network: built from a config (sizes below) or continued from a checkpoint."""

    arch: Arch = Field(
        "gpt2",
        description="Model family: gpt2, llama or lstm (causal; lstm: Embedding -> LSTM -> "
        "Linear, llmkit.models.lstm), bert (masked).",
    )
    init: str | None = Field(
        None,
        description="Continue from this model folder / run / hub name instead of building from "
        "the sizes below.",
    )
    hidden_size: int = Field(
        256, ge=8, description="Width of the residual stream (lstm: embedding and LSTM state)."
    )
    num_layers: int = Field(4, ge=1, description="Transformer blocks (lstm: stacked LSTM layers).")
    num_heads: int = Field(
        4, ge=1, description="Attention heads (must divide hidden_size; lstm: unused)."
    )
    num_kv_heads: int | None = Field(
        None, ge=1, description="Key/value heads for grouped-query attention (llama only)."
    )
    intermediate_size: int | None = Field(
        None, ge=8, description="MLP width (default: 4 x hidden_size; llama: 8/3 x, rounded)."
    )
    max_position_embeddings: int = Field(
        1024, ge=8, description="Longest sequence the model takes."
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention, MLP."
    )
    pad_vocab_to_multiple_of: int = Field(
        64,
        ge=1,
        le=4096,  # 64 or 128 is what GPU kernels want; 10**12 allocated 10**12 rows
        description="Round the embedding rows up (50257 -> 50304) so matmuls hit aligned shapes.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel: PyTorch SDPA, eager, or FlashAttention-2 (GPU)."
    )
    config_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Extra keys passed as-is to the transformers config."
    )
    trust_remote_code: bool = Field(
        False, description="Run code shipped with a hub model. Off unless you trust the source."
    )

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.init is None and self.arch != "lstm" and self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads: {self.num_heads} does not divide hidden_size {self.hidden_size}"
            )
        if self.init is None:
            taken = SET_BY_LLMKIT[self.arch]
            clash = [k for k in self.config_overrides if k in taken]
            if clash:
                raise ValueError(
                    "config_overrides: "
                    + "; ".join(f"{k} is set by llmkit from {taken[k]}" for k in clash)
                    + (" (set that field instead)" if any("." in taken[k] for k in clash) else "")
                )
        if self.num_kv_heads is not None:
            if self.arch != "llama":
                raise ValueError("num_kv_heads: only the llama arch has grouped-query attention")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(
                    f"num_kv_heads: {self.num_kv_heads} does not divide num_heads {self.num_heads}"
                )
        return self


class MaskingConfig(Section):
    """Masked-LM corruption (BERT): what share of tokens the model must recover."""

    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens masked.")
    whole_word_mask: bool = Field(
        False, description="Mask every piece of a word together rather than pieces alone."
    )


class PretrainRecipe(RecipeBase):
    """A whole pretraining run: what data, which tokenizer and model, how to train."""

    DEFAULT_RECIPE: ClassVar[str] = "pretrain/gpt-shakespeare"

    task: Task = Field("causal_lm", description="causal_lm (GPT/Llama) or masked_lm (BERT).")
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check_task(self) -> PretrainRecipe:
        problems = []
        if self.model.init is None:
            if self.task == "causal_lm" and self.model.arch not in CAUSAL_ARCHS:
                problems.append(
                    f"model.arch: '{self.model.arch}' is not a causal LM (valid: gpt2, llama, lstm)"
                )
            if self.task == "masked_lm" and self.model.arch != "bert":
                problems.append(f"model.arch: '{self.model.arch}' is not a masked LM (valid: bert)")
            # An LSTM has no position table: any block length fits.
            if (
                self.model.arch != "lstm"
                and self.data.block_size > self.model.max_position_embeddings
            ):
                problems.append(
                    f"data.block_size: {self.data.block_size} exceeds "
                    f"model.max_position_embeddings {self.model.max_position_embeddings}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self
