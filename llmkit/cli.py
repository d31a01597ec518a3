"""The `llmkit` command line: one short function per command, taking its typed request.

Each command's options are built from its request model (llmkit.config.requests): a field's
type, default, help and checks are written once there. Heavy imports (torch, transformers,
datasets) happen inside the commands, so `llmkit --help` starts in a fraction of a second.
A `UsageError` anywhere becomes one `error: ...` line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from llmkit.errors import EXIT_USAGE, AlreadyFinished, Interrupted, UsageError
from llmkit.flags import (
    FIX_WORDING,
    LAZY,
    DefaultCommandGroup,
    RootGroup,
    alias_parameter,
    flag_name,
    flag_of,
    merge_aliases,
    parameter,
    print_version,
)

if TYPE_CHECKING:
    from llmkit.config.base import Request
    from llmkit.config.inference import ChatRequest, GenerateRequest, ServeRequest
    from llmkit.config.recipe import RecipeBase
    from llmkit.config.requests import (
        ClassifyRequest,
        EmbedRequest,
        EvalRequest,
        ExportRequest,
        PlotRequest,
        RecipeRequest,
        TokenizerRequest,
        TrainRequest,
    )

R = TypeVar("R", bound="Request")
RB = TypeVar("RB", bound="RecipeBase")


app = typer.Typer(
    cls=RootGroup,
    name="llmkit",
    help="Train, fine-tune, generate with and evaluate language models.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=print_version, is_eager=True, help="Print versions and exit."
        ),
    ] = False,
) -> None:
    """Train, fine-tune, generate with and evaluate language models."""
    # A callback keeps `llmkit` a group: with one eagerly registered command (recipes; the
    # rest are LAZY) typer would otherwise run that command for every invocation.


prep_app = typer.Typer(
    cls=DefaultCommandGroup,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Read, clean, tokenize and pack a corpus (cached by content); or train a tokenizer.",
)
PREP_COMMANDS: list[Callable[[], None]] = []  # registrations onto prep_app, run when built


def _build_prep() -> Any:
    while PREP_COMMANDS:
        PREP_COMMANDS.pop(0)()
    return typer.main.get_command(prep_app)


def command(
    group: typer.Typer, name: str, request: str, **settings: Any
) -> Callable[[Callable[[R], None]], Callable[[R], None]]:
    """Register `fn(request)` as command `name` of `group`, its options built (when the
    command is invoked) from the fields of the request model named `request`
    (llmkit.config.requests); values are validated into the model, problems named by flag."""

    def register(fn: Callable[[R], None]) -> Callable[[R], None]:
        def add_to(target: typer.Typer) -> None:
            import importlib

            module, _, cls = request.rpartition(".")  # "inference.ServeRequest": another module
            model = getattr(importlib.import_module(f"llmkit.config.{module or 'requests'}"), cls)
            shown = {k: f for k, f in model.model_fields.items() if flag_of(model, k).cli}
            params = [parameter(k, f, flag_of(model, k)) for k, f in shown.items()]
            params += [
                alias_parameter(k, i, f, decl)
                for k, f in shown.items()
                for i, decl in enumerate(flag_of(model, k).aliases)
            ]

            def run(**values: Any) -> None:
                fn(parse(model, merge_aliases(values)))

            run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
            run.__annotations__ = {p.name: p.annotation for p in params}
            run.__name__, run.__doc__ = fn.__name__, fn.__doc__
            target.command(name, **settings)(run)

        if group is prep_app:
            PREP_COMMANDS.append(lambda: add_to(prep_app))
        else:

            def build() -> Any:
                single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
                add_to(single)
                return typer.main.get_command(single)

            LAZY[name] = (fn.__doc__ or "", build)
        return fn

    return register


def parse(request: type[R], values: dict[str, Any]) -> R:
    """The request from option values, or a UsageError naming each bad value by its flag."""
    from llmkit.config.base import validate

    return validate(request, values, name=lambda path: flag_name(request, path))


TRAINING = {"context_settings": {"allow_interspersed_args": True}}


@app.command("recipes")
def recipes_cmd(
    name: Annotated[
        str | None,
        typer.Argument(help="Print this recipe (resolved: `llmkit pretrain NAME --dry-run`)."),
    ] = None,
) -> None:
    """List the shipped recipes, one line each; with a NAME, print that recipe."""
    from llmkit.config.loader import list_recipes, shipped_recipe

    if name is not None:
        typer.echo(shipped_recipe(name).read_text(encoding="utf-8"), nl=False)
        return
    for recipe, summary in list_recipes():
        typer.echo(f"{recipe:<40} {summary}")


@command(prep_app, "run", "RecipeRequest", hidden=True)
def prep_cmd(req: RecipeRequest) -> None:
    """Prepare a recipe's data: read, clean, tokenize, pack, cache."""
    from llmkit.config.pretrain import PretrainRecipe

    recipe = _load(PretrainRecipe, req)
    if recipe is not None:
        from llmkit.commands.prep import run_prep

        run_prep(recipe)


