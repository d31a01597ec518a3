"""What each command takes: one typed request model per command, one field per option.

A field is declared once, with its type, default, help (`description`) and checks; the CLI
builds the command's options from the model (llmkit.cli), so a value is checked here, in
milliseconds, before any model loads. Fields become `--field-name` options; `FLAGS` spells
the ones that differ (positional arguments, short names, on/off pairs, help panels).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from llmkit.config.base import Request
from llmkit.config.decoding import MAX_NEW_TOKENS, checked_template
from llmkit.config.recipe import MAX_SEED, RunName
from llmkit.evaluation.text import BleuTokenize, RougeTokenize
from llmkit.export.llama_cpp import GgufType
from llmkit.flags import ARGUMENT, Flag, flag

# One default for every --batch-size (generate, eval, embed; generate's used to be 8):
# a CPU decode step reads all weights (540 MB for SmolLM2) whatever the batch, so 2 batches
# of 32 beat 8 of 8 (64 answers: 17 s vs 8 x 4.2 s = 34 s). Greedy answers are identical at
# any batch size (checked at 8, 32 and 64); sampled ones with --seed follow the batches.
BATCH_SIZE = 32


# --- training and data ----------------------------------------------------------------------


class RecipeRequest(Request):
    """A recipe and its overrides: what `prep` takes, and the base of the training commands."""

    FLAGS: ClassVar[dict[str, Flag]] = {"recipe": ARGUMENT, "overrides": flag("--set", "-s")}

    recipe: Path | None = Field(
        None, description="Recipe YAML or shipped name (default: the command's own recipe)."
    )
    overrides: list[str] | None = Field(
        None,
        description="Override a recipe field by dotted path, e.g. --set train.lr=3.0e-4 "
        "(repeatable).",
    )
    dry_run: bool = Field(False, description="Print the resolved recipe and exit.")

    def recipe_overrides(self) -> list[str]:
        return list(self.overrides or [])


NODES = "Several machines (README: from one machine to a cluster)"


class TrainRequest(RecipeRequest):
    """`llmkit pretrain` and `llmkit finetune`: common flags are shorthands for overrides."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        **RecipeRequest.FLAGS,
        **{k: flag(panel=NODES) for k in ("nodes", "node_rank", "master_addr", "master_port")},
    }

    output_dir: Path | None = Field(None, description="Run folder (default: runs/<recipe name>).")
    max_steps: int | None = Field(None, description="Stop after this many optimizer steps.")
    seed: int | None = Field(None, description="Random seed (data order, init, dropout).")
    devices: int | None = Field(
        None, ge=1, description="Processes to launch (one per GPU; CPU uses gloo)."
    )
    resume: bool = Field(False, description="Continue from the last checkpoint in the run.")
    overwrite: bool = Field(False, description="Replace a run already in the output dir.")
    nodes: int = Field(1, ge=1, description="Machines in the run; start the same command on each.")
    node_rank: int = Field(0, ge=0, description="This machine's number, 0 .. nodes-1.")
    master_addr: str = Field("127.0.0.1", description="Address of node 0, reachable from all.")
    master_port: int = Field(29500, ge=1, le=65535, description="A free port on node 0.")

    @model_validator(mode="after")
    def _node_rank_in_range(self) -> TrainRequest:
        if self.node_rank >= self.nodes:
            raise ValueError(f"node_rank: must be below nodes ({self.nodes})")
        return self

    def recipe_overrides(self) -> list[str]:
        """--max-steps 5 == --set train.max_steps=5 (the flags win over --set)."""
        shorthands = {
            "output_dir": self.output_dir,
            "max_steps": self.max_steps,
            "seed": self.seed,
            "devices": self.devices,
        }
        return super().recipe_overrides() + [
            f"train.{k}={v}" for k, v in shorthands.items() if v is not None
        ]


