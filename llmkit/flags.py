"""Command-line pieces that need no command: `--version`, a request field as a typer option,
old spellings of renamed flags (hidden aliases, listed in CHANGELOG.md), how an error's fix
is worded as flags, and the command groups (lazy commands, a default subcommand). Cheap to
import: `llmkit --help` loads it."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import typer
from typer.core import TyperGroup

from llmkit.errors import EXIT_USAGE, Fix

if TYPE_CHECKING:
    from llmkit.config.base import Request


@dataclass(frozen=True)
class Flag:
    """How a request field appears on the command line."""

    decls: tuple[str, ...] = ()  # e.g. ("--model", "-m"), ("--sample/--greedy",); default --name
    panel: str | None = None  # the help panel it is listed under
    argument: bool = False  # positional
    cli: bool = True  # False: not an option (Python callers and tests set it)
    aliases: tuple[str, ...] = ()  # old spellings: still accepted, not shown (CHANGELOG)


def flag(*decls: str, panel: str | None = None, aliases: tuple[str, ...] = ()) -> Flag:
    return Flag(tuple(decls), panel, aliases=aliases)


ARGUMENT = Flag(argument=True)

# How the command line words the fix an error carries (llmkit.errors.Fix).
FIX_WORDING = {
    Fix.RESUME_OR_OVERWRITE: "{message}: pass --resume to continue it, --overwrite to replace "
    "it, or --output-dir for a new one",
    Fix.RESUME: "--resume: {message}",
    Fix.OVERWRITE: "{message}: pass --overwrite to replace it",
    Fix.RESUME_PARTIAL: "{message}: pass --resume to continue it, or delete it to start over",
    Fix.RESTART: "{message}: run the same command without --resume to start it again",
    Fix.RAISE_MAX_STEPS: "{message}: nothing to do; raise --max-steps to train further",
    Fix.TRUST_REMOTE_CODE: "{message}: pass --trust-remote-code (or model.trust_remote_code: "
    "true) if you trust it",
}


def flag_of(request: type[Request], name: str) -> Flag:
    return request.FLAGS.get(name, Flag())


def flag_name(request: type[Request], path: str) -> str:
    """How an error names a field: the flag that sets it (`--top-p`, `--sample/--greedy`)."""
    if path not in request.model_fields:
        return path
    spelled = flag_of(request, path)
    if spelled.argument:
        return path.upper()
    return spelled.decls[0] if spelled.decls else "--" + path.replace("_", "-")


ALIAS = "__alias"  # the parameter `field__alias0` carries the old spelling of `--field`


def print_version(value: bool) -> None:
    """`llmkit X.Y.Z` and the versions that decide behaviour, read from package metadata
    (importing torch to ask it would take seconds)."""
    if not value:
        return
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from llmkit import __version__

    parts = []
    for name in ("torch", "transformers", "peft"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} missing")
    typer.echo(f"llmkit {__version__} ({', '.join(parts)}, python {platform.python_version()})")
    from llmkit.versions import untested_libraries

    for line in untested_libraries():
        typer.echo(f"warning: {line}")
    raise typer.Exit()


def merge_aliases(values: dict[str, Any]) -> dict[str, Any]:
    """Option values with each old spelling's value moved onto its field (the new spelling
    wins when both are given)."""
    out = {k: v for k, v in values.items() if ALIAS not in k}
    for key, value in values.items():
        name = key.split(ALIAS)[0]
        if ALIAS in key and value is not None and name not in explicit(out):
            out[name] = value
    return out


def explicit(values: dict[str, Any]) -> set[str]:
    """Names whose option the user typed (click records how each value was set)."""
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return set(values)
    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {k for k in values if ctx.get_parameter_source(k) in typed}


def parameter(name: str, field: Any, flag: Flag) -> inspect.Parameter:
    """A typer option (or argument) for a request field: its type, default and help."""
    info = {"help": field.description, "rich_help_panel": flag.panel}
    option = typer.Argument(**info) if flag.argument else typer.Option(*flag.decls, **info)
    annotation = plain(field.annotation)
    default = inspect.Parameter.empty if field.is_required() else field.get_default()
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, option],
    )


def alias_parameter(name: str, index: int, field: Any, decl: str) -> inspect.Parameter:
    """A hidden option for an old spelling of a renamed flag (listed in CHANGELOG.md)."""
    option = typer.Option(decl, hidden=True, help=field.description)
    return inspect.Parameter(
        f"{name}{ALIAS}{index}",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[plain(field.annotation) | None, option],
    )


def plain(annotation: Any) -> Any:
    """The type as typer reads it: no Annotated checks, Literal as str (the model checks them)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return str
    if origin is Annotated:
        return plain(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = tuple(plain(a) for a in get_args(annotation))
        return Union[args]  # noqa: UP007  # built from a tuple
    return annotation


# --- the command groups ---------------------------------------------------------------------


class DefaultCommandGroup(TyperGroup):
    """A group whose unknown first word goes to its `run` command: `llmkit prep RECIPE` and
    `llmkit prep tokenizer ...` both work."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's vendored click.Context
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


# Commands built only when invoked: name -> (their help, a builder of the click command).
# Building one means building its request model (pydantic: ~0.25 s on these 2-core machines),
# which the root listing, the command people run most, must not pay for.
LAZY: dict[str, tuple[str, Callable[[], Any]]] = {}


class RootGroup(TyperGroup):
    """`llmkit --help` is the command people run most, so it builds no command and imports
    no pydantic (see LAZY); typer's rich formatter imports rich.markdown and pygments (~0.2 s),
    so the listing uses click's plain formatter with each command's first sentence
    unshortened. Every command's own --help keeps rich panels."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super(TyperGroup, self).format_help(ctx, formatter)  # click's Group, not typer's rich

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args:  # typer's rich error handler would swallow the plain help; exit 2 as click
            typer.echo(ctx.get_help())
            ctx.exit(EXIT_USAGE)
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *LAZY]

    def get_command(self, ctx: Any, name: str) -> Any:
        return LAZY[name][1]() if name in LAZY else super().get_command(ctx, name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        from typer._click.utils import make_default_short_help

        rows = [(name, cmd.get_short_help_str(limit=200)) for name, cmd in self.commands.items()]
        rows += [(name, make_default_short_help(doc, 200)) for name, (doc, _) in LAZY.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
