"""The articles' point, measured: an LSTM LM vs a GPT-2 of about the same size, same data.

    python benchmarks/bench_lstm_vs_gpt.py                    # both recipes as shipped (600 steps)
    python benchmarks/bench_lstm_vs_gpt.py --max-steps 150    # a quarter of the budget
    python benchmarks/bench_lstm_vs_gpt.py --tiny             # smoke test, seconds
    python benchmarks/bench_lstm_vs_gpt.py --max-steps 60 --set data.max_eval_blocks=64

Runs `llmkit pretrain lstm-shakespeare` and `llmkit pretrain gpt-shakespeare` one after the
other, as a user would (subprocesses), with the same --max-steps: the two recipes differ only in
`model`, so both read the same prepared blocks of Shakespeare (GPT-2 tokenizer, 128 tokens) in
the same order. Prints one table: parameters, validation perplexity before and after, and
training tokens/s (tokens seen / training seconds, the final evaluation included). The runs
are sequential, so a change in machine load between them moves tokens/s: the load average at
each start is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common

RECIPES = {"LSTM": "lstm-shakespeare", "GPT-2": "gpt-shakespeare"}


def run(recipe: str, out: Path, extra: list[str]) -> dict:
    load = common.load_average()
    cmd = [sys.executable, "-m", "llmkit", "pretrain", recipe, "--output-dir", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        sys.exit(f"{recipe} failed:\n{done.stderr[-3000:]}")
    params = next(line for line in done.stdout.splitlines() if line.startswith("model: "))
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics | {"params": params.split(", ")[1].split(" ")[0], "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="8 steps on the 40 KB excerpt")
    parser.add_argument("--set", action="append", default=[], help="a recipe override for both")
    args = parser.parse_args()
    extra = ["--max-steps", str(args.max_steps)] if args.max_steps else []
    extra += [x for value in args.set for x in ("--set", value)]
    if args.tiny:
        extra = [
            "--max-steps", "8",
            "--set", "data.sources=[embedded:shakespeare-excerpt]",
            "--set", "data.validation=0.1",
            "--set", "data.max_eval_blocks=8",
        ]  # fmt: skip
    common.pin_threads()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in RECIPES.items():
            rows[name] = run(recipe, Path(tmp) / recipe, extra)
    print("| model | parameters | steps x tokens | val ppl before | val ppl after | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        rate = m["tokens_seen"] / m["train_seconds"]
        print(
            f"| {name} ({RECIPES[name]}) | {m['params']} | {m['steps']} x "
            f"{m['global_batch_tokens']:,} | {m['eval_perplexity_before']:,.1f} | "
            f"{m['eval_perplexity']:,.1f} | {rate:,.0f} (load {m['load']:.1f}) |"
        )


if __name__ == "__main__":
    main()
