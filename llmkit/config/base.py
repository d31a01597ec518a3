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
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from llmkit.errors import UsageError

if TYPE_CHECKING:
    from llmkit.flags import Flag

M = TypeVar("M", bound=BaseModel)


class Request(BaseModel):
    """What a command takes (llmkit.config.requests): one field per option; `FLAGS` spells
    the options whose flag differs from `--field-name`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    FLAGS: ClassVar[dict[str, Flag]] = {}


class Section(BaseModel):
    """A config mapping: unknown keys are errors, assignments are validated too, and every
    float must be finite (a NaN learning rate trains to NaN weights; `epochs: .inf` never ends)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# A recipe is a few dozen keys: anchors and aliases are fine (DRY sections), but a document
# that expands to more nodes than this is a "billion laughs" bomb, not a recipe.
MAX_YAML_NODES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last
    and drops the first block without a word)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # `<<: *defaults` merges are not duplicates
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice in one mapping (first on line {first[key] + 1})",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _expanded_nodes(node: Any, memo: dict[int, int]) -> int:
    """How many nodes the document holds once every alias is expanded (memoized per node, so
    this is linear in the file even when the expansion is exponential)."""
    if id(node) not in memo:
        children: list[Any] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        memo[id(node)] = 1 + sum(_expanded_nodes(c, memo) for c in children)
    return memo[id(node)]


def load_yaml(text: str) -> Any:
    """YAML text -> Python, strictly: duplicate keys and alias bombs are errors (yaml.YAMLError)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if (n := _expanded_nodes(node, {})) > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"the document expands to {n:,} nodes through its aliases "
                f"(more than {MAX_YAML_NODES:,})",
                node.start_mark,
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(file: Path) -> dict[str, Any]:
    """A recipe file as a mapping, or one line naming the file (and line:column) where not."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{file}: not UTF-8 text (byte {e.start})") from e
    try:
        data = load_yaml(text)
    except RecursionError:
        raise UsageError(f"{file}: invalid YAML: nested too deeply") from None
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
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # a plain string such as `a: [b` that YAML would misread
    if isinstance(value, dict | list) and not raw.lstrip().startswith(("{", "[")):
        value = raw  # `Translate:` is text; mappings and lists are written `{k: v}`, `[a, b]`
    set_path(data, key, value, item)


def set_path(data: dict[str, Any], key: str, value: Any, item: str | None = None) -> None:
    """Set `a.b.c` to `value` in the nested dict, creating mappings on the way (the Python
    API passes values as they are; `item` is the override as the user wrote it)."""
    if not key or any(not part for part in key.split(".")):
        raise UsageError(f"override '{item or key}': expected a field path such as train.lr")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UsageError(f"override '{item or key}': {part} is not a section")
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
