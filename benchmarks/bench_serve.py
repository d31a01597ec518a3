"""`llmkit serve` under load: 32 concurrent clients against the same requests one at a time.

    python benchmarks/bench_serve.py               # 32 chat requests, 32 new tokens each
    python benchmarks/bench_serve.py --tiny        # 4 requests, 8 tokens

A real server (`llmkit serve` in a child process, SmolLM2-135M-Instruct on loopback) and
the official `openai` client. The same chat requests (chatterbot questions, greedy, fixed
max_tokens so every answer has the same length budget) are sent:
1. one at a time, waiting for each answer, to a server started with --no-batching
   (transformers' sequential path: one model.generate per request): the baseline;
2. all at once from N client threads, to the server with continuous batching (default);
3. all at once to the --no-batching server; and one at a time to the batching server.
Throughput = completion tokens / wall seconds. Every request must be answered without error.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    """`llmkit serve --port 0 ARGS`; returns the process and its base URL once it is ready."""
    cmd = [sys.executable, "-m", "llmkit", "serve", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"at (http://\S+/v1)", line)
        if found:
            return proc, found.group(1)
    raise RuntimeError(f"server exited with {proc.wait()}")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    if a.tiny:
        a.requests, a.max_tokens = 4, 8
    load_before = common.header("serve")
    import openai

    from llmkit.data.examples import chatterbot_rows

    train, held_out = chatterbot_rows()
    questions = [r["question"] for r in (held_out + train)[: a.requests]]

    def ask(client: openai.OpenAI, q: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": q}],
            max_tokens=a.max_tokens,
            temperature=0,
        )
        assert r.usage is not None and r.choices[0].message.content is not None
        return time.perf_counter() - t0, r.usage.completion_tokens

    def all_at_once(client: openai.OpenAI) -> tuple[float, list[float], int]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(questions)) as pool:
            results = list(pool.map(lambda q: ask(client, q), questions))
        return time.perf_counter() - t0, [r[0] for r in results], sum(r[1] for r in results)

    figures: dict[str, dict[str, float]] = {}
    for label, args in (("batching", []), ("no_batching", ["--no-batching"])):
        proc, url = start(*args)
        try:
            client = openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=600)
            ask(client, "Hello")  # warm-up: the first batch allocates the paged cache
            t0 = time.perf_counter()
            one = [ask(client, q) for q in questions]
            seconds = time.perf_counter() - t0
            tokens = sum(r[1] for r in one)
            figures[f"one_at_a_time_{label}"] = _summary(seconds, [r[0] for r in one], tokens)
            seconds, latencies, tokens = all_at_once(client)
            figures[f"concurrent_{label}"] = _summary(seconds, latencies, tokens)
        finally:
            stop(proc)
    for name, f in figures.items():
        print(
            f"   {name}: {f['tokens']:.0f} tokens in {f['seconds']:.1f} s = "
            f"{f['tokens_per_s']:.1f} tokens/s, latency p50 {f['p50_s']:.1f} s, "
            f"p95 {f['p95_s']:.1f} s"
        )
    # The baseline: the same requests one at a time to the plain server (model.generate), the
    # fastest way to answer one request; batching's own one-at-a-time figure is printed too.
    base = figures["one_at_a_time_no_batching"]["tokens_per_s"]
    common.record(
        "serve",
        figures,
        ratios={
            "serve_concurrent_batching_vs_one_at_a_time": figures["concurrent_batching"][
                "tokens_per_s"
            ]
            / base,
            "serve_concurrent_no_batching_vs_one_at_a_time": figures["concurrent_no_batching"][
                "tokens_per_s"
            ]
            / base,
        },
        targets={"serve_concurrent_batching_vs_one_at_a_time": ">= 3.0"},
        config={
            "requests": a.requests,
            "clients": a.requests,
            "max_tokens": a.max_tokens,
            "model": "SmolLM2-135M-Instruct fp32, greedy",
        },
        load_before=load_before,
    )


def _summary(seconds: float, latencies: list[float], tokens: int) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "p50_s": round(pct(0.5), 2),
        "p95_s": round(pct(0.95), 2),
        "requests": len(latencies),
    }


if __name__ == "__main__":
    main()
