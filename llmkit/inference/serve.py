"""One model behind an OpenAI-compatible HTTP API, on transformers' own server.

transformers 5 ships the server (`transformers serve`: FastAPI + uvicorn, the OpenAI request
and response types, streaming, continuous batching). llmkit adds what it lacks for serving a
run: the model is one llmkit loaded (run folder, LoRA adapter merged in memory, plain folder,
embedded default) and stays pinned; requests are decoded as `llmkit generate` decodes them
(its options become the model's generation_config; the run's prompt template and system
prompt apply); the checks of `openai_api.Guard`; and two fixes to the answers:

- continuous batching (paged attention, all concurrent requests in one forward pass) runs on
  CPU too (transformers 5.24): 32 concurrent chat requests of 32 tokens ran at 112.8 tokens/s
  against 18.6 one at a time with SmolLM2 (benchmarks/bench_serve.py). But it shares one
  sampling setup among the batch (the first request's) and ignores `stop`, so only requests
  decoded with the server's own options are batched; one asking for another temperature, a
  seed or stop strings is answered alone, correctly, by `model.generate`;
- OpenAI's `stop` strings are not part of the answer; transformers returns them: cut here,
  held back in streams until it is clear they are not the start of a stop string. And they
  are matched in the answer only, by llmkit's own stopping criterion: transformers' would
  match across the prompt (a stop string that began there ended the answer early, with
  the rest of it left in) and build tables of vocabulary x stop length per request
  (`llmkit.inference.stops.GeneratedStop`).
"""

from __future__ import annotations

import contextvars
import json
from typing import Any

from llmkit.errors import UsageError
from llmkit.inference.generate import DEFAULT_MAX_NEW_TOKENS
from llmkit.inference.openai_api import CHAT, ApiError, Guard, Limits, Served
from llmkit.inference.stops import GeneratedStop, StopCut, cut_at_stop, without_stop_strings
from llmkit.models.card import PromptFormat
from llmkit.models.load import LoadedModel

# Whether the request being handled may join the continuous batch (set per request task).
_BATCHABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("batchable", default=False)
# Fields that change decoding per request: such a request is answered on its own.
_PER_REQUEST = ("stop", "seed", "frequency_penalty", "presence_penalty", "logit_bias")


