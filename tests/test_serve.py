"""`llmkit serve`: a real server process on a loopback port, the official `openai` client.

One server (`llmkit serve` with no model: the embedded SmolLM2-135M-Instruct, continuous
batching on, an API key from the environment, small limits) answers most tests in this
module, with real text so that equality with `llmkit generate` means something; SIGTERM
stops it at the end. A random tiny Llama serves the LoRA and port tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import run_cli

KEY = "sk-test-0123"
MODEL = "smollm2"
SMOLLM2 = "embedded:smollm2"
PROMPT = "Tell me about the sea"


class Server:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "llmkit", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"at (http://\S+)/v1", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise AssertionError(f"server exited {self.proc.wait()}: {''.join(self.lines)}")
        # Keep reading stderr so the server never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.lines.extend(self.proc.stderr)

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "-", max_retries=0)

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        key: str | None = KEY,
        content_type: str | None = "application/json",
    ) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type is not None:  # None: urllib's form type, as curl -d sends
            req.add_header("Content-Type", content_type)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


LIMITS = ("--max-tokens-limit", "64", "--max-body-bytes", "4096", "--max-prompt-tokens", "200")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server(*LIMITS, env={"LLMKIT_API_KEY": KEY})
    yield s
    if s.proc.poll() is None:
        s.stop()


def chat(client: openai.OpenAI, content: str = PROMPT, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("model", MODEL)
    return client.chat.completions.create(
        messages=[{"role": "user", "content": content}], temperature=0, **kw
    )


def generated(model: Path | str, *flags: str, prompt: str = PROMPT) -> str:
    r = run_cli("generate", "--model", str(model), "--greedy", *flags, prompt)
    assert r.returncode == 0, r.stderr
    return r.stdout.removesuffix("\n")


def test_models_and_health(server: Server) -> None:
    assert [m.id for m in server.client().models.list().data] == [MODEL]
    assert server.raw("GET", "/health", key=None) == (200, {"status": "ok"})


def test_greedy_answers_equal_llmkit_generate(server: Server) -> None:
    client = server.client()
    answer = chat(client)
    assert answer.choices[0].message.content == generated(
        SMOLLM2, "--chat", "--max-new-tokens", "12"
    )
    assert answer.model == MODEL and answer.usage is not None
    text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    assert text.choices[0].text == generated(SMOLLM2, "--no-chat", "--max-new-tokens", "12")


def test_streaming_gives_the_same_answer(server: Server) -> None:
    client = server.client()
    whole = chat(client).choices[0].message.content
    chunks = list(chat(client, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_strings_end_the_answer_and_are_not_in_it(server: Server) -> None:
    client = server.client()
    whole = chat(client, max_tokens=24).choices[0].message.content
    assert whole is not None and len(whole) > 6
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    before = whole[: whole.find(stop)]
    assert chat(client, max_tokens=24, stop=[stop]).choices[0].message.content == before
    streamed = chat(client, max_tokens=24, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == before


def test_api_key_is_required(server: Server) -> None:
    for key in (None, "sk-wrong"):
        with pytest.raises(openai.AuthenticationError) as e:
            chat(server.client(key=key))
        assert e.value.status_code == 401
        assert "API key" in e.value.body["message"]  # type: ignore[index]


BAD_REQUESTS = {
    "missing messages": (b'{"model": "smollm2"}', 400, "messages"),
    "empty messages": (b'{"model": "smollm2", "messages": []}', 400, "messages"),
    "unknown model": (
        b'{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}',
        404,
        "not served",
    ),
    "negative max_tokens": (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
        400,
        "max_tokens",
    ),
    "huge max_tokens": (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000000000}',
        400,
        "limit of 64",
    ),
    "invalid JSON": (b'{"messages": [', 400, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "JSON object"),
    "bad role": (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
    "oversized body": (
        b'{"messages": [{"role": "user", "content": "' + b"a" * 5000 + b'"}]}',
        413,
        "over 4096 bytes",
    ),
    "unknown field": (
        b'{"messages": [{"role": "user", "content": "hi"}], "bogus": 1}',
        422,
        "bogus",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server: Server, case: str
) -> None:
    body, status, words = BAD_REQUESTS[case]
    got, payload = server.raw("POST", "/v1/chat/completions", body)
    assert got == status
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert words in payload["error"]["message"]
    assert chat(server.client(), max_tokens=2).choices[0].message.content is not None


def test_json_sent_as_a_form_is_answered(server: Server) -> None:
    """`curl -d '{...}'` labels JSON as a form; transformers' route would refuse it."""
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    status, payload = server.raw("POST", "/v1/chat/completions", body, content_type=None)
    assert status == 200 and payload["usage"]["completion_tokens"] >= 1


def test_transformers_admin_routes_are_closed(server: Server) -> None:
    """transformers' /reset would unload the model; /load_model would load another."""
    assert server.raw("POST", "/reset", b"{}")[0] == 404
    assert server.raw("POST", "/load_model", b'{"model": "gpt2"}')[0] == 404
    assert chat(server.client(), max_tokens=2).choices[0].message.content is not None


def test_prompts_over_the_limit_are_refused(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        chat(server.client(), content="sea " * 300)
    assert "at most 200" in e.value.body["message"]  # type: ignore[index]
    assert e.value.code == "context_length_exceeded"


def test_32_concurrent_clients_are_all_answered_as_alone(server: Server) -> None:
    """The load test's invariant, bounded: 32 clients at once (one continuous batch), every
    request answered without error, and the first answers equal to the same requests alone."""
    client = server.client()
    prompts = [f"{PROMPT} number {i}" for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda p: chat(client, p, max_tokens=6), prompts))
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in together)
    assert all(r.usage.completion_tokens >= 1 for r in together)
    alone = [chat(client, p, max_tokens=6).choices[0].message.content for p in prompts[:4]]
    assert [r.choices[0].message.content for r in together[:4]] == alone


def test_sigterm_finishes_the_request_in_flight_and_exits_0(server: Server) -> None:
    stream = chat(server.client(), max_tokens=48, stream=True)
    first = next(iter(stream))
    assert server.stop() == 0  # blocks until the server has exited
    rest = list(stream)  # the answer was completed before the server went away
    assert first.choices[0].delta.role == "assistant"
    assert rest[-1].choices[0].finish_reason in ("stop", "length")
    assert "stopped" in "".join(server.lines)


def test_a_lora_run_is_served_as_generate_answers_it(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    lora = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    s = Server(str(adapter))
    try:
        assert [m.id for m in s.client().models.list().data] == ["adapter"]
        answer = s.client().chat.completions.create(
            model="adapter", messages=[{"role": "user", "content": PROMPT}], max_tokens=10
        )
        assert answer.choices[0].message.content == generated(
            adapter, "--chat", "--max-new-tokens", "10"
        )
        with pytest.raises(openai.BadRequestError) as e:  # the tiny model has 512 positions
            chat(s.client(), content="sea " * 600, model="adapter")
        assert "exceed the model's context of 512 tokens" in e.value.body["message"]  # type: ignore[index]
    finally:
        assert s.stop() == 0


def test_a_taken_port_is_one_error_line(tiny_llama_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("serve", str(tiny_llama_dir), "--port", str(port), timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"
    ]
