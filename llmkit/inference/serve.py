"""One model behind an OpenAI-compatible HTTP API, on transformers' own server.

transformers 5 ships the server (`transformers serve`: FastAPI + uvicorn, the OpenAI request
and response types, streaming, continuous batching). Since 5.25 the model runs in a process
of its own (the engine, spawned), which the API server's handlers send requests to; the API
server keeps only the model's config and tokenizer. llmkit adds what the server lacks for
serving a run:

- the model is the one llmkit loads (run folder, LoRA adapter merged, plain folder, embedded
  default): `RunLoader` loads it in the engine's process with llmkit's own loader, pinned
  (never unloaded when idle, never swapped by name);
- requests are decoded as `llmkit generate` decodes them: its options become the model's
  generation_config, and the run's prompt template and system prompt apply;
- the checks of `openai_api.Guard`, in front of everything;
- continuous batching (paged attention, all concurrent requests in one forward pass) runs on
  CPU too: 32 concurrent chat requests of 32 tokens ran at 112.8 tokens/s against 18.6 one at
  a time with SmolLM2 (benchmarks/bench_serve.py, transformers 5.24). It takes each request's
  max_tokens, temperature and top-p, but ignores stop strings, seeds, penalties and logit
  bias, so a request that asks for one of those is answered alone by `model.generate` in the
  engine's process (`generate_alone`), correctly;
- OpenAI's `stop` strings are not part of the answer; transformers returns them: cut here,
  held back in streams until it is clear they are not the start of a stop string.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from transformers.cli.serving.model_manager import ModelLoader

from llmkit.errors import UsageError
from llmkit.inference.generate import DEFAULT_MAX_NEW_TOKENS, StopCut, cut_at_stop
from llmkit.inference.openai_api import CHAT, ApiError, Guard, Limits, Served
from llmkit.models.card import PromptFormat
from llmkit.models.load import LoadedModel

# Whether the request being handled may join the continuous batch (set per request task).
_BATCHABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("batchable", default=False)
# Fields that change decoding per request: such a request is answered on its own.
_PER_REQUEST = ("stop", "seed", "frequency_penalty", "presence_penalty", "logit_bias")


@dataclass(frozen=True)
class ServedModel:
    """What the API server keeps of the model it serves: no weights (those live in the
    engine's process, which loads them again from `ref`)."""

    ref: str
    trust_remote_code: bool
    config: Any  # the model's PretrainedConfig (a LoRA run: its base model's)
    tokenizer: Any
    generation_config: Any  # generate's options on the model's own (generation_config_for)
    description: str

    @classmethod
    def from_loaded(
        cls, ref: str, loaded: LoadedModel, generation_config: Any, trust_remote_code: bool
    ) -> ServedModel:
        model, tokenizer = servable(loaded)
        return cls(
            ref, trust_remote_code, model.config, tokenizer, generation_config, loaded.description
        )


def servable(loaded: LoadedModel) -> tuple[Any, Any]:
    """The model as it answers: a causal LM, its LoRA adapter merged (one matmul per layer,
    not three)."""
    if loaded.is_encoder_decoder:
        raise UsageError(
            "llmkit serve answers with causal LMs; an encoder-decoder (T5) answers through "
            "llmkit generate"
        )
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model, loaded.tokenizer


class RunLoader(ModelLoader):
    """How the engine's process loads the served model: with llmkit's loader, the generation
    config set as `llmkit generate` would. Pickled into that process (spawn), so it carries
    only the reference and the options, not the tokenizer or the config."""

    def __init__(self, served: ServedModel) -> None:
        super().__init__(device="cpu")
        self.ref, self.trust_remote_code = served.ref, served.trust_remote_code
        self.generation = served.generation_config.to_dict()
        self.served: ServedModel | None = served  # the API server's side only

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "served": None}

    def load_config(self, model_id: str) -> tuple[Any, Any]:
        assert self.served is not None
        return self.served.config, self.served.generation_config

    def load_processor(self, model_id: str) -> Any:
        assert self.served is not None
        return self.served.tokenizer

    def load_model_and_processor(self, model_id: str, on_progress: Any = None) -> Any:
        from transformers import GenerationConfig

        from llmkit.models.load import load_generator

        loaded = load_generator(
            self.ref, trust_remote_code=self.trust_remote_code, use="llmkit serve"
        )
        model, tokenizer = servable(loaded)
        model.generation_config = GenerationConfig.from_dict(self.generation)
        return model, tokenizer


