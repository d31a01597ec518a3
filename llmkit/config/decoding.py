"""How to decode: the knobs of `llmkit generate` (and of `generate:` in a recipe).

Every field defaults to None, meaning "not set here": the model's own generation_config.json
(then transformers' defaults) decides. Values are layered
model generation_config < recipe `generate:` < CLI flags, so a flag always wins.

    generate:
      max_new_tokens: 128
      do_sample: true
      temperature: 0.7
      top_p: 0.9
      stop: ["\\n\\n"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from llmkit.config.base import Section, read_yaml, validate
from llmkit.errors import UsageError

# More new tokens than any model's context (the largest open models take ~10**6): 10**9 was
# accepted, then failed after the model had loaded.
MAX_NEW_TOKENS = 1_000_000
# Stop strings: OpenAI's count (4), and a length past any delimiter people stop at. Each is
# matched on every new token (llmkit.inference.stops.GeneratedStop decodes its length in
# tokens each step), so they are bounded like every other input: at the bound, 4 stops of
# 256 CJK characters cost 7.1 ms per step at batch 8 (a 776-token window), "\n\n" 0.4 ms
# (measured, SmolLM2's tokenizer), against ~65 ms per SmolLM2 step (~15 tokens/s at batch 1).
MAX_STOPS = 4
MAX_STOP_CHARS = 256
# Sequences per prompt (beams or samples): each is a row of the batch and its KV cache;
# -n 1000000 was accepted, then ran out of memory.
MAX_SEQUENCES = 64
# Options that only change anything when sampling; setting one implies do_sample=True unless
# do_sample is set (to False) explicitly, which then drops them (see `sampling_implied`).
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p")


class DecodingConfig(Section):
    """Decoding options. None = not set (the model's generation config decides)."""

    max_new_tokens: int | None = Field(
        default=None,
        gt=0,
        le=MAX_NEW_TOKENS,
        description="Most tokens to generate after the prompt (llmkit default 128).",
    )
    do_sample: bool | None = Field(
        default=None,
        description="Sample (true) or take the most likely token (false, greedy/beam). "
        "Setting temperature/top_k/top_p/min_p/typical_p implies true.",
    )
    temperature: float | None = Field(
        default=None,
        description="Divide logits by this before sampling: <1 sharper, >1 flatter.",
    )
    top_k: int | None = Field(
        default=None, ge=0, description="Sample among the k most likely tokens (0 = no limit)."
    )
    top_p: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Nucleus sampling: smallest token set with this much mass.",
    )
    min_p: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Drop tokens less likely than min_p x the top token's probability.",
    )
    typical_p: float | None = Field(
        default=None, gt=0, le=1, description="Locally typical sampling mass (1 = off)."
    )
    repetition_penalty: float | None = Field(
        default=None,
        gt=0,
        description="Divide logits of tokens already seen by this (>1 repeats less).",
    )
    no_repeat_ngram_size: int | None = Field(
        default=None, ge=0, description="Never repeat an n-gram of this size (0 = off)."
    )
    num_beams: int | None = Field(
        default=None, ge=1, le=MAX_SEQUENCES, description="Beam search width (1 = no beams)."
    )
    num_return_sequences: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SEQUENCES,
        description="Completions per prompt (needs sampling or that many beams).",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Seed torch before generating: same seed, same samples.",
    )
    stop: list[str] | None = Field(
        default=None,
        max_length=MAX_STOPS,
        description=f"Stop at the first of these strings (up to {MAX_STOPS}, of at most "
        f"{MAX_STOP_CHARS} characters) in the answer; it is cut from the output.",
    )

    @field_validator("temperature")
    @classmethod
    def _temperature_positive(cls, value: float | None) -> float | None:
        # Some APIs read temperature 0 as "greedy"; transformers would divide logits by zero.
        if value is not None and value <= 0:
            raise ValueError("must be > 0; for deterministic output use greedy decoding")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(s == "" for s in value):
            raise ValueError("a stop string cannot be empty")
        if value is not None and any(len(s) > MAX_STOP_CHARS for s in value):
            raise ValueError(f"a stop string can be at most {MAX_STOP_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _enough_beams(self) -> DecodingConfig:
        n, beams = self.num_return_sequences, self.num_beams
        if self.do_sample is False and n is not None and n > 1 and n > (beams or 1):
            raise ValueError(
                f"num_return_sequences={n} needs sampling or num_beams >= {n} "
                f"(greedy gives one answer per prompt)"
            )
        return self

    def is_set(self) -> dict[str, Any]:
        """The fields that were set, as a plain dict."""
        return self.model_dump(exclude_none=True)

    def over(self, base: DecodingConfig) -> DecodingConfig:
        """`base` with this config's set fields on top (this one wins), validated again."""
        return DecodingConfig.model_validate({**base.is_set(), **self.is_set()})

    def sampling_implied(self) -> bool | None:
        """do_sample as set, else True if any sampling-only option is set, else None."""
        if self.do_sample is not None:
            return self.do_sample
        if any(getattr(self, f) is not None for f in SAMPLING_FIELDS):
            return True
        return None


def load_decoding_from_yaml(path: Path | str) -> DecodingConfig:
    """The `generate:` mapping of a YAML recipe: a file, or a shipped name such as
    `generate/precise`. Other top-level keys are left to their owners; a recipe without
    `generate:` gives an empty config (nothing set).
    """
    from llmkit.config.loader import find_recipe

    file = find_recipe(path)
    section = read_yaml(file).get("generate")
    if section is None:
        return DecodingConfig()
    if not isinstance(section, dict):
        raise UsageError(f"recipe {file}: generate: expected a mapping of decoding options")
    return validate(
        DecodingConfig, section, name=lambda field: f"generate.{field}", prefix=f"recipe {file}: "
    )


def layered(recipe: Path | str | None, options: DecodingConfig) -> DecodingConfig:
    """A recipe's `generate:` options with `options` on top (those set win); the model's own
    generation_config sits under both when generating."""
    base = load_decoding_from_yaml(recipe) if recipe is not None else DecodingConfig()
    try:
        return options.over(base)
    except ValidationError as e:  # each part is valid, but the two clash
        raise UsageError(f"decoding options: {e.errors()[0]['msg']}") from None


def shell_escapes(text: str) -> str:
    """`--stop '\\n'` arrives as backslash + n from a shell; users mean a newline."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def checked_template(value: str | None) -> str | None:
    """A prompt template, unescaped and checked before any model loads."""
    from llmkit.errors import UsageError
    from llmkit.models.card import check_template

    if value is None:
        return None
    value = shell_escapes(value)
    try:
        check_template(value)
    except UsageError as e:  # pydantic reports ValueErrors with the field's name
        raise ValueError(e.message) from None
    return value
