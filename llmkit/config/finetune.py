"""The typed fine-tuning recipe (`llmkit finetune`): a sibling of `PretrainRecipe`.

Pretraining sizes (hidden_size, num_layers, ...) and tokenizer training make no sense when
starting from a trained model, so the `model:` and `data:` sections are new; the `train:`
section is the same `TrainConfig`, so `training_arguments` and `build_trainer` are shared.

    task: sft              causal LM on text / prompt-completion / alpaca / chat data
    task: classification   AutoModelForSequenceClassification (BERT) on text + label columns
    task: text2text        source -> target through a prompt template, scored with BLEU/ROUGE
    task: preference       DPO / IPO / ORPO / CPO / SimPO / KTO on preference rows (TRL)
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, cast

from pydantic import Field, model_validator

from llmkit.config.base import Section
from llmkit.config.decoding import MAX_NEW_TOKENS
from llmkit.config.recipe import RecipeBase, RunName, TrainConfig, ValidationSplit
from llmkit.evaluation.text import BleuTokenize, RougeTokenize

FinetuneTask = Literal["sft", "classification", "text2text", "preference"]
DataFormat = Literal["text", "prompt_completion", "alpaca", "chat"]
# Metrics the evaluation can report, by task; `metric_for_best_model` must be one of them.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sft": ("loss",),
    "classification": ("loss", "accuracy", "macro_f1"),
    "text2text": ("loss", "bleu", "chrf", "rouge1", "rouge2", "rougeL"),
    # TRL's reward metrics, logged as rewards/accuracies etc. (KTO logs no accuracy).
    "preference": ("loss", "rewards/accuracies", "rewards/margins"),
}
DEFAULT_INIT = {
    "sft": "embedded:smollm2",
    "text2text": "embedded:smollm2",
    "classification": "embedded:minilm",
    "preference": "embedded:smollm2",
}
PreferenceMethod = Literal["dpo", "ipo", "orpo", "cpo", "simpo", "kto"]
# Each method's beta where the recipe sets none: TRL 1.16's config default (DPOConfig,
# ORPOConfig, CPOConfig, KTOConfig: 0.1), except SimPO, whose paper (Meng et al. 2024, table 7)
# tunes beta in 2.0-2.5 with gamma/beta = 0.5-0.8: 2.0 here, simpo_gamma 1.0.
METHOD_BETA = {"dpo": 0.1, "ipo": 0.1, "orpo": 0.1, "cpo": 0.1, "simpo": 2.0, "kto": 0.1}
# train.lr where the recipe sets none: TRL's config default for full fine-tuning (1e-6 in all
# four configs); under LoRA 10x that, as TRL's own DPO script docs do (trl/scripts/dpo.py:
# 5e-7 full, 5e-6 with --use_peft).
PREFERENCE_LR = {"full": 1.0e-6, "lora": 1.0e-5}


class FinetuneDataConfig(Section):
    """Where the examples come from and which columns hold what."""

    sources: list[str] = Field(
        default_factory=lambda: ["embedded:chatterbot"],
        min_length=1,
        description="JSONL/JSON/CSV files, globs or folders, or `embedded:chatterbot` (question/"
        "answer pairs with their topic; its held-out pairs are the validation set).",
    )
    format: DataFormat = Field(
        "chat",
        description="sft rows: `text` (loss on all of it), `prompt_completion`, `alpaca` "
        "(instruction/input/output), or `chat` (OpenAI `messages` or ShareGPT `conversations`).",
    )
    text_column: str = Field("text", description="Text column (format text; classification).")
    prompt_column: str = Field("prompt", description="Prompt column (format prompt_completion).")
    completion_column: str = Field(
        "completion", description="Completion column (format prompt_completion)."
    )
    messages_column: str | None = Field(
        None, description="Chat column (default: `messages`, else `conversations`)."
    )
    label_column: str = Field("label", description="Class label column (classification).")
    source_column: str = Field("source", description="Input column (text2text).")
    target_column: str = Field("target", description="Output column (text2text).")
    template: str = Field(
        "{source}\n",
        description="text2text prompt, with {source} replaced by the input; the target follows.",
    )
    system: str | None = Field(
        None, description="System message prepended to every chat (default: the template's)."
    )
    validation: ValidationSplit = Field(
        0.1,
        description="Held-out share of examples (0 < x < 1, split by a hash of the row), or a "
        "file/glob used as the validation set. embedded:chatterbot uses its fixed held-out pairs.",
    )
    max_length: int = Field(512, ge=8, description="Tokens per example; longer ones are cut.")
    max_eval_examples: int | None = Field(
        256, ge=1, description="Cap on validation examples, so evaluation stays cheap."
    )

    @model_validator(mode="after")
    def _check_template(self) -> FinetuneDataConfig:
        from llmkit.errors import UsageError
        from llmkit.models.card import check_template

        try:
            check_template(self.template)  # rendered with str.format on every row
        except UsageError as e:
            raise ValueError(f"template: {e.message}") from None
        return self


class ScratchModelConfig(Section):
    """A new encoder-decoder built from sizes (random weights), for text2text from scratch."""

    arch: Literal["t5"] = Field("t5", description="Model family (T5: relative positions).")
    tokenizer: str = Field(
        "embedded:gpt2",
        description="Its vocabulary: `embedded:gpt2`, or a folder from `llmkit prep tokenizer`.",
    )
    d_model: int = Field(256, ge=8, description="Width.")
    num_layers: int = Field(3, ge=1, description="Encoder layers (and as many decoder layers).")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    d_ff: int = Field(1024, ge=8, description="Feed-forward width.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout rate.")

    @model_validator(mode="after")
    def _check_heads(self) -> ScratchModelConfig:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model {self.d_model} must be a multiple of num_heads {self.num_heads}"
            )
        return self


class PreferenceSection(Section):
    """Preference tuning (task: preference) through TRL's trainers."""

    method: PreferenceMethod = Field(
        "dpo",
        description="dpo (DPOTrainer), ipo (DPO with loss_type ipo), orpo (ORPOTrainer: no "
        "reference model), cpo, simpo (CPOTrainer with loss_type simpo, no SFT term), kto "
        "(KTOTrainer: unpaired desirable/undesirable rows; pairs are split into two rows).",
    )
    beta: float | None = Field(
        None,
        gt=0,
        description="Strength of the pull toward the reference (ORPO: the odds-ratio weight "
        "lambda). Default: TRL's, 0.1; simpo 2.0.",
    )
    loss_type: str | None = Field(
        None,
        description="TRL's loss variant: dpo/ipo: sigmoid, hinge, ipo, robust, bco_pair, "
        "sppo_hard, nca_pair, apo_zero, apo_down, sigmoid_norm, ...; cpo: sigmoid, hinge, "
        "ipo, simpo; kto: kto, apo_zero_unpaired. Default: the method's own.",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="dpo robust / cpo: probability a label is flipped."
    )
    simpo_gamma: float = Field(1.0, description="simpo: the target reward margin gamma.")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of desirable rows.")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of undesirable rows.")
    chosen_column: str = Field("chosen", description="Preferred answer (text or messages).")
    rejected_column: str = Field("rejected", description="Dispreferred answer.")


