"""What the commands that decode take: `generate`, `chat` and `serve` (beside
llmkit.config.requests, which holds the other commands' requests; the CLI builds options from
both alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from llmkit.config.base import Request
from llmkit.config.decoding import DecodingConfig, checked_template, shell_escapes
from llmkit.config.requests import BATCH_SIZE
from llmkit.flags import ARGUMENT, Flag, flag

DECODING = "Decoding (flags beat --recipe, which beats the model's defaults)"


class DecodingRequest(DecodingConfig, Request):
    """A command that decodes (generate, chat, serve): DecodingConfig's fields as flags under
    one panel, a --recipe whose generate: mapping sits under them, and the model and prompt
    format they apply to. Declared once so every command spells and checks them alike."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        **{name: flag(panel=DECODING) for name in DecodingConfig.model_fields},
        "do_sample": flag("--sample/--greedy", panel=DECODING),
        "num_return_sequences": flag("--num-return-sequences", "-n", panel=DECODING),
    }

    model: str | None = Field(
        None,
        description="Run folder, HF folder, LoRA adapter folder or hub name "
        "(default: embedded:smollm2).",
    )
    recipe: Path | None = Field(
        None, description="YAML whose generate: mapping sets decoding options."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model. Off unless you trust it."
    )
    template: str | None = Field(
        None, description="Prompt template with {source} (default: the run's own, if any)."
    )
    system: str | None = Field(None, description="System prompt (implies --chat).")

    @field_validator("stop", mode="before")
    @classmethod
    def _unescape(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list):
            return value
        return [shell_escapes(s) if isinstance(s, str) else s for s in stops]

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return checked_template(value)

    def decoding(self) -> DecodingConfig:
        """The decoding options that were set."""
        names = DecodingConfig.model_fields
        return DecodingConfig.model_validate({k: v for k, v in self if k in names})


class GenerateRequest(DecodingRequest):
    """`llmkit generate`."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        **DecodingRequest.FLAGS,
        "prompt": ARGUMENT,
        "model": flag("--model", "-m"),
        "input": flag("--input", "-i"),
        "output": flag("--output", "-o"),
        "json_": flag("--json"),
        "chat": flag("--chat/--no-chat"),
    }

    prompt: str | None = Field(
        None, description="Text to continue; '-' reads it from stdin (default: Once upon a time)."
    )
    chat: bool | None = Field(
        None,
        description="Wrap the prompt in the chat template (default: as the run was trained; "
        "other models: no).",
    )
    stream: bool = Field(False, description="Print tokens as they are generated.")
    input: Path | None = Field(None, description="Prompts file: .txt (one per line) or .jsonl.")
    output: Path | None = Field(None, description="JSONL results (default: stdout).")
    field: str | None = Field(None, description="JSONL field holding the prompt (default: prompt).")
    batch_size: int = Field(BATCH_SIZE, ge=1, description="Prompts per generate call.")
    json_: bool = Field(False, description="Print JSON on stdout.")
    resume: bool = Field(
        False, description="Continue an interrupted --input/--output job after its last batch."
    )
    overwrite: bool = Field(False, description="Replace an existing --output file.")


class ChatRequest(DecodingRequest):
    """`llmkit chat`: a conversation on the terminal (or through a pipe)."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        **DecodingRequest.FLAGS,
        "model": ARGUMENT,
        # One streamed answer per turn: no beams, no alternatives (a recipe setting them is
        # refused by the command).
        "num_beams": Flag(cli=False),
        "num_return_sequences": Flag(cli=False),
    }

    model: str | None = Field(
        None,
        description="Run folder, HF folder, LoRA adapter folder or hub name of a causal LM "
        "with a chat template (default: embedded:smollm2).",
    )
    system: str | None = Field(
        None, description="System prompt (default: the run's own, if any); /system changes it."
    )


LIMITS = "Limits (each refusal is a 4xx in OpenAI's error shape; the server keeps serving)"
SERVER = "Server"


class ServeRequest(DecodingRequest):
    """`llmkit serve`: the decoding options are the defaults of every request."""

    FLAGS: ClassVar[dict[str, Flag]] = {
        **DecodingRequest.FLAGS,
        "model": ARGUMENT,
        # One answer per request (OpenAI's n=1): beams and several sequences do not apply.
        "num_beams": Flag(cli=False),
        "num_return_sequences": Flag(cli=False),
        **{name: flag(panel=SERVER) for name in ("host", "port", "name", "api_key")},
        "batching": flag("--batching/--no-batching", panel=SERVER),
        "cache_tokens": flag(panel=SERVER),
        **{
            name: flag(panel=LIMITS)
            for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens_limit")
        },
        "max_concurrent": flag(panel=LIMITS),
    }

    system: str | None = Field(
        None, description="System prompt for conversations that bring none (default: the run's)."
    )
    host: str = Field(
        "127.0.0.1", description="Address to listen on; 0.0.0.0 opens the model to your network."
    )
    port: int = Field(8000, ge=0, le=65535, description="Port (0: any free one, printed).")
    name: str | None = Field(
        None, description="Model id clients send (default: the folder's name, or smollm2)."
    )
    api_key: str | None = Field(
        None,
        description="Require 'Authorization: Bearer KEY' (default: $LLMKIT_API_KEY, which "
        "keeps the key out of `ps`).",
    )
    batching: bool = Field(
        True, description="Answer concurrent requests in one continuous batch (paged attention)."
    )
    cache_tokens: int | None = Field(
        None,
        ge=256,
        description="KV cache for continuous batching, in tokens (default: 16384 on CPU; a "
        "GPU uses 90% of its free memory).",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body in bytes.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longest prompt in tokens (default: the model's context)."
    )
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask.")
    max_concurrent: int = Field(
        64, ge=1, description="Requests in flight at once; more get 429 (clients retry)."
    )
