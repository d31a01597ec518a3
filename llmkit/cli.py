"""The `llmkit` command line: one short function per command.

Heavy imports (torch, transformers, datasets) happen inside the commands, so `llmkit --help`
starts in a fraction of a second. A `UsageError` anywhere becomes one `error: ...` line on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from llmkit.errors import EXIT_USAGE, UsageError


class _DefaultCommandGroup(TyperGroup):
    """A group whose unknown first word goes to its `run` command: `llmkit prep RECIPE` and
    `llmkit prep tokenizer ...` both work."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's vendored click.Context
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


class _RootGroup(TyperGroup):
    """`llmkit --help` is the command people run most; typer's rich formatter imports
    rich.markdown and pygments to draw it (~0.2 s of the 0.35 s start-up on these 2-core
    machines), so the root listing uses click's plain formatter with each command's first
    sentence unshortened. Every command's own --help keeps rich panels."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super(TyperGroup, self).format_help(ctx, formatter)  # click's Group, not typer's rich

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args:  # typer's rich error handler would swallow the plain help; exit 2 as click
            typer.echo(ctx.get_help())
            ctx.exit(EXIT_USAGE)
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, cmd.get_short_help_str(limit=200)) for name, cmd in self.commands.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    cls=_RootGroup,
    name="llmkit",
    help="Train, fine-tune, generate with and evaluate language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
prep_app = typer.Typer(
    cls=_DefaultCommandGroup,
    help="Read, clean, tokenize and pack a corpus (cached by content); or train a tokenizer.",
)
app.add_typer(prep_app, name="prep")

# Options shared by every training command (pretrain, finetune).
RecipeArg = Annotated[
    Path | None, typer.Argument(help="Recipe YAML (default: the command's embedded recipe).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a recipe field by dotted path, e.g. --set train.lr=3.0e-4 (repeatable).",
    ),
]
OutputDirOpt = Annotated[
    Path | None, typer.Option(help="Run folder (default: runs/<recipe name>).")
]
MaxStepsOpt = Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed (data order, init, dropout).")]
DevicesOpt = Annotated[
    int | None, typer.Option(help="Processes to launch (one per GPU; CPU uses gloo).")
]
DryRunOpt = Annotated[bool, typer.Option(help="Print the resolved recipe and exit.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from the last checkpoint in the run.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace a run already in the output dir.")]


def _flag_overrides(**flags: Any) -> list[str]:
    """Real flags are shorthands for dotted overrides: --max-steps 5 == --set train.max_steps=5."""
    paths = {
        "output_dir": "train.output_dir",
        "max_steps": "train.max_steps",
        "seed": "train.seed",
        "devices": "train.devices",
    }
    return [f"{paths[k]}={v}" for k, v in flags.items() if v is not None]


@app.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes, one line each."""
    from llmkit.config.loader import list_recipes

    for name, summary in list_recipes():
        typer.echo(f"{name:<40} {summary}")


