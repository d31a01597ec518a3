"""What every typed config shares: the section base, the one YAML reader, `--set`-style
overrides, and the one formatter that turns pydantic errors into lines naming the field.

    train.lr: Input should be greater than 0 (got -1)
    trian: unknown key; did you mean 'train'? (valid: name, description, task, ...)

Callers choose how a field is shown (`name=`): recipes prefix the file, the command line
shows the flag a field came from.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from llmkit.errors import UsageError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A config mapping: unknown keys are errors, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(file: Path) -> dict[str, Any]:
    """A recipe file as a mapping, or one line naming the file (and line:column) where not."""
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
    """Set `a.b.c=value` in the nested dict, creating mappings on the way. Values are YAML
    scalars, or lists and mappings in flow style (`[a, b]`, `{k: v}`)."""
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


def validate(
    schema: type[M], data: Any, *, name: Callable[[str], str] = str, prefix: str = ""
) -> M:
    """`schema.model_validate(data)`, or one UsageError listing every problem, each line
    `prefix` + the field as `name(path)` shows it + what is wrong."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        problems = [prefix + describe(err, schema, name) for err in e.errors()]
        raise UsageError(problems[0], problems=problems) from None


def describe(err: Any, schema: type[BaseModel], name: Callable[[str], str] = str) -> str:
    """One line for one pydantic error: `train.lr: Input should be a valid number (got 'x')`."""
    loc = [str(x) for x in err["loc"] if not str(x).startswith(("function-", "tagged-union"))]
    # Unions report each branch (`validation.float`, `validation.str`): keep the field path.
    loc = [x for x in loc if x not in ("float", "str", "int", "bool", "list[str]")]
    path = ".".join(loc)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        valid = fields_at(schema, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{name(path)}: unknown key{hint} (valid: {', '.join(valid)})"
    if not path:  # a check across fields names them itself
        return msg
    if ":" in msg.split(" ")[0]:
        # A cross-field check of a section names its field relative to the section.
        return f"{name(path)}.{msg}"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{name(path)}: {msg}{shown}"


def fields_at(schema: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the section at `loc` (empty if `loc` is not a section)."""
    model: Any = schema
    for part in loc:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)
