"""Property tests: whatever a user types, the recipe loader and the override parser either give
a valid recipe or a UsageError (exit 2, one message) — never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.config.base import apply_override, validate
from llmkit.config.loader import load_recipe
from llmkit.config.pretrain import PretrainRecipe
from llmkit.errors import UsageError

SECTIONS = {
    name: list(f.annotation.model_fields)  # type: ignore[union-attr]
    for name, f in PretrainRecipe.model_fields.items()
    if hasattr(f.annotation, "model_fields")
}
KEYS = st.sampled_from([*PretrainRecipe.model_fields, "trian", "lr", ""])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["2e-5", "cosine", "bert", "gpt2", "1e400", "-1"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def recipes(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed section/field names with arbitrary values, plus stray keys."""
    data: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(list(SECTIONS)), max_size=4, unique=True)):
        fields = st.sampled_from([*SECTIONS[section], "typo"])
        data[section] = draw(st.dictionaries(fields, VALUES, max_size=4))
    data.update(draw(st.dictionaries(KEYS, VALUES, max_size=2)))
    return data


def _loads_or_usage_error(text: str, overrides: list[str] = []) -> None:  # noqa: B006
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            recipe = load_recipe(PretrainRecipe, path, overrides)
        except UsageError as e:
            assert str(e) and all(p.strip() for p in e.problems)
            assert e.render().startswith("error: ")
        else:
            assert isinstance(recipe, PretrainRecipe)
            PretrainRecipe.model_validate(yaml.safe_load(recipe.to_yaml()))  # round-trips


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes())
def test_structured_recipes_load_or_fail_cleanly(data: dict[str, Any]) -> None:
    _loads_or_usage_error(yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_fails_cleanly(text: str) -> None:
    _loads_or_usage_error(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=4))
def test_arbitrary_overrides_apply_or_fail_cleanly(overrides: list[str]) -> None:
    _loads_or_usage_error("name: p\n", overrides)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            "train.lr",
            "train.max_steps",
            "data.block_size",
            "model.arch",
            "data.sources",
            "train.warmup",
            "data.validation",
            "model.config_overrides.x",
        ]
    ),
    VALUES,
)
def test_override_of_a_real_field_with_any_value(path: str, value: Any) -> None:
    data: dict[str, Any] = {}
    try:
        apply_override(data, f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        validate(PretrainRecipe, data, prefix="cli: ")
    except UsageError as e:
        assert e.render().startswith("error: ")