class FinetuneModelConfig(Section):
    """The model to start from."""

    init: str | None = Field(
        None,
        description="Base model: `embedded:smollm2`, `embedded:minilm`, a folder, a run, or a hub "
        "name. Default: embedded:smollm2 (sft, text2text), embedded:minilm (classification).",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel: PyTorch SDPA, eager, or FlashAttention-2 (GPU)."
    )
    trust_remote_code: bool = Field(
        False, description="Run code shipped with a hub model. Off unless you trust the source."
    )
    scratch: ScratchModelConfig | None = Field(
        None,
        description="Build a new encoder-decoder (T5) from these sizes instead of loading "
        "`init` (text2text only).",
    )


class LoraSection(Section):
    """Low-rank adapters (peft): train r x (d_in + d_out) numbers per targeted matrix."""

    enabled: bool = Field(True, description="Train LoRA adapters; false = full fine-tuning.")
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Linear layers to adapt, by name. Default by architecture: llama "
        "q/k/v/o_proj, gpt2 c_attn/c_proj, bert query/key/value.",
    )


class EvalSection(Section):
    """What evaluation measures and which number picks the best checkpoint."""

    metric_for_best_model: str = Field(
        "loss",
        description="Keep the checkpoint with the best value of this (loss; classification: "
        "accuracy, macro_f1; text2text: bleu, chrf, rouge1, rouge2, rougeL). Used by early "
        "stopping too.",
    )
    generate_examples: int | None = Field(
        None,
        ge=1,
        description="text2text: validation examples answered and scored at each evaluation "
        "(default: all of them, as the loss is; data.max_eval_examples caps both).",
    )
    max_new_tokens: int = Field(
        64, ge=1, le=MAX_NEW_TOKENS, description="text2text: most tokens per answer."
    )
    bleu_tokenize: BleuTokenize | None = Field(
        None,
        description="text2text: sacreBLEU's tokenizer for BLEU (default: by the references' "
        "script: 13a, zh for Chinese, ja-mecab, ko-mecab, char for Thai). `llmkit eval` of the "
        "run uses the same.",
    )
    rouge_tokenize: RougeTokenize | None = Field(
        None,
        description="text2text: ROUGE's units: porter (rouge-score's default, English), words, "
        "char (CJK characters), jieba (Chinese words) (default: by the references' script).",
    )
    stop: list[str] = Field(
        default_factory=lambda: ["\n"],
        description="text2text: stop an answer at the first of these strings once it has "
        "begun (default: a newline, where one-line targets end; [] to stop only at EOS or "
        "max_new_tokens). An "
        "untrained model rarely stops by itself: without it the first evaluation ran every "
        "answer to the token limit (9-20 minutes seen).",
    )


