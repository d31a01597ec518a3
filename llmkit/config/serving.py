"""What `llmkit serve` takes (beside llmkit.config.requests, which holds the other
commands' requests; the CLI builds its options the same way)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from llmkit.config.requests import DecodingRequest
from llmkit.flags import ARGUMENT, Flag, flag

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
