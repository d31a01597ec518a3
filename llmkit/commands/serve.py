"""`llmkit serve`: one model behind an OpenAI-compatible API (llmkit.inference.serve).

setup (options, port and model checked, the model loaded once) -> run (uvicorn until Ctrl-C
or SIGTERM, which finish the requests in flight and exit 0). Status goes to stderr; the line
`serving NAME at http://HOST:PORT/v1` says the server is ready (port 0 shows the one taken).
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from pathlib import Path
from typing import Any

from llmkit.config.decoding import layered
from llmkit.config.inference import ServeRequest
from llmkit.errors import UsageError
from llmkit.io.console import note

API_KEY_ENV = "LLMKIT_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run_serve(req: ServeRequest) -> None:
    server = setup(req)
    serve_forever(server)


def setup(req: ServeRequest) -> Any:
    """Everything that can fail, before the server starts: options, the port, the model."""
    import uvicorn

    from llmkit.inference.generate import generation_config_for
    from llmkit.inference.openai_api import Limits
    from llmkit.inference.serve import ServedModel, build_app
    from llmkit.models.card import prompt_format_for
    from llmkit.models.load import DEFAULT_CAUSAL_LM, load_generator

    options = layered(req.recipe, req.decoding())
    api_key = req.api_key or os.environ.get(API_KEY_ENV) or None
    if req.host not in LOOPBACK and api_key is None:
        note(
            f"warning: listening on {req.host} with no API key: anyone who reaches this "
            f"port can use the model (set ${API_KEY_ENV})"
        )
    _check_port(req.host, req.port)
    ref = req.model or DEFAULT_CAUSAL_LM
    loaded = load_generator(ref, trust_remote_code=req.trust_remote_code, use="llmkit serve")
    note(f"model: {loaded.description}")
    # Chat requests get the run's template around each user turn and its system prompt;
    # completions get the template (llmkit.inference.serve._apply_format).
    fmt = prompt_format_for(loaded.card, template=req.template, system=req.system)
    limits = Limits(
        api_key=api_key,
        max_body_bytes=req.max_body_bytes,
        max_prompt_tokens=req.max_prompt_tokens,
        max_tokens=req.max_tokens_limit,
        max_concurrent=req.max_concurrent,
    )
    name = req.name or served_name(ref)
    served = ServedModel.from_loaded(
        ref, loaded, generation_config_for(loaded, options), req.trust_remote_code
    )
    # The weights go: the engine's process loads its own copy (transformers 5.25 runs the
    # model in a process of its own), and two copies would double the server's memory.
    del loaded
    gc.collect()
    app = build_app(
        served,
        name=name,
        fmt=fmt,
        limits=limits,
        batching=req.batching,
        cache_tokens=req.cache_tokens,
    )
    config = uvicorn.Config(app, host=req.host, port=req.port, log_level="warning")
    return _server_class()(config, name)


def served_name(ref: str) -> str:
    """The model id clients send: `smollm2` for embedded:smollm2, a folder's own name, or the
    hub name as given."""
    if ref.startswith("embedded:"):
        return ref.split(":", 1)[1]
    path = Path(ref)
    return path.resolve().name if path.exists() else ref


def serve_forever(server: Any) -> None:
    from transformers.utils import logging as hf_logging

    # One warning per request ("[Request received] ...") would bury the server's own lines.
    hf_logging.get_logger("transformers.cli.serving").setLevel(hf_logging.ERROR)
    # uvicorn turns SIGTERM/SIGINT into a graceful stop (requests in flight finish), then
    # re-raises the signal to the handler it found: a no-op here, so the stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    server.run()
    note("stopped")


def _check_port(host: str, port: int) -> None:
    """A taken port is a one-line error before the model loads (uvicorn would say it after)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror})") from None


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        def __init__(self, config: Any, name: str) -> None:
            super().__init__(config)
            self.name = name

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                host = f"[{host}]" if ":" in host else host
                note(f"serving {self.name} at http://{host}:{port}/v1 (OpenAI-compatible)")

    return Server