@prep_app.command("run", hidden=True)
def prep_cmd(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Prepare a recipe's data: read, clean, tokenize, pack, cache."""
    from llmkit.commands.prep import run_prep
    from llmkit.config.loader import load_recipe

    r = load_recipe(recipe, set_ or [], default="pretrain/gpt-shakespeare")
    if dry_run:
        typer.echo(r.to_yaml())
        return
    run_prep(r)


@prep_app.command("tokenizer")
def prep_tokenizer_cmd(
    sources: Annotated[list[str], typer.Argument(help="Text files, globs or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the tokenizer.")],
    kind: Annotated[
        str, typer.Option(help="bpe (GPT-style), wordpiece (BERT) or unigram.")
    ] = "bpe",
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size.")] = 8000,
    min_frequency: Annotated[int, typer.Option(help="Drop merges seen fewer times.")] = 2,
    text_column: Annotated[str, typer.Option(help="Column for .jsonl/.csv sources.")] = "text",
) -> None:
    """Train a BPE, WordPiece or Unigram tokenizer and save it as a HF fast tokenizer."""
    from llmkit.data.tokenizer import train_tokenizer

    train_tokenizer(
        sources,
        output,
        kind=kind,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        text_column=text_column,
    )


@app.command("pretrain", context_settings={"allow_interspersed_args": True})
def pretrain_cmd(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    output_dir: OutputDirOpt = None,
    max_steps: MaxStepsOpt = None,
    seed: SeedOpt = None,
    devices: DevicesOpt = None,
    dry_run: DryRunOpt = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Pretrain a causal (GPT/Llama) or masked (BERT) LM; default: small GPT on Shakespeare."""
    from llmkit.config.loader import load_recipe

    overrides = [
        *(set_ or []),
        *_flag_overrides(output_dir=output_dir, max_steps=max_steps, seed=seed, devices=devices),
    ]
    r = load_recipe(recipe, overrides, default="pretrain/gpt-shakespeare")
    if dry_run:
        typer.echo(r.to_yaml())
        return
    from llmkit.launch import relaunch_if_needed

    if relaunch_if_needed(r.train.devices):
        return
    from llmkit.commands.pretrain import run_pretrain

    run_pretrain(r, resume=resume, overwrite=overwrite)


# --- finetune ---------------------------------------------------------------------------------


@app.command("finetune", context_settings={"allow_interspersed_args": True})
def finetune_cmd(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    output_dir: OutputDirOpt = None,
    max_steps: MaxStepsOpt = None,
    seed: SeedOpt = None,
    devices: DevicesOpt = None,
    dry_run: DryRunOpt = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fine-tune a model (LoRA or full): chat/instruction SFT, classification, text-to-text;
    default: LoRA on SmolLM2-135M-Instruct with chatterbot Q&A."""
    from llmkit.config.finetune import load_finetune_recipe

    overrides = [
        *(set_ or []),
        *_flag_overrides(output_dir=output_dir, max_steps=max_steps, seed=seed, devices=devices),
    ]
    r = load_finetune_recipe(recipe, overrides)
    if dry_run:
        typer.echo(r.to_yaml())
        return
    from llmkit.launch import relaunch_if_needed

    if relaunch_if_needed(r.train.devices):
        return
    from llmkit.commands.finetune import run_finetune

    run_finetune(r, resume=resume, overwrite=overwrite)


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run or adapter folder from `llmkit finetune`.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder (default: RUN-merged).")
    ] = None,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Also upload to this hub repo (needs a reachable hub).")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Merge a LoRA adapter into its base model and save a plain Hugging Face folder."""
    from llmkit.commands.export import run_export

    run_export(run, output=output, push_to_hub=push_to_hub, overwrite=overwrite)


# --- generate ---------------------------------------------------------------------------------

_DECODING = "Decoding (flags beat --recipe, which beats the model's defaults)"


@app.command("generate")
def generate_cmd(
    prompt: Annotated[
        str | None, typer.Argument(help="Text to continue; '-' reads it from stdin.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Run folder, HF folder, LoRA adapter folder or hub name "
            "(default: embedded:smollm2).",
        ),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="YAML whose generate: mapping sets decoding options.")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Run Python code shipped with the model. Off unless you trust it.")
    ] = False,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Most new tokens (default 128).", rich_help_panel=_DECODING)
    ] = None,
    sample: Annotated[
        bool | None,
        typer.Option(
            "--sample/--greedy",
            help="Sample, or pick the likeliest token. Sampling knobs imply --sample.",
            rich_help_panel=_DECODING,
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (>0).", rich_help_panel=_DECODING)
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Sample among the k likeliest.", rich_help_panel=_DECODING)
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus mass, (0, 1].", rich_help_panel=_DECODING)
    ] = None,
    min_p: Annotated[
        float | None, typer.Option(help="Min prob. vs the top token.", rich_help_panel=_DECODING)
    ] = None,
    typical_p: Annotated[
        float | None, typer.Option(help="Typical sampling mass.", rich_help_panel=_DECODING)
    ] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help=">1 repeats less.", rich_help_panel=_DECODING)
    ] = None,
    no_repeat_ngram_size: Annotated[
        int | None, typer.Option(help="Never repeat n-grams this long.", rich_help_panel=_DECODING)
    ] = None,
    num_beams: Annotated[
        int | None, typer.Option(help="Beam search width.", rich_help_panel=_DECODING)
    ] = None,
    num_return_sequences: Annotated[
        int | None,
        typer.Option(
            "--num-return-sequences",
            "-n",
            help="Completions per prompt.",
            rich_help_panel=_DECODING,
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for reproducible sampling.", rich_help_panel=_DECODING)
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            help="Stop at this string, cut from the output; '\\n' is a newline (repeatable).",
            rich_help_panel=_DECODING,
        ),
    ] = None,
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the chat template.")] = False,
    system: Annotated[str | None, typer.Option(help="System prompt (with --chat).")] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they are generated.")] = False,
    input_: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="Prompts file: .txt (one per line) or .jsonl."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="JSONL results (default: stdout).")
    ] = None,
    field: Annotated[
        str | None, typer.Option(help="JSONL field holding the prompt (default: prompt).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Generate text from a causal LM: one prompt, stdin, or a file of prompts (batched)."""
    from llmkit.commands.generate import GenerateRequest, run_generate

    flags = dict(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        typical_p=typical_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        seed=seed,
        stop=stop,
    )
    run_generate(
        GenerateRequest(
            prompt=prompt,
            model=model,
            trust_remote_code=trust_remote_code,
            recipe=recipe,
            flags=flags,
            chat=chat,
            system=system,
            stream=stream,
            input=input_,
            output=output,
            prompt_field=field,
            batch_size=batch_size,
            json=json_,
        )
    )


@app.command("embed")
def embed_cmd(
    file: Annotated[Path, typer.Argument(help="Texts: .txt (one per line) or .jsonl.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="out.npy (float32 [n, dim]) or out.jsonl.")
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="BERT-family encoder folder.")
    ] = "embedded:minilm",
    field: Annotated[str | None, typer.Option(help="JSONL field (default: text).")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 32,
) -> None:
    """Sentence embeddings: mean-pooled over tokens, L2-normalized (cosine = dot product)."""
    from llmkit.commands.embed import run_embed

    run_embed(file, output, model=model, field=field, batch_size=batch_size)


# --- eval ---------------------------------------------------------------------------------

_EVAL_GEN = "Generation (--data and the default suite)"
_EVAL_PPL = "Perplexity (--text and the default suite)"


@app.command("eval")
def eval_cmd(
    preds: Annotated[
        Path | None, typer.Option(help="Predictions: .txt (one per line) or .jsonl; no model.")
    ] = None,
    refs: Annotated[
        Path | None,
        typer.Option(help="References, paired line by line (default: --preds if JSONL)."),
    ] = None,
    preds_b: Annotated[
        Path | None, typer.Option(help="System B's predictions for an A/B comparison.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model A (default: the latest run if a causal LM, else embedded:smollm2).",
        ),
    ] = None,
    model_b: Annotated[str | None, typer.Option(help="Model B for an A/B comparison.")] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="JSONL with source/target, prompt/completion or question/answer fields, "
            "or embedded:chatterbot (held-out split): generate, then score."
        ),
    ] = None,
    text: Annotated[
        list[Path] | None,
        typer.Option(
            help="Text file for perplexity (repeatable), or a run folder (its validation split)."
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: bleu,chrf,rouge,em,f1,accuracy,distinct,"
            "self_bleu,length (default: all but accuracy)."
        ),
    ] = None,
    pred_field: Annotated[
        str | None, typer.Option(help="JSONL field of predictions (default: prediction).")
    ] = None,
    ref_field: Annotated[
        str | None, typer.Option(help="JSONL field of references (default: reference/target).")
    ] = None,
    source_field: Annotated[
        str | None, typer.Option(help="--data field of inputs.", rich_help_panel=_EVAL_GEN)
    ] = None,
    target_field: Annotated[
        str | None, typer.Option(help="--data field of references.", rich_help_panel=_EVAL_GEN)
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Score the first N examples (default suite: 64).", rich_help_panel=_EVAL_GEN
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            help="Greedy answer length (default 64; suite 32).", rich_help_panel=_EVAL_GEN
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Prompts per generate call.", rich_help_panel=_EVAL_GEN)
    ] = 32,
    chat: Annotated[
        bool | None,
        typer.Option(
            "--chat/--no-chat",
            help="Wrap inputs in the chat template (default: if the model has one).",
            rich_help_panel=_EVAL_GEN,
        ),
    ] = None,
    system: Annotated[
        str | None, typer.Option(help="System prompt (chat).", rich_help_panel=_EVAL_GEN)
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            help="Window in tokens (default: context, at most 1024; suite 512).",
            rich_help_panel=_EVAL_PPL,
        ),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(
            help="Sliding-window step (default: max-length / 2).", rich_help_panel=_EVAL_PPL
        ),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Folder for metrics.json (default: runs/eval/<name>).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name of the folder under runs/eval (default: a timestamp).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing metrics.json.")] = False,
) -> None:
    """Score predictions, generate then score, or measure perplexity; A/B with --model-b or
    --preds-b. With no options: the latest run (or SmolLM2) on embedded held-out data."""
    from llmkit.commands.eval import EvalRequest, run_eval

    run_eval(
        EvalRequest(
            preds=preds,
            refs=refs,
            preds_b=preds_b,
            model=model,
            model_b=model_b,
            data=data,
            text=text or [],
            metrics=metrics,
            pred_field=pred_field,
            ref_field=ref_field,
            source_field=source_field,
            target_field=target_field,
            limit=limit,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            chat=chat,
            system=system,
            max_length=max_length,
            stride=stride,
            output_dir=output_dir,
            name=name,
            overwrite=overwrite,
        )
    )


def main() -> None:
    try:
        app()
    except UsageError as e:
        print(e.render(), file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