class FinetuneRecipe(RecipeBase):
    """A fine-tuning run: which examples, which base model, LoRA or full, how to train."""

    DEFAULT_RECIPE: ClassVar[str] = "finetune/lora-chatterbot"
    # A trained model needs a smaller step than pretraining's 6e-4: 2e-4 suits LoRA (full
    # fine-tuning recipes set ~2e-5); no weight decay and AdamW's usual beta2 over a few
    # hundred steps; evaluations every 50 steps.
    TRAIN_DEFAULTS: ClassVar[dict[str, Any]] = {
        "lr": 2.0e-4,
        "weight_decay": 0.0,
        "adam_beta2": 0.999,
        "eval_every": 50,
        "save_every": 50,
    }

    name: RunName = Field(
        "finetune", description="Run name: the default run folder is runs/<name>."
    )
    task: FinetuneTask = Field("sft", description="sft, classification or text2text.")
    data: FinetuneDataConfig = Field(default_factory=FinetuneDataConfig)
    model: FinetuneModelConfig = Field(default_factory=FinetuneModelConfig)
    lora: LoraSection = Field(default_factory=LoraSection)
    qlora: bool = Field(
        False, description="Load the base model in 4 bits (bitsandbytes, CUDA only) under LoRA."
    )
    completion_only_loss: bool = Field(
        True,
        description="Loss on completions / assistant turns only (prompt tokens get label -100).",
    )
    packing: bool = Field(
        False,
        description="Concatenate each batch into one row with position ids restarting per "
        "example: no padding, and attention never crosses examples.",
    )
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _kind_train_defaults(cls, data: Any) -> Any:
        """RecipeBase's field-by-field train defaults, plus preference tuning's learning rate
        (TRL's, by LoRA or full) where the recipe sets none."""
        if not isinstance(data, dict) or not isinstance(data.get("train") or {}, dict):
            return data
        defaults = dict(cls.TRAIN_DEFAULTS)
        if data.get("task") == "preference":
            lora = data.get("lora") or {}
            full = isinstance(lora, dict) and lora.get("enabled") is False
            defaults["lr"] = PREFERENCE_LR["full" if full else "lora"]
        return {**data, "train": {**defaults, **(data.get("train") or {})}}

    @model_validator(mode="after")
    def _check(self) -> FinetuneRecipe:
        problems = []
        if self.model.init is None:
            self.model.init = DEFAULT_INIT[self.task]
        valid = TASK_METRICS[self.task]
        if self.eval.metric_for_best_model.removeprefix("eval_") not in valid:
            problems.append(
                f"eval.metric_for_best_model: '{self.eval.metric_for_best_model}' is not "
                f"reported for task {self.task} (valid: {', '.join(valid)})"
            )
        if self.qlora and not self.lora.enabled:
            problems.append("qlora: 4-bit weights cannot be trained; set lora.enabled: true")
        if self.packing and self.task in ("classification", "preference"):
            problems.append("packing: only for sft and text2text (this task pads)")
        if self.task == "preference":
            if self.preference.beta is None:
                self.preference.beta = METHOD_BETA[self.preference.method]
            metric = self.eval.metric_for_best_model.removeprefix("eval_")
            if self.preference.method == "kto" and metric == "rewards/accuracies":
                problems.append(
                    "eval.metric_for_best_model: kto reports no rewards/accuracies (its rows "
                    "are unpaired; valid: loss, rewards/margins)"
                )
            if self.preference.method == "kto" and self.train.batch_size < 2:
                # TRL's KTO estimates its KL term from mismatched pairs within a batch.
                problems.append("train.batch_size: kto needs 2 or more (its KL term pairs rows)")
        if self.model.scratch is not None:
            if self.task != "text2text":
                problems.append("model.scratch: builds an encoder-decoder, for task text2text")
            if self.packing:
                problems.append("packing: not for encoder-decoder models (set packing: false)")
            if self.lora.enabled:
                problems.append(
                    "model.scratch: a new model has no trained weights to adapt; set "
                    "lora.enabled: false"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def base_model(self) -> str:
        """What the run starts from: a model reference, or "new t5" built from sizes."""
        if self.model.scratch is not None:
            return f"a new {self.model.scratch.arch} (model.scratch)"
        return cast(str, self.model.init)  # filled in by `_check`

    @property
    def tokenizer_ref(self) -> str:
        if self.model.scratch is not None:
            return self.model.scratch.tokenizer
        return cast(str, self.model.init)
