"""The checks in front of `llmkit serve`: what transformers' server leaves to the deployer.

transformers' OpenAI-compatible server (`transformers serve`) answers every request it can
parse, with no key, no size limit and errors in FastAPI's `{"detail": ...}` shape. `Guard` is
a plain ASGI middleware that sits in front of it and, before a request reaches the model:

- routes: only the four OpenAI endpoints and /health; transformers' own `/reset`,
  `/load_model` and others would unload or swap the one model llmkit serves;
- `Authorization: Bearer KEY` when a key is set (compared in constant time; /health is open
  so a load balancer can probe it);
- body size (read in chunks, refused past the limit without buffering the rest), JSON, the
  OpenAI fields (pydantic), `max_tokens` within the cap and the context, prompt length in
  tokens, concurrent requests;
- what every other field costs once decoded, before any work: a small body can still ask
  for a lot (one 5,000-character stop string took the server from 1.2 to 3.5 GB): stop
  strings (4, of at most 256 characters), messages (2,048), tools (128, counted in the
  prompt), logit_bias (300 entries, token ids of this vocabulary, -100..100), n (1), seed,
  temperature and frequency_penalty in the ranges transformers can decode with, and
  `generation_config` / `chat_template_kwargs`, which would bypass every limit, refused;
- fills in llmkit's defaults (`max_tokens`, the run's prompt template) so every request is
  decoded the way `llmkit generate` decodes it.

Every refusal is a 4xx in OpenAI's error shape, `{"error": {"message", "type", "param",
"code"}}`, which the official client raises as `BadRequestError`, `AuthenticationError`...
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmkit.config.decoding import MAX_STOP_CHARS, MAX_STOPS

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ROUTES = {("GET", "/health"), ("GET", "/v1/models"), ("POST", CHAT), ("POST", COMPLETIONS)}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Defaults suit one CPU serving a 135M model."""

    api_key: str | None = None
    # 1 MiB holds a 250k-token prompt, far past any context llmkit serves on one machine.
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's context
    max_tokens: int = 1024  # per answer; a CPU decodes ~20 tokens/s per sequence
    max_concurrent: int = 64  # in flight at once; more get 429 (clients retry)


