"""Recipe loading: YAML file -> dotted overrides -> typed recipe, or one UsageError that lists
every problem with its field path.

Override syntax (`--set PATH=VALUE`, repeatable; the CLI wins over the file):
    --set train.lr=3.0e-4            numbers, booleans and null are parsed as YAML scalars
    --set data.sources=[a.txt,b.txt] lists and mappings in YAML flow style
    --set model.config_overrides.rope_theta=500000   keys inside free-form mappings
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TypeVar

import yaml

from llmkit.config.base import apply_override, read_yaml, validate
from llmkit.config.recipe import RecipeBase
from llmkit.errors import UsageError

R = TypeVar("R", bound=RecipeBase)


def shipped_recipes_dir() -> Path:
    """The shipped recipes: `recipes/` in a checkout, `llmkit/recipes/` inside a wheel.

    Both are the package `llmkit.recipes` (pyproject maps it onto the top-level folder), so
    one lookup serves an editable install and a wheel alike, with no source-tree fallback
    that could hide recipes missing from the wheel (it did once).
    """
    from importlib.resources import files

    return Path(str(files("llmkit.recipes")))


RECIPES_DIR = shipped_recipes_dir()


def load_recipe(schema: type[R], path: Path | str | None, overrides: list[str] | None = None) -> R:
    """Read a recipe file (or the schema's shipped default), apply overrides, validate."""
    file = find_recipe(path if path is not None else schema.DEFAULT_RECIPE)
    data = read_yaml(file)
    data.setdefault("name", file.stem)
    for item in overrides or []:
        apply_override(data, item)
    return validate(schema, data, prefix=f"{file}: ")


def find_recipe(ref: Path | str) -> Path:
    """A path, or a shipped recipe name such as `pretrain/gpt-shakespeare`."""
    p = Path(ref)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / p.with_suffix(".yaml")
    if shipped.is_file():
        return shipped
    if p.exists():
        raise UsageError(f"recipe {p} is not a file")
    names = [n for n, _ in list_recipes()]
    close = difflib.get_close_matches(str(ref), names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else " (see `llmkit recipes`)"
    raise UsageError(f"recipe {ref} not found{hint}")


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of every shipped recipe, sorted by name."""
    out = []
    for f in sorted(RECIPES_DIR.rglob("*.yaml")):
        try:
            desc = str((yaml.safe_load(f.read_text()) or {}).get("description", ""))
        except yaml.YAMLError:
            desc = "(invalid YAML)"
        out.append((str(f.relative_to(RECIPES_DIR).with_suffix("")), desc))
    return out