def generate_alone(
    model: Any, processor: Any, inputs: dict[str, Any], kwargs: dict[str, Any], streamer: Any = None
) -> list[int]:
    """One request's `model.generate`, in the engine's process, beside the continuous batch:
    for the options batching ignores (stop strings, seed, penalties, logit bias)."""
    import torch

    kwargs = dict(kwargs)
    seed = kwargs.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    tensors = {
        k: (torch.as_tensor([v]) if isinstance(v, list) else v).to(model.device)
        for k, v in inputs.items()
    }
    settings = {k: v for k, v in kwargs.items() if v is not None}
    out = model.generate(**tensors, **settings, tokenizer=processor, streamer=streamer)
    return list(out[0, tensors["input_ids"].shape[-1] :].tolist())


def build_app(
    served: ServedModel,
    *,
    name: str,
    fmt: PromptFormat,
    limits: Limits,
    batching: bool = True,
    cache_tokens: int | None = None,
) -> Any:
    """The ASGI app: transformers' server for `served`, behind llmkit's Guard. Starts the
    engine's process and waits for it to load the model."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import EngineClient, ModelManager
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.utils import (
        GenerationState,
        Modality,
        canonical_model_id,
        prompt_length,
    )

    base = served.generation_config
    loader = RunLoader(served)
    if loader.get_model_modality(served.config, served.tokenizer) != Modality.LLM:
        raise UsageError(f"{name} is not a text-only causal LM: llmkit serve cannot serve it")
    state = GenerationState(continuous_batching=batching, cb_config=_cache_config(cache_tokens))

    class Engine(EngineClient):
        """The served model's client: requests that batching would decode wrongly go to
        `generate_alone` in the same process."""

        def _alone(self) -> bool:
            return bool(self.use_cb) and not _BATCHABLE.get()

        async def generate_non_streaming(self, inputs: dict, kwargs: dict) -> Any:
            if not self._alone():
                return await super().generate_non_streaming(inputs, kwargs)
            ids = await self.submit(generate_alone, dict(inputs), kwargs)
            return self.processor.decode(ids, skip_special_tokens=True), prompt_length(inputs), ids

        def generate_streaming(
            self, inputs: dict, kwargs: dict, response_parser: Any = None
        ) -> Any:
            if not self._alone():
                return super().generate_streaming(inputs, kwargs, response_parser)
            call = ("submit", (generate_alone, (dict(inputs), kwargs)), response_parser)
            return self._send_streaming_request(*call)

    class Pinned(ModelManager):
        """The one model llmkit loaded, its process started now and never stopped when idle."""

        def preload_engine(self, force_model: str, engine_connection: Any) -> None:
            engine = Engine(force_model, self.loader, self.generation_state)
            # Answers name it as clients do ("smollm2"); requests find it by its canonical id.
            self.engines[canonical_model_id(force_model)] = engine
            try:
                engine.start()
            except RuntimeError as e:  # the engine's process failed to load the model
                raise UsageError(f"llmkit serve: the model's process failed: {e}") from None

        def list_models(self, cache_dir: str | None = None) -> list[dict[str, Any]]:
            return [{"id": name, "object": "model", "created": 0, "owned_by": "llmkit"}]

    manager = Pinned(loader, state, model_timeout=-1, force_model=name)

    class Chat(_StopCutting, ChatCompletionHandler):
        text_of = staticmethod(_chat_text)

    class Completion(_StopCutting, CompletionHandler):
        text_of = staticmethod(_completion_text)

    chat, completion = Chat(manager, state), Completion(manager, state)
    chat.base_config = completion.base_config = base
    unused: Any = None  # /v1/responses, audio and systemone: closed by the Guard
    app: Any = build_server(manager, chat, completion, unused, unused, unused)
    _openai_errors(app)
    tokenizer = served.tokenizer
    guarded = Served(
        name=name,
        context=getattr(served.config, "max_position_embeddings", None),
        default_max_tokens=int(base.max_new_tokens or DEFAULT_MAX_NEW_TOKENS),
        count_prompt=lambda path, body: _prompt_tokens(tokenizer, path, body),
        prepare=lambda path, body: _apply_format(fmt, path, body),
    )
    return Guard(app, guarded, limits)


# On CPU transformers sizes the paged KV cache at 60-90% of free RAM (~14 GB of these 24 GB
# machines, computed): the first request took 22.5 s, against 5.3 s with this cap (measured).
# 16k tokens hold 32 requests of 512 tokens: 0.7 GB for SmolLM2 (30 layers x 2 x 3 KV heads
# x 64 dims x 4 bytes per token).
CPU_CACHE_TOKENS = 16384


def _cache_config(cache_tokens: int | None) -> Any:
    import torch
    from transformers import ContinuousBatchingConfig

    if cache_tokens is None and torch.cuda.is_available():
        return None  # a GPU: transformers' own sizing from free memory
    page = ContinuousBatchingConfig().page_size
    tokens = cache_tokens or CPU_CACHE_TOKENS
    return ContinuousBatchingConfig(num_blocks=max(1, -(-tokens // page)))


def _chat_text(choice: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    part = choice.get("delta", choice.get("message"))
    return (part, "content") if isinstance(part, dict) else None


def _completion_text(choice: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    return choice, "text"


class _StopCutting:
    """Request handler mixin: decides batching per request, and drops OpenAI `stop` strings
    (and everything after them) from answers, whole or streamed."""

    base_config: Any
    text_of: Any  # choice -> (the dict holding its text, the key), per endpoint

    async def handle_request(self, body: dict[str, Any], request_id: str) -> Any:
        _BATCHABLE.set(_batchable(body, self.base_config))
        stops = _stops(body)
        response = await super().handle_request(body, request_id)  # type: ignore[misc]
        if not stops:
            return response
        if body.get("stream"):
            response.body_iterator = self._cut_stream(response.body_iterator, stops)
            return response
        return self._cut_response(response, stops)

    def _cut_response(self, response: Any, stops: list[str]) -> Any:
        from fastapi.responses import JSONResponse

        data = json.loads(response.body)
        for choice in data.get("choices", []):
            found = self.text_of(choice)
            if found and isinstance(found[0].get(found[1]), str):
                found[0][found[1]] = cut_at_stop(found[0][found[1]], stops)
        return JSONResponse(data, status_code=response.status_code)

    async def _cut_stream(self, events: AsyncIterator[str], stops: list[str]) -> AsyncIterator[str]:
        """The stream's server-sent events with the stop strings cut from their text: what
        may begin a stop string waits for the next event, and is sent with the last one."""
        cut = StopCut(stops)
        async for chunk in events:
            out = []
            for event in chunk.split("\n\n"):
                if not event.startswith("data: {"):
                    out.append(event)
                    continue
                data = json.loads(event[len("data: ") :])
                for choice in data.get("choices", []):
                    found = self.text_of(choice)
                    if found and isinstance(found[0].get(found[1]), str):
                        found[0][found[1]] = cut.feed(found[0][found[1]])
                    if choice.get("finish_reason") is not None and found:
                        found[0][found[1]] = (found[0].get(found[1]) or "") + cut.flush()
                out.append("data: " + json.dumps(data, ensure_ascii=False))
            yield "\n\n".join(out)


def _stops(body: dict[str, Any]) -> list[str]:
    stops = body.get("stop")
    return [stops] if isinstance(stops, str) else list(stops or [])


def _batchable(body: dict[str, Any], base: Any) -> bool:
    """Whether the request decodes exactly as the server's options do (see module doc)."""
    if any(body.get(k) is not None for k in _PER_REQUEST):
        return False
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if not base.do_sample:
        return temperature in (None, 0) and top_p is None
    return temperature in (None, base.temperature) and top_p in (None, base.top_p)


