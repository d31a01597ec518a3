"""The decoding options as command-line flags, shared by every command that decodes
(`generate`, `chat`): declared once so both spell, document and check them alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from llmkit.config.base import Request
from llmkit.config.decoding import DecodingConfig, shell_escapes
from llmkit.flags import Flag, flag

DECODING = "Decoding (flags beat --recipe, which beats the model's defaults)"


class DecodingRequest(DecodingConfig, Request):
    """What every command that decodes takes (`generate`, `chat`): DecodingConfig's fields
    as flags under one panel, a --recipe whose generate: mapping sits under them, and
    trust_remote_code. Declared once here so both commands spell and check them alike."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        **{name: flag(panel=DECODING) for name in DecodingConfig.model_fields},
        "do_sample": flag("--sample/--greedy", panel=DECODING),
        "num_return_sequences": flag("--num-return-sequences", "-n", panel=DECODING),
    }

    recipe: Path | None = Field(
        None, description="YAML whose generate: mapping sets decoding options."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model. Off unless you trust it."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _unescape(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list):
            return value
        return [shell_escapes(s) if isinstance(s, str) else s for s in stops]

    def decoding(self) -> DecodingConfig:
        """The decoding options that were set."""
        names = DecodingConfig.model_fields
        return DecodingConfig.model_validate({k: v for k, v in self if k in names})