class TokenizerRequest(Request):
    """`llmkit prep tokenizer`."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        "sources": ARGUMENT,
        "output": flag("--output", "-o"),
        "field": flag("--field", aliases=("--text-column",)),
    }

    sources: list[str] = Field(description="Text files, globs or folders.")
    output: Path = Field(description="Folder for the tokenizer (new or empty).")
    kind: Literal["bpe", "wordpiece", "unigram"] = Field(
        "bpe", description="bpe (GPT-style), wordpiece (BERT) or unigram."
    )
    vocab_size: int = Field(8000, ge=64, description="Vocabulary size.")
    min_frequency: int = Field(2, ge=1, description="Drop merges seen fewer times.")
    field: str = Field("text", description="JSONL/CSV field holding the text.")


class ExportRequest(Request):
    """`llmkit export`."""

    FLAGS: ClassVar[dict[str, Flag]] = {"run": ARGUMENT, "output": flag("--output", "-o")}

    run: Path | None = Field(
        None,
        description="Run or adapter folder from `llmkit finetune` (default: the latest run, "
        "runs/LATEST).",
    )
    output: Path | None = Field(
        None, description="Folder (default: RUN-merged, or RUN-gguf with --format gguf)."
    )
    push_to_hub: str | None = Field(
        None, description="Also upload to this hub repo (needs a reachable hub)."
    )
    overwrite: bool = Field(False, description="Replace a non-empty output folder.")
    format: Literal["hf", "gguf"] = Field(
        "hf",
        description="hf: a Hugging Face folder; gguf: one GGUF file for llama.cpp, Ollama, "
        "LM Studio (needs `make gguf`), with an Ollama Modelfile.",
    )
    quant: GgufType | None = Field(
        None,
        description="GGUF weight type (default f16): f32, f16, bf16 (llama.cpp's converter) "
        "or q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k (its quantizer).",
    )
    ppl_text: Path | None = Field(
        None,
        description="Held-out text the GGUF check measures perplexity on (default: the "
        "opening of The Tempest).",
    )

    @model_validator(mode="after")
    def _gguf_options(self) -> ExportRequest:
        if self.format != "gguf":
            named = [n for n in ("quant", "ppl_text") if getattr(self, n) is not None]
            if named:
                raise ValueError(f"{', '.join(named)} apply to format gguf only")
            return self
        if self.push_to_hub is not None:
            raise ValueError("push_to_hub uploads a Hugging Face folder: not with format gguf")
        return self


# --- inference ---------------------------------------------------------------------------------


class ClassifyRequest(Request):
    """`llmkit classify`."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        "text": ARGUMENT,
        "model": flag("--model", "-m"),
        "input": flag("--input", "-i"),
        "output": flag("--output", "-o"),
        "json_": flag("--json"),
        "runs_root": Flag(cli=False),
    }

    text: str | None = Field(None, description="Text to classify; '-' reads it from stdin.")
    model: str | None = Field(
        None, description="Classifier run or folder (default: the latest run, if a classifier)."
    )
    input: Path | None = Field(None, description="Texts file: .txt (one per line) or .jsonl.")
    output: Path | None = Field(None, description="JSONL results (default: stdout).")
    field: str | None = Field(None, description="JSONL field holding the text (default: text).")
    batch_size: int = Field(BATCH_SIZE, ge=1, description="Texts per forward pass.")
    json_: bool = Field(False, description="Print JSON on stdout.")
    overwrite: bool = Field(False, description="Replace an existing --output file.")
    runs_root: Path = Field(Path("runs"), description="Where runs live.")


