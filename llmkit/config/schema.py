"""The typed recipe: one pydantic model per concern, one documented field per knob.

A recipe YAML maps onto `Recipe`; unknown keys and wrong types are errors (extra="forbid"),
and cross-field rules live next to the fields they relate (`_check_*` validators), so a bad
recipe fails before any data is read or model built.

Names here are llmkit's; `llmkit.train.arguments` is the only place they are mapped to
Hugging Face `TrainingArguments` names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

Task = Literal["causal_lm", "masked_lm"]
Arch = Literal["gpt2", "llama", "bert"]
CAUSAL_ARCHS: tuple[Arch, ...] = ("gpt2", "llama")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the text comes from and how it is cleaned, split and packed."""

    sources: list[str] = Field(
        default_factory=lambda: ["embedded:shakespeare"],
        min_length=1,
        description="Text files, globs or folders (.txt/.jsonl/.json/.csv), "
        "`embedded:shakespeare`, or `hub:NAME` for a Hugging Face dataset (needs a hub).",
    )
    text_column: str = Field("text", description="Column holding the text in .jsonl/.csv/hub rows.")
    validation: float | str = Field(
        0.05,
        description="Held-out share of blocks (0 < x < 1), or a file used as the validation set.",
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

    @model_validator(mode="after")
    def _check_validation(self) -> DataConfig:
        if isinstance(self.validation, float) and not 0.0 < self.validation < 1.0:
            raise ValueError(
                f"validation: a fraction must be between 0 and 1 (exclusive), got {self.validation}"
            )
        return self


class TokenizerConfig(_Section):
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


class ModelConfig(_Section):
    """The network: built from a config (sizes below) or continued from a checkpoint."""

    arch: Arch = Field("gpt2", description="Model family: gpt2 or llama (causal), bert (masked).")
    init: str | None = Field(
        None,
        description="Continue from this model folder / run / hub name instead of building from "
        "the sizes below.",
    )
    hidden_size: int = Field(256, ge=8, description="Width of the residual stream.")
    num_layers: int = Field(4, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads (must divide hidden_size).")
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
        if self.init is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads: {self.num_heads} does not divide hidden_size {self.hidden_size}"
            )
        if self.num_kv_heads is not None:
            if self.arch != "llama":
                raise ValueError("num_kv_heads: only the llama arch has grouped-query attention")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(
                    f"num_kv_heads: {self.num_kv_heads} does not divide num_heads {self.num_heads}"
                )
        return self


class MaskingConfig(_Section):
    """Masked-LM corruption (BERT): what share of tokens the model must recover."""

    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens masked.")
    whole_word_mask: bool = Field(
        False, description="Mask every piece of a word together rather than pieces alone."
    )


class TrainConfig(_Section):
    """The optimisation loop (Hugging Face Trainer underneath)."""

    output_dir: Path | None = Field(None, description="Run folder (default: runs/<recipe name>).")
    max_steps: int = Field(-1, description="Optimizer steps; -1 means run `epochs` epochs.")
    epochs: float = Field(1.0, gt=0.0, description="Passes over the training blocks.")
    batch_size: int = Field(8, ge=1, description="Blocks per device per micro-step.")
    eval_batch_size: int | None = Field(None, ge=1, description="Default: batch_size.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(6.0e-4, gt=0.0, description="Peak learning rate.")
    lr_schedule: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Decay after warmup."
    )
    warmup: float = Field(
        0.05, ge=0.0, description="Warmup: a share of total steps if < 1, else a step count."
    )
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decoupled weight decay.")
    adam_beta2: float = Field(0.95, gt=0.0, lt=1.0, description="AdamW beta2.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0: off).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, else fp32."
    )
    compile: bool | None = Field(
        None,
        description="torch.compile the model; None: on CUDA GPUs only (issue 6 reports it ~3x "
        "slower on the 2-core CPUs here; not re-measured).",
    )
    log_every: int = Field(10, ge=1, description="Optimizer steps between log lines.")
    eval_every: int | None = Field(
        100, ge=1, description="Steps between evaluations on the validation split (None: at end)."
    )
    save_every: int | None = Field(
        100, ge=1, description="Steps between checkpoints (None: only the final model)."
    )
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept (oldest deleted).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without a better eval loss."
    )
    seed: int = Field(42, description="Seed for init, data order, masking and dropout.")
    devices: int = Field(1, ge=1, description="Processes (one per GPU; gloo on CPU).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    tensorboard: bool = Field(False, description="Also log to TensorBoard under <run>/tensorboard.")

    @model_validator(mode="after")
    def _check_early_stopping(self) -> TrainConfig:
        if self.early_stopping_patience is not None and self.eval_every is None:
            raise ValueError("early_stopping_patience: needs eval_every to be set")
        return self


class Recipe(_Section):
    """A whole run: what data, which tokenizer and model, how to train."""

    name: str = Field("run", description="Run name: the default run folder is runs/<name>.")
    description: str = Field("", description="One line shown by `llmkit recipes`.")
    task: Task = Field("causal_lm", description="causal_lm (GPT/Llama) or masked_lm (BERT).")
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check_task(self) -> Recipe:
        problems = []
        if self.model.init is None:
            if self.task == "causal_lm" and self.model.arch not in CAUSAL_ARCHS:
                problems.append(
                    f"model.arch: '{self.model.arch}' is not a causal LM (valid: gpt2, llama)"
                )
            if self.task == "masked_lm" and self.model.arch != "bert":
                problems.append(f"model.arch: '{self.model.arch}' is not a masked LM (valid: bert)")
            if self.data.block_size > self.model.max_position_embeddings:
                problems.append(
                    f"data.block_size: {self.data.block_size} exceeds "
                    f"model.max_position_embeddings {self.model.max_position_embeddings}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def output_dir(self) -> Path:
        return self.train.output_dir or Path("runs") / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
