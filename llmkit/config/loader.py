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
from typing import Any, TypeVar

import yaml

from llmkit.config.base import apply_override, read_yaml, set_path, validate
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


def load_recipe(
    schema: type[R],
    path: Path | str | None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> R:
    """Read a recipe file (or the schema's shipped default), apply overrides (`PATH=VALUE`
    strings from the CLI, then `values` by dotted path from Python), validate."""
    file = find_recipe(path if path is not None else schema.DEFAULT_RECIPE)
    data = read_yaml(file)
    data.setdefault("name", file.stem)
    for item in overrides or []:
        apply_override(data, item)
    for key, value in (values or {}).items():
        set_path(data, key, value)
    return validate(schema, data, prefix=f"{file}: ")


def find_recipe(ref: Path | str) -> Path:
    """A path, or a shipped recipe name such as `pretrain/gpt-shakespeare` (or `gpt-shakespeare`
    where one shipped recipe has that name)."""
    p = Path(ref)
    if p.is_file():
        return p
    if p.exists():
        raise UsageError(f"recipe {p} is not a file")
    return shipped_recipe(str(ref))


def shipped_recipe(name: str) -> Path:
    """The file of a shipped recipe, by its listed name (`pretrain/tiny-cpu`) or, when unique,
    its last part (`tiny-cpu`); an unknown name is one error naming the closest ones."""
    names = [n for n, _ in list_recipes()]
    key = name.removesuffix(".yaml")
    by_stem = [n for n in names if n.rsplit("/", 1)[-1] == key]
    if key in names or len(by_stem) == 1:
        return RECIPES_DIR / f"{key if key in names else by_stem[0]}.yaml"
    starts = [n for n in names if n.startswith(key) or n.rsplit("/", 1)[-1].startswith(key)]
    close = by_stem or starts[:3] or difflib.get_close_matches(key, names, n=1)
    if not close:  # a misspelt last part: `tiny-cpo` is far from `pretrain/tiny-cpu` as a whole
        stems = {n.rsplit("/", 1)[-1]: n for n in names}
        close = [stems[s] for s in difflib.get_close_matches(key, list(stems), n=1)]
    hint = f"did you mean {' or '.join(close)}?" if close else "see `llmkit recipes`"
    raise UsageError(f"recipe {name} not found ({hint})")


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