class EmbedRequest(Request):
    """`llmkit embed`."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        "file": ARGUMENT,
        "output": flag("--output", "-o"),
        "model": flag("--model", "-m"),
    }

    file: Path = Field(description="Texts: .txt (one per line) or .jsonl.")
    output: Path = Field(description="out.npy (float32, n x dim) or out.jsonl.")
    model: str = Field("embedded:minilm", description="BERT-family encoder folder.")
    field: str | None = Field(None, description="JSONL field (default: text).")
    batch_size: int = Field(BATCH_SIZE, ge=1, description="Texts per forward pass.")
    overwrite: bool = Field(False, description="Replace an existing --output file.")


# --- evaluation --------------------------------------------------------------------------------

EVAL_GENERATION = "Generation (--data and the default suite)"
EVAL_PERPLEXITY = "Perplexity (--text and the default suite)"
EVAL_BENCHMARKS = "Benchmarks (--tasks, lm-evaluation-harness)"


class EvalRequest(Request):
    """`llmkit eval`: the options present pick the mode (see llmkit.commands.eval)."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        "model": flag("--model", "-m"),
        **{
            name: flag(panel=EVAL_GENERATION)
            for name in ("source_field", "target_field", "limit", "max_new_tokens")
        },
        "batch_size": flag(panel=EVAL_GENERATION),
        "chat": flag("--chat/--no-chat", panel=EVAL_GENERATION),
        "template": flag(panel=EVAL_GENERATION),
        "system": flag(panel=EVAL_GENERATION),
        "max_length": flag(panel=EVAL_PERPLEXITY),
        "stride": flag(panel=EVAL_PERPLEXITY),
        "num_fewshot": flag(panel=EVAL_BENCHMARKS),
        "runs_root": Flag(cli=False),
    }

    preds: Path | None = Field(
        None, description="Predictions: .txt (one per line) or .jsonl; no model."
    )
    refs: Path | None = Field(
        None, description="References, paired line by line (default: --preds if JSONL)."
    )
    preds_b: Path | None = Field(None, description="System B's predictions for an A/B comparison.")
    model: str | None = Field(
        None, description="Model A (default: the latest run if a causal LM, else embedded:smollm2)."
    )
    model_b: str | None = Field(None, description="Model B for an A/B comparison.")
    data: str | None = Field(
        None,
        description="JSONL with source/target, prompt/completion or question/answer fields, "
        "or embedded:chatterbot, embedded:chatterbot-zh, embedded:translation-en-zh... "
        "(held-out split): generate, then score.",
    )
    text: list[Path] | None = Field(
        None,
        description="Text file for perplexity (repeatable), or a run folder (its validation "
        "split).",
    )
    tasks: str | None = Field(
        None,
        description="Benchmarks through lm-evaluation-harness, comma-separated: llmkit's "
        "offline llmkit_chatterbot_mc / llmkit_chatterbot_mc_zh, a task .yaml, or harness names "
        "such as hellaswag,arc_easy (their data comes from the hub).",
    )
    num_fewshot: int | None = Field(
        None, ge=0, le=64, description="--tasks: few-shot examples (default: each task's own)."
    )
    metrics: str | None = Field(
        None,
        description="Comma-separated: bleu,chrf,rouge,em,f1,accuracy,distinct,self_bleu,length "
        "(default: all but accuracy).",
    )
    metric: list[str] | None = Field(
        None,
        description="A Hugging Face `evaluate` module (a local folder or script offline, a hub "
        "name online) scored beside llmkit's metrics (repeatable).",
    )
    bleu_tokenize: BleuTokenize | None = Field(
        None,
        description="sacreBLEU tokenizer for BLEU and self-BLEU (default: by the references' "
        "script: 13a; zh for Chinese, ja-mecab, ko-mecab, char for Thai; a run's own).",
    )
    rouge_tokenize: RougeTokenize | None = Field(
        None,
        description="ROUGE units: porter (rouge-score's English default), words, char (CJK "
        "characters), jieba (Chinese words) (default: by the references' script).",
    )
    pred_field: str | None = Field(
        None, description="JSONL field of predictions (default: prediction)."
    )
    ref_field: str | None = Field(
        None, description="JSONL field of references (default: reference/target)."
    )
    source_field: str | None = Field(None, description="--data field of inputs.")
    target_field: str | None = Field(None, description="--data field of references.")
    limit: int | None = Field(
        None, ge=1, description="Score the first N examples (default suite: 64; --tasks: per task)."
    )
    max_new_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Greedy answer length (default 64; suite 32)."
    )
    batch_size: int = Field(BATCH_SIZE, ge=1, description="Prompts per generate call.")
    chat: bool | None = Field(
        None,
        description="Wrap inputs in the chat template (default: as the run was trained; "
        "other models: if they have one).",
    )
    template: str | None = Field(
        None,
        description="Prompt template with {source}, e.g. 'Translate: {source}\\n' "
        "(default: the run's own).",
    )
    system: str | None = Field(None, description="System prompt (implies --chat).")
    max_length: int | None = Field(
        None, ge=2, description="Window in tokens (default: context, at most 1024; suite 512)."
    )
    stride: int | None = Field(
        None, ge=1, description="Sliding-window step (default: max-length / 2)."
    )
    # 1,000 is sacreBLEU's default; 1,000 resamples of 2,000 examples take 0.1-0.35 s for all
    # metrics together. The cap bounds the draws kept in memory (8 bytes x resamples x examples).
    bootstrap: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="A/B: paired bootstrap resamples for each metric's 95% interval and "
        "p-value (0: off).",
    )
    bootstrap_seed: int = Field(
        12345,
        ge=0,
        le=MAX_SEED,
        description="Seed of the bootstrap's resampling (sacreBLEU's default).",
    )
    output_dir: Path | None = Field(
        None, description="Folder for metrics.json (default: runs/eval/<name>)."
    )
    name: RunName | None = Field(
        None, description="Name of the folder under runs/eval (default: a timestamp)."
    )
    overwrite: bool = Field(False, description="Replace an existing metrics.json.")
    resume: bool = Field(
        False,
        description="Continue an interrupted evaluation (same --name/--output-dir) after its "
        "last finished batch of answers.",
    )
    runs_root: Path = Field(Path("runs"), description="Where runs (and runs/eval) live.")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return checked_template(value)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: str | None) -> str | None:
        from llmkit.errors import UsageError
        from llmkit.evaluation.metrics import parse_metric_names

        if value is not None:
            try:
                parse_metric_names(value)
            except UsageError as e:  # pydantic reports ValueErrors with the field's name
                raise ValueError(e.message) from None
        return value

    @model_validator(mode="after")
    def _stride_within_window(self) -> EvalRequest:
        if self.stride and self.max_length and self.stride > self.max_length:
            raise ValueError(
                f"--stride must be between 1 and --max-length ({self.max_length}), "
                f"got {self.stride}"
            )
        return self


# --- runs ----------------------------------------------------------------------------------------


class PlotRequest(Request):
    """`llmkit plot`."""

    FLAGS: ClassVar[dict[str, Flag]] = {"runs": ARGUMENT, "output": flag("--output", "-o")}

    runs: list[Path] = Field(
        min_length=1, description="Run folders (with metrics.jsonl); several are overlaid."
    )
    x: Literal["steps", "tokens"] = Field(
        "steps", description="X axis: optimizer steps, or tokens seen."
    )
    output: Path | None = Field(
        None, description="PNG file (default: plots.png in the first run's folder)."
    )
    overwrite: bool = Field(False, description="Replace an existing output file.")