def _prompt_tokens(tokenizer: Any, path: str, body: dict[str, Any]) -> int:
    if path != CHAT:
        return len(tokenizer(body["prompt"])["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "this model has no chat template: send the text to /v1/completions")
    try:
        ids = tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    except Exception as e:  # jinja2 errors: e.g. a template that refuses a system turn
        raise ApiError(400, f"the chat template refused these messages: {e}") from None
    return len(ids)


def _apply_format(fmt: PromptFormat, path: str, body: dict[str, Any]) -> None:
    """The run's prompt format, as `llmkit generate` applies it: the text template around
    the prompt (completions) or each user turn (chat), and the run's system prompt when the
    conversation has none."""
    if path != CHAT:
        body["prompt"] = fmt.apply_template(body["prompt"])
        return
    messages = body["messages"]
    for m in messages:
        if m["role"] == "user":
            m["content"] = fmt.apply_template(m["content"])
    if fmt.system is not None and not any(m["role"] in ("system", "developer") for m in messages):
        messages.insert(0, {"role": "system", "content": fmt.system})


def _openai_errors(app: Any) -> None:
    """Errors raised inside transformers' handlers, in OpenAI's shape instead of FastAPI's
    `{"detail": ...}`; an unexpected one is a 500 and the server keeps serving."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from transformers.cli.serving.utils import EngineDeadError

    from llmkit.inference.openai_api import error_body

    async def http_error(request: Any, exc: Any) -> Any:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    async def invalid(request: Any, exc: Any) -> Any:
        return JSONResponse(error_body(str(exc.errors()[:1]), "invalid_request_error"), 400)

    async def refused(request: Any, exc: Exception) -> Any:  # the request's fault (transformers)
        return JSONResponse(error_body(str(exc), "invalid_request_error"), 400)

    async def dead(request: Any, exc: Exception) -> Any:
        return JSONResponse(error_body(str(exc), "server_error"), 503)

    async def crashed(request: Any, exc: Exception) -> Any:
        return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", "server_error"), 500)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ValueError, refused)
    app.add_exception_handler(EngineDeadError, dead)
    app.add_exception_handler(Exception, crashed)