@command(prep_app, "tokenizer", "TokenizerRequest")
def prep_tokenizer_cmd(req: TokenizerRequest) -> None:
    """Train a BPE, WordPiece or Unigram tokenizer and save it as a HF fast tokenizer."""
    from llmkit.commands.prep import run_tokenizer

    run_tokenizer(req)


@command(app, "pretrain", "TrainRequest", **TRAINING)
def pretrain_cmd(req: TrainRequest) -> None:
    """Pretrain a causal (GPT/Llama) or masked (BERT) LM; default: small GPT on Shakespeare."""
    from llmkit.config.pretrain import PretrainRecipe

    recipe = _load(PretrainRecipe, req)
    if recipe is not None and req.resume:
        _stop_if_finished(recipe, req)
    if recipe is not None:
        _hold_run(recipe, req)
    if recipe is not None and not _launched(recipe.train.devices, req):
        from llmkit.commands.pretrain import run_pretrain

        run_pretrain(recipe, resume=req.resume, overwrite=req.overwrite)


@command(app, "finetune", "TrainRequest", **TRAINING)
def finetune_cmd(req: TrainRequest) -> None:
    """Fine-tune a model (LoRA or full): chat/instruction SFT, classification, text-to-text
    (decoder-only or T5); default: LoRA on SmolLM2-135M-Instruct with chatterbot Q&A."""
    from llmkit.config.finetune import FinetuneRecipe

    recipe = _load(FinetuneRecipe, req)
    if recipe is not None and req.resume:
        _stop_if_finished(recipe, req)
    if recipe is not None:
        _hold_run(recipe, req)
    if recipe is not None and not _launched(recipe.train.devices, req):
        from llmkit.commands.finetune import run_finetune

        run_finetune(recipe, resume=req.resume, overwrite=req.overwrite)


def _load(schema: type[RB], req: RecipeRequest) -> RB | None:
    """The recipe with the request's overrides, or None after printing it for --dry-run."""
    from llmkit.config.loader import load_recipe

    recipe = load_recipe(schema, req.recipe, req.recipe_overrides())
    if req.dry_run:
        typer.echo(recipe.to_yaml())
        return None
    return recipe


def _stop_if_finished(recipe: Any, req: TrainRequest) -> None:
    """`--resume` of a run that already finished: one line and exit 0 within a second,
    before torch loads or workers launch (raises `AlreadyFinished`); of an FSDP checkpoint
    on another process count: one error line, before the workers launch (each would say it)."""
    from llmkit.io.runs import RunDir
    from llmkit.train.checkpoints import check_resume_processes
    from llmkit.train.ending import check_finished

    run = RunDir(recipe.output_dir)
    check_finished(run, recipe.train)
    check_resume_processes(run, recipe.train.devices * req.nodes)


def _hold_run(recipe: Any, req: TrainRequest) -> None:
    """One writer per run folder, taken before workers launch (they inherit it); in a run
    launched by torchrun or accelerate, rank 0 holds it, and across machines node 0 (the
    others write nothing there). Raises UsageError naming the PID already writing it."""
    from llmkit.io.runs import hold_writer_lock

    if req.node_rank == 0 and int(os.environ.get("RANK", "0")) == 0:
        hold_writer_lock(recipe.output_dir)


def _launched(devices: int, req: TrainRequest) -> bool:
    """True if this process relaunched the command on `devices` processes per node (now
    finished)."""
    from llmkit.launch import Nodes, relaunch_if_needed

    nodes = Nodes(req.nodes, req.node_rank, req.master_addr, req.master_port)
    return relaunch_if_needed(devices, nodes)


@command(app, "export", "ExportRequest")
def export_cmd(req: ExportRequest) -> None:
    """Merge a LoRA adapter into its base model and save a plain Hugging Face folder."""
    from llmkit.commands.export import run_export

    run_export(req)


