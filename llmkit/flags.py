"""Command-line pieces that need no command: `--version`, and old spellings of renamed flags
(hidden aliases, listed in CHANGELOG.md). Cheap to import: `llmkit --help` loads it."""

from __future__ import annotations

from typing import Any

import typer

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
