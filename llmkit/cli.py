"""The `llmkit` command line: one short function per command, taking its typed request.

Each command's options are built from its request model (llmkit.config.requests): a field's
type, default, help and checks are written once there. Heavy imports (torch, transformers,
datasets) happen inside the commands, so `llmkit --help` starts in a fraction of a second.
A `UsageError` anywhere becomes one `error: ...` line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from typer.core import TyperGroup

from llmkit.config.base import validate
from llmkit.config.recipe import RecipeBase
from llmkit.config.requests import (
    EmbedRequest,
    EvalRequest,
    ExportRequest,
    Flag,
    GenerateRequest,
    RecipeRequest,
    Request,
    TokenizerRequest,
    TrainRequest,
)
from llmkit.errors import EXIT_USAGE, Fix, Interrupted, UsageError

R = TypeVar("R", bound=Request)
RB = TypeVar("RB", bound="RecipeBase")

# How the command line words the fix an error carries (llmkit.errors.Fix).
FIX_WORDING = {
    Fix.RESUME_OR_OVERWRITE: "{message}: pass --resume to continue it, --overwrite to replace "
    "it, or --output-dir for a new one",
    Fix.RESUME: "--resume: {message}",
    Fix.OVERWRITE: "{message}: pass --overwrite to replace it",
    Fix.RESUME_PARTIAL: "{message}: pass --resume to continue it, or delete it to start over",
    Fix.TRUST_REMOTE_CODE: "{message}: pass --trust-remote-code (or model.trust_remote_code: "
    "true) if you trust it",
}


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


def command(
    group: typer.Typer, name: str, request: type[R], **settings: Any
) -> Callable[[Callable[[R], None]], Callable[[R], None]]:
    """Register `fn(request)` as command `name`, its options built from the request model's
    fields; the values are validated into the model, problems named by their flags."""

    def register(fn: Callable[[R], None]) -> Callable[[R], None]:
        params = [
            _parameter(field_name, field, _flag(request, field_name))
            for field_name, field in request.model_fields.items()
            if _flag(request, field_name).cli
        ]

        def run(**values: Any) -> None:
            fn(parse(request, values))

        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        group.command(name, **settings)(run)
        return fn

    return register


def parse(request: type[R], values: dict[str, Any]) -> R:
    """The request from option values, or a UsageError naming each bad value by its flag."""
    return validate(request, values, name=lambda path: _flag_name(request, path))


def _flag(request: type[Request], name: str) -> Flag:
    return request.FLAGS.get(name, Flag())


def _parameter(name: str, field: Any, flag: Flag) -> inspect.Parameter:
    info = {"help": field.description, "rich_help_panel": flag.panel}
    option = typer.Argument(**info) if flag.argument else typer.Option(*flag.decls, **info)
    annotation = _plain(field.annotation)
    default = inspect.Parameter.empty if field.is_required() else field.get_default()
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, option],
    )


def _plain(annotation: Any) -> Any:
    """The type as typer reads it: no Annotated checks, Literal as str (the model checks them)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return str
    if origin is Annotated:
        return _plain(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = tuple(_plain(a) for a in get_args(annotation))
        return Union[args]  # noqa: UP007  # built from a tuple
    return annotation


def _flag_name(request: type[Request], path: str) -> str:
    """How an error names a field: the flag that sets it (`--top-p`, `--sample/--greedy`)."""
    if path not in request.model_fields:
        return path
    flag = _flag(request, path)
    if flag.argument:
        return path.upper()
    return flag.decls[0] if flag.decls else "--" + path.replace("_", "-")


TRAINING = {"context_settings": {"allow_interspersed_args": True}}


@app.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes, one line each."""
    from llmkit.config.loader import list_recipes

    for name, summary in list_recipes():
        typer.echo(f"{name:<40} {summary}")


@command(prep_app, "run", RecipeRequest, hidden=True)
def prep_cmd(req: RecipeRequest) -> None:
    """Prepare a recipe's data: read, clean, tokenize, pack, cache."""
    from llmkit.config.pretrain import PretrainRecipe

    recipe = _load(PretrainRecipe, req)
    if recipe is not None:
        from llmkit.commands.prep import run_prep

        run_prep(recipe)


@command(prep_app, "tokenizer", TokenizerRequest)
def prep_tokenizer_cmd(req: TokenizerRequest) -> None:
    """Train a BPE, WordPiece or Unigram tokenizer and save it as a HF fast tokenizer."""
    from llmkit.commands.prep import run_tokenizer

    run_tokenizer(req)


@command(app, "pretrain", TrainRequest, **TRAINING)
def pretrain_cmd(req: TrainRequest) -> None:
    """Pretrain a causal (GPT/Llama) or masked (BERT) LM; default: small GPT on Shakespeare."""
    from llmkit.config.pretrain import PretrainRecipe

    recipe = _load(PretrainRecipe, req)
    if recipe is not None and not _launched(recipe.train.devices):
        from llmkit.commands.pretrain import run_pretrain

        run_pretrain(recipe, resume=req.resume, overwrite=req.overwrite)


@command(app, "finetune", TrainRequest, **TRAINING)
def finetune_cmd(req: TrainRequest) -> None:
    """Fine-tune a model (LoRA or full): chat/instruction SFT, classification, text-to-text;
    default: LoRA on SmolLM2-135M-Instruct with chatterbot Q&A."""
    from llmkit.config.finetune import FinetuneRecipe

    recipe = _load(FinetuneRecipe, req)
    if recipe is not None and not _launched(recipe.train.devices):
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


def _launched(devices: int) -> bool:
    """`--devices N`: relaunch this same command on N processes with torchrun; True if this
    process launched the workers (and they have finished).

    The parent has validated the recipe; the children see WORLD_SIZE and run normally. On CPU
    the ranks talk over gloo and share the cores: each gets cores // N threads (torchrun would
    default to 1). `accelerate launch -m llmkit pretrain ...` works too, for multi-node or
    DeepSpeed/FSDP configs.
    """
    import os
    import signal
    import subprocess

    from llmkit.io.interrupt import EXIT_CODES
    from llmkit.train.arguments import in_distributed_run

    if devices <= 1 or in_distributed_run():
        return False
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={devices}", "-m", "llmkit", *sys.argv[1:]]
    print(f"launching {devices} processes: {' '.join(cmd[2:])}", flush=True)
    # torchrun runs in its own session, so a terminal's Ctrl-C reaches only us; we forward
    # each signal exactly once, torchrun passes it to every worker, and the workers agree
    # on a step, save and exit (see llmkit.train.interrupt).
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if not received:
            received.append(signum)
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in EXIT_CODES}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        sys.exit(EXIT_CODES[signal.Signals(received[0])])
    if code:
        sys.exit(code)
    return True