@command(app, "generate", "inference.GenerateRequest")
def generate_cmd(req: GenerateRequest) -> None:
    """Generate text with a causal LM or an encoder-decoder (T5): one prompt, stdin, or a file
    of prompts (batched), prompted as the run was trained."""
    from llmkit.commands.generate import run_generate

    run_generate(req)


@command(app, "chat", "inference.ChatRequest")
def chat_cmd(req: ChatRequest) -> None:
    """Talk with a chat model: multi-turn, answers streamed; /help inside lists the commands."""
    from llmkit.commands.chat import run_chat

    run_chat(req)


@command(app, "serve", "inference.ServeRequest")
def serve_cmd(req: ServeRequest) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat, completions, streaming) on
    127.0.0.1, with continuous batching."""
    from llmkit.commands.serve import run_serve

    run_serve(req)


@command(app, "classify", "ClassifyRequest")
def classify_cmd(req: ClassifyRequest) -> None:
    """Label texts with a fine-tuned classifier: one text, stdin, or a file (JSONL out)."""
    from llmkit.commands.classify import run_classify

    run_classify(req)


@command(app, "embed", "EmbedRequest")
def embed_cmd(req: EmbedRequest) -> None:
    """Sentence embeddings: mean-pooled over tokens, L2-normalized (cosine = dot product)."""
    from llmkit.commands.embed import run_embed

    run_embed(req)


@command(app, "eval", "EvalRequest")
def eval_cmd(req: EvalRequest) -> None:
    """Score predictions, generate then score, or measure perplexity; A/B with --model-b or
    --preds-b. With no options: the latest run (or SmolLM2) on embedded held-out data."""
    from llmkit.commands.eval import run_eval

    run_eval(req)


@command(app, "plot", "PlotRequest")
def plot_cmd(req: PlotRequest) -> None:
    """Draw runs' loss, perplexity, learning rate and task metrics against steps (or tokens)
    as one PNG; several runs are overlaid."""
    from llmkit.commands.plot import run_plot

    run_plot(req)


LAZY["prep"] = (prep_app.info.help or "", _build_prep)  # listed last


def main() -> None:
    """The console script. Every way a command can fail reaches the user as one `error:` line
    and exit code 2 (bad usage), 130/143 (interrupted), or a traceback (a bug in llmkit)."""
    import signal

    from llmkit.io import interrupt

    interrupt.install()  # first: a Ctrl-C at any moment is seen (llmkit.io.interrupt)
    try:  # from the very next line: a signal while the libraries import ends here too
        from llmkit.io.quiet import quiet_libraries

        quiet_libraries()
        code = app(standalone_mode=False)
    except Exception as e:
        signum = interrupt.received()
        if signum is None:
            _exit_2_on_usage_error(e)
            _warn_untested()  # a bug, in llmkit or in a library outside the tested set
            raise
        # A library turned the signal's exception into its own error (pydantic-core wraps one
        # raised inside a serializer callback as PydanticSerializationError): the signal is
        # what happened, not the error.
        code = interrupt.EXIT_CODES.get(signal.Signals(signum), 128 + signum)
    except AlreadyFinished as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(e.render(FIX_WORDING))
        sys.exit(0)
    except Interrupted as e:
        if e.main and e.resumable:
            print("continue with the same command and --resume", file=sys.stderr)
        elif e.main and int(os.environ.get("RANK", "0")) == 0:
            print("interrupted" if e.code == 130 else "terminated", file=sys.stderr)
        raise
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    if code in (130, 143):  # typer turns Ctrl-C into exit code 130
        print("interrupted" if code == 130 else "terminated", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


def _exit_2_on_usage_error(e: Exception) -> None:
    """One `error:` line and exit 2 for bad usage; anything else returns (a bug: re-raised)."""
    from typer import _click

    if isinstance(e, UsageError):
        _warn_untested()
        print(e.render(FIX_WORDING), file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if isinstance(e, _click.exceptions.ClickException):  # typer's parsing: a bad option
        ctx = getattr(e, "ctx", None)
        if ctx is not None and ctx.command.hidden and ctx.parent is not None:
            ctx = ctx.parent  # `llmkit prep --bogus` runs the hidden `prep run`
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {e.format_message()}{where}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _warn_untested() -> None:
    """Before a failing command's error: the installed libraries llmkit was not tested with."""
    from llmkit.versions import untested_libraries

    for line in untested_libraries():
        print(f"warning: {line}", file=sys.stderr)