def build_app(
    loaded: LoadedModel,
    *,
    name: str,
    generation_config: Any,
    fmt: PromptFormat,
    limits: Limits,
    batching: bool = True,
    cache_tokens: int | None = None,
) -> Any:
    """The ASGI app: transformers' server for `loaded`, behind llmkit's Guard."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.utils import GenerationState, Modality

    model, tokenizer = _servable(loaded)
    model.generation_config = generation_config
    _stops_in_answers_only(model, tokenizer)
    base = generation_config

    class State(GenerationState):
        def use_continuous_batching(self, model: Any, modality: Any) -> bool:
            return _BATCHABLE.get() and bool(super().use_continuous_batching(model, modality))

    state = State(continuous_batching=batching, cb_config=_cache_config(model, cache_tokens))

    class Pinned(ModelManager):
        """The one model llmkit loaded: never reloaded by name, never unloaded when idle."""

        @staticmethod
        def process_model_name(model_id: str) -> str:
            return model_id

        def load_model_and_processor(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            return model, tokenizer

        def list_models(self, cache_dir: str | None = None) -> list[dict[str, Any]]:
            return [{"id": name, "object": "model", "created": 0, "owned_by": "llmkit"}]

        def shutdown(self) -> None:
            state.shutdown()

    manager = Pinned(device="cpu" if model.device.type == "cpu" else str(model.device))
    if manager.get_model_modality(model, processor=tokenizer) != Modality.LLM:
        raise UsageError(f"{name} is not a text-only causal LM: llmkit serve cannot serve it")

    class Chat(_StopCutting, ChatCompletionHandler):
        def _build_chunk_sse(  # type: ignore[override]  # the rest pass through as **kw
            self, request_id: str = "", content: str | None = None, **kw: Any
        ) -> str:
            content = self._cut_chunk(request_id, content, kw.get("finish_reason"))
            return str(super()._build_chunk_sse(request_id, content=content, **kw))

    class Completion(_StopCutting, CompletionHandler):
        def _build_chunk_sse(  # type: ignore[override]  # the rest pass through as **kw
            self, request_id: str, model_id: str, text: str = "", **kw: Any
        ) -> str:
            text = self._cut_chunk(request_id, text, kw.get("finish_reason")) or ""
            return str(super()._build_chunk_sse(request_id, model_id, text=text, **kw))

    chat = Chat(model_manager=manager, generation_state=state)
    completion = Completion(model_manager=manager, generation_state=state)
    chat.base_config = completion.base_config = base
    unused: Any = None  # /v1/responses, audio and systemone: closed by the Guard
    app: Any = build_server(manager, chat, completion, unused, unused, unused, state)
    _openai_errors(app)
    served = Served(
        name=name,
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        context=getattr(model.config, "max_position_embeddings", None),
        default_max_tokens=int(base.max_new_tokens or DEFAULT_MAX_NEW_TOKENS),
        count_prompt=lambda path, body: _prompt_tokens(tokenizer, path, body),
        prepare=lambda path, body: _apply_format(fmt, path, body),
    )
    return Guard(app, served, limits)


# On CPU transformers sizes the paged KV cache at 60-90% of free RAM (~14 GB of these 24 GB
# machines, computed): the first request took 22.5 s, against 5.3 s with this cap (measured).
# 16k tokens hold 32 requests of 512 tokens: 0.7 GB for SmolLM2 (30 layers x 2 x 3 KV heads
# x 64 dims x 4 bytes per token).
CPU_CACHE_TOKENS = 16384


def _cache_config(model: Any, cache_tokens: int | None) -> Any:
    from transformers import ContinuousBatchingConfig

    if cache_tokens is None and model.device.type != "cpu":
        return None  # a GPU: transformers' own sizing from free memory
    page = ContinuousBatchingConfig().page_size
    tokens = cache_tokens or CPU_CACHE_TOKENS
    return ContinuousBatchingConfig(num_blocks=max(1, -(-tokens // page)))


def _stops_in_answers_only(model: Any, tokenizer: Any) -> None:
    """transformers' handlers call `model.generate` with the request's stop strings in the
    generation config; this model's generate takes them out and matches them in the answer
    only (module doc). Continuous batching never calls it, and takes no request with stops."""
    from transformers import StoppingCriteriaList

    generate = model.generate

    def generate_stopping_in_answer(*args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("generation_config")
        if config is not None:
            kwargs["generation_config"], stops = without_stop_strings(config)
            if stops:
                criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
                prompt = kwargs["input_ids"].shape[-1]
                criteria.append(GeneratedStop(tokenizer, stops, prompt))
                kwargs["stopping_criteria"] = criteria
        return generate(*args, **kwargs)

    model.generate = generate_stopping_in_answer


def _servable(loaded: LoadedModel) -> tuple[Any, Any]:
    if loaded.is_encoder_decoder:
        raise UsageError(
            "llmkit serve answers with causal LMs; an encoder-decoder (T5) answers through "
            "llmkit generate"
        )
    model = loaded.model
    if hasattr(model, "merge_and_unload"):  # a LoRA adapter: one matmul per layer, not three
        model = model.merge_and_unload()
    return model, loaded.tokenizer


class _StopCutting:
    """Request handler mixin: decides batching per request, and drops OpenAI `stop` strings
    (and everything after them) from answers, whole or streamed."""

    base_config: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams: dict[str, StopCut] = {}

    async def handle_request(self, body: dict[str, Any], request_id: str) -> Any:
        _BATCHABLE.set(_batchable(body, self.base_config))
        stops = body.get("stop")  # else the server's own stop strings
        stops = [stops] if isinstance(stops, str) else list(stops or [])
        stops = stops or without_stop_strings(self.base_config)[1]
        if stops and body.get("stream"):
            self._streams[request_id] = StopCut(stops)
        response = await super().handle_request(body, request_id)  # type: ignore[misc]
        if stops and not body.get("stream"):
            return _cut_response(response, stops)
        return response

    def _cut_chunk(self, request_id: str, text: str | None, finish: str | None) -> str | None:
        cut = self._streams.get(request_id)
        if cut is None:
            return text
        shown = cut.feed(text or "")
        if finish is not None:
            shown += cut.flush()
            del self._streams[request_id]
        return shown if shown or text is not None else None


def _cut_response(response: Any, stops: list[str]) -> Any:
    from fastapi.responses import JSONResponse

    data = json.loads(response.body)
    for choice in data.get("choices", []):
        if "message" in choice and isinstance(choice["message"].get("content"), str):
            choice["message"]["content"] = cut_at_stop(choice["message"]["content"], stops)
        elif isinstance(choice.get("text"), str):
            choice["text"] = cut_at_stop(choice["text"], stops)
    return JSONResponse(data, status_code=response.status_code)


def _batchable(body: dict[str, Any], base: Any) -> bool:
    """Whether the request decodes exactly as the server's options do (see module doc)."""
    if any(body.get(k) is not None for k in _PER_REQUEST) or base.stop_strings:
        return False  # continuous batching ignores stop strings
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
            body["messages"],
            tools=body.get("tools"),  # rendered into the prompt: they count
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
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

    from llmkit.inference.openai_api import error_body

    async def http_error(request: Any, exc: Any) -> Any:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    async def invalid(request: Any, exc: Any) -> Any:
        return JSONResponse(error_body(str(exc.errors()[:1]), "invalid_request_error"), 400)

    async def crashed(request: Any, exc: Exception) -> Any:
        return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", "server_error"), 500)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)