@command(app, "export", ExportRequest)
def export_cmd(req: ExportRequest) -> None:
    """Merge a LoRA adapter into its base model and save a plain Hugging Face folder."""
    from llmkit.commands.export import run_export

    run_export(req)


@command(app, "generate", GenerateRequest)
def generate_cmd(req: GenerateRequest) -> None:
    """Generate text from a causal LM: one prompt, stdin, or a file of prompts (batched)."""
    from llmkit.commands.generate import run_generate

    run_generate(req)


@command(app, "embed", EmbedRequest)
def embed_cmd(req: EmbedRequest) -> None:
    """Sentence embeddings: mean-pooled over tokens, L2-normalized (cosine = dot product)."""
    from llmkit.commands.embed import run_embed

    run_embed(req)


@command(app, "eval", EvalRequest)
def eval_cmd(req: EvalRequest) -> None:
    """Score predictions, generate then score, or measure perplexity; A/B with --model-b or
    --preds-b. With no options: the latest run (or SmolLM2) on embedded held-out data."""
    from llmkit.commands.eval import run_eval

    run_eval(req)


def main() -> None:
    """The console script. Every way a command can fail reaches the user as one `error:` line
    and exit code 2 (bad usage), 130/143 (interrupted), or a traceback (a bug in llmkit)."""
    import signal

    from typer import _click

    signal.signal(signal.SIGTERM, _terminated)  # training installs its own, graceful handler
    try:
        code = app(standalone_mode=False)
    except UsageError as e:
        print(e.render(FIX_WORDING), file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except _click.exceptions.ClickException as e:  # typer's parsing: a bad or missing option
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {e.format_message()}{where}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Interrupted as e:
        if e.main:
            print("continue with the same command and --resume", file=sys.stderr)
        raise
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    if code == 130:  # typer turns Ctrl-C into exit code 130
        print("interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


def _terminated(signum: int, frame: Any) -> None:
    print("terminated", file=sys.stderr)
    sys.exit(143)
