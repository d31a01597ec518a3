"""Recipe loading: YAML file -> dotted overrides -> typed `Recipe`, or one UsageError that lists
every problem with its field path.

Override syntax (`--set PATH=VALUE`, repeatable; the CLI wins over the file):
    --set train.lr=3.0e-4            numbers, booleans and null are parsed as YAML scalars
    --set data.sources=[a.txt,b.txt] lists and mappings in YAML flow style
    --set model.config_overrides.rope_theta=500000   keys inside free-form mappings
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmkit.config.schema import Recipe
from llmkit.errors import UsageError


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
    path: Path | str | None,
    overrides: list[str],
    *,
    default: str,
    schema: type[Recipe] = Recipe,
) -> Recipe:
    """Read a recipe file (or the shipped `default`), apply overrides, validate."""
    file = find_recipe(path if path is not None else default)
    data = read_yaml(file)
    data.setdefault("name", file.stem)
    for item in overrides:
        apply_override(data, item)
    return validate(data, schema, source=str(file))


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


def read_yaml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{file}: not UTF-8 text (byte {e.start})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{file}{where}: invalid YAML: {problem}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{file}: a recipe is a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in the nested dict, creating mappings on the way."""
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("--")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"override '{item}': expected PATH=VALUE, e.g. train.lr=3.0e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # a plain string such as `a: b` that YAML would misread
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UsageError(f"override '{item}': {part} is not a section")
        node = child
    node[parts[-1]] = value


def validate(data: dict[str, Any], schema: type[Recipe], *, source: str) -> Recipe:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        problems = [_describe(err, schema) for err in e.errors()]
        raise UsageError(
            f"{source}: {problems[0]}", problems=[f"{source}: {p}" for p in problems]
        ) from None


def _describe(err: Any, schema: type[BaseModel]) -> str:
    """One line for one pydantic error: `train.lr: Input should be a valid number (got 'x')`."""
    loc = [str(x) for x in err["loc"] if not str(x).startswith(("function-", "tagged-union"))]
    # Unions report each branch (`validation.float`, `validation.str`): keep the field path.
    loc = [x for x in loc if x not in ("float", "str", "int", "bool", "list[str]")]
    path = ".".join(loc)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        valid = _fields_at(schema, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{path}: unknown key{hint} (valid: {', '.join(valid)})"
    if ":" in msg.split(" ")[0]:
        # A cross-field check already names its field relative to its section.
        return f"{path + '.' if path else ''}{msg}"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{path}: {msg}{shown}"


def _fields_at(schema: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = schema
    for part in loc:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


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