# Fixed limits per request field (OpenAI's own where it has one). Each bounds work done
# before the prompt-token check, or work that check does not see.
MAX_MESSAGES = 2048  # OpenAI's limit; each is a pass of the chat template
MAX_TOOLS = 128  # OpenAI's limit on functions
MAX_LOGIT_BIAS = 300  # entries; transformers builds one bias processor entry each
# Below this, logits / temperature overflows float32 to inf and sampling fails (NaN).
MIN_TEMPERATURE = 0.01
# Fields that would bypass the checks above: a whole GenerationConfig (any max_new_tokens,
# num_beams...) and keyword arguments for the chat template (ones apply_chat_template takes
# itself crash it).
REFUSED_FIELDS = {
    "generation_config": "llmkit serve decodes with its own options; set max_tokens, "
    "temperature, top_p, stop or seed",
    "chat_template_kwargs": "the model's chat template renders every conversation as "
    "llmkit chat renders it",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code = param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> Any:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- the OpenAI request fields llmkit checks (others pass to transformers, which refuses
# the ones it does not know) ----------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return " ".join(p.text for p in self.content)  # as transformers joins text parts


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=1)  # one answer per request (transformers: same)
    stream: bool | None = None
    stop: str | list[str] | None = Field(None)
    # torch.manual_seed raises past 2**64-1 (inside transformers' handler: a 500).
    seed: int | None = Field(None, ge=0, lt=2**64)
    # transformers maps it to repetition_penalty 1 + value, which must be positive.
    frequency_penalty: float | None = Field(None, gt=-1, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)

    @field_validator("temperature")
    @classmethod
    def _decodable_temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or from {MIN_TEMPERATURE} to 2")
        return value

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ApiError(
                400,
                f"stop: up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} "
                "characters each",
                param="stop",
            )
        return stops


class ChatBody(_Common):
    messages: list[_ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)


class CompletionBody(_Common):
    prompt: str


# --- the middleware ---------------------------------------------------------------------------

# Given a checked body, the prompt's token count (chat: rendered by the chat template).
PromptCounter = Callable[[str, dict[str, Any]], int]


@dataclass
class Served:
    """What the guard needs to know about the one model being served."""

    name: str
    vocab_size: int  # token ids a logit_bias may name
    context: int | None  # max positions; None: unbounded (no position table)
    default_max_tokens: int
    count_prompt: PromptCounter
    prepare: Callable[[str, dict[str, Any]], None]  # fills llmkit's defaults into a body


class Guard:
    def __init__(self, app: ASGIApp, served: Served, limits: Limits) -> None:
        self.app, self.served, self.limits = app, served, limits
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: startup/shutdown of the model
            await self.app(scope, receive, send)
            return
        try:
            route = (scope["method"], scope["path"])
            if route not in ROUTES:
                raise ApiError(404, f"no route {scope['method']} {scope['path']}", code="not_found")
            if route == ("GET", "/health"):
                await self.app(scope, receive, send)
                return
            self._authorize(scope)
            if scope["method"] == "GET":
                await self.app(scope, receive, send)
                return
            if self.in_flight >= self.limits.max_concurrent:
                raise ApiError(
                    429,
                    f"more than {self.limits.max_concurrent} requests in flight; retry shortly",
                    kind="rate_limit_error",
                )
            raw = await self._read_body(scope, receive)
            body = self._check(scope["path"], raw)
        except ApiError as e:
            await _respond(send, e.status, e.body())
            return
        data = json.dumps(body).encode()
        # The body is now checked JSON (curl sends form content-type by default) and its
        # length changed with the filled-in defaults.
        kept = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")
        ]
        headers = [
            *kept,
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(data)),
        ]
        self.in_flight += 1
        try:
            await self.app({**scope, "headers": headers}, _replay(data, receive), send)
        finally:
            self.in_flight -= 1

    def _authorize(self, scope: Scope) -> None:
        key = self.limits.api_key
        if key is None:
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(
                401,
                "missing or incorrect API key (Authorization: Bearer KEY)",
                code="invalid_api_key",
            )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.limits.max_body_bytes
        too_big = ApiError(413, f"request body over {limit} bytes", code="request_too_large")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _check(self, path: str, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e})") from None
        except RecursionError:  # `[[[[...`: 1 MiB nests far past Python's stack
            raise ApiError(400, "the body's JSON is nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        for name, why in REFUSED_FIELDS.items():
            if name in body:
                raise ApiError(400, f"{name}: not accepted here: {why}", param=name)
        schema: type[_Common] = ChatBody if path == CHAT else CompletionBody
        try:
            checked = schema.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(400, f"{param}: {first['msg']}", param=param) from None
        served = self.served
        if checked.model is not None and checked.model != served.name:
            raise ApiError(
                404,
                f"model {checked.model!r} is not served here; this server serves {served.name!r}",
                param="model",
                code="model_not_found",
            )
        body["model"] = served.name
        if isinstance(checked, ChatBody):  # transformers reads plain-text contents for LLMs
            body["messages"] = [
                {**m.model_dump(exclude_none=True), "content": m.text()} for m in checked.messages
            ]
        checked.stops()
        self._check_logit_bias(checked.logit_bias)
        self._check_lengths(path, body, checked)
        served.prepare(path, body)
        return body

    def _check_logit_bias(self, bias: dict[str, float] | None) -> None:
        vocab = self.served.vocab_size
        for key, value in (bias or {}).items():
            # isascii: "²".isdigit() is true; 10 digits: int() of 4,300+ digits raises.
            is_id = key.isascii() and key.isdigit() and len(key) <= 10
            if not is_id or int(key) >= vocab or not -100 <= value <= 100:
                raise ApiError(
                    400,
                    f"logit_bias: {key!r:.40}: {value}: keys are token ids from 0 to "
                    f"{vocab - 1}, values from -100 to 100",
                    param="logit_bias",
                )

    def _check_lengths(self, path: str, body: dict[str, Any], checked: _Common) -> None:
        asked = getattr(checked, "max_completion_tokens", None) or checked.max_tokens
        cap = self.limits.max_tokens
        if asked is not None and asked > cap:
            raise ApiError(
                400, f"max_tokens {asked} is over this server's limit of {cap}", param="max_tokens"
            )
        new = asked or min(self.served.default_max_tokens, cap)
        body["max_tokens"] = new
        body.pop("max_completion_tokens", None)
        n_prompt = self.served.count_prompt(path, body)
        context, limit = self.served.context, self.limits.max_prompt_tokens
        if limit is not None and n_prompt > limit:
            raise ApiError(
                400,
                f"the prompt is {n_prompt} tokens; this server takes at most {limit}",
                code="context_length_exceeded",
            )
        if context is not None and n_prompt + new > context:
            raise ApiError(
                400,
                f"the prompt ({n_prompt} tokens) and max_tokens ({new}) exceed "
                f"the model's context of {context} tokens",
                code="context_length_exceeded",
            )


def _replay(raw: bytes, original: Receive) -> Receive:
    """A `receive` that hands the (checked, completed) body over once, then passes on the
    connection's own messages, so a client that goes away still stops its generation."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await original()  # the body is consumed: next comes the disconnect

    return receive


async def _respond(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
