"""Generation tokens/s with SmolLM2-135M-Instruct (greedy).

    python benchmarks/bench_generate.py            # 3 repetitions of each
    python benchmarks/bench_generate.py --tiny

1. batch 1: llmkit's `generate_with_stats` vs raw `model.generate` on the same prompt and
   the same GenerationConfig (greedy, max_new_tokens); both decode the same tokens.
2. a file of 16 prompts (chatterbot questions as chats): llmkit's batched file path
   (length-sorted, left-padded batches of 16) vs calling it one prompt at a time.
   Throughput ratio = one-by-one seconds / batched seconds for the same prompts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common

PROMPT = "The old king walked slowly into the great hall and"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--file-prompts", type=int, default=16)
    p.add_argument("--file-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    if a.tiny:
        a.new_tokens, a.file_prompts, a.file_new_tokens, a.repeats = 8, 4, 8, 1
    common.pin_threads()
    load_before = common.header("generate")

    import torch

    from llmkit.config.decoding import DecodingConfig
    from llmkit.data.examples import chatterbot_rows
    from llmkit.inference.generate import generate_with_stats
    from llmkit.io.files import read_texts
    from llmkit.models.card import PromptFormat
    from llmkit.models.load import load_generator

    loaded = load_generator("embedded:smollm2")
    model, tok = loaded.model, loaded.tokenizer
    options = DecodingConfig(max_new_tokens=a.new_tokens, do_sample=False)

    def llmkit_one() -> float:
        r = generate_with_stats(loaded, [PROMPT], options, progress=False)
        return r.new_tokens / r.seconds

    def raw_one() -> float:
        t0 = time.perf_counter()
        enc = tok(PROMPT, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=a.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        n = out.shape[1] - enc["input_ids"].shape[1]
        return n / (time.perf_counter() - t0)

    llmkit_one()  # warm up allocator and kernels
    single = common.interleave({"llmkit": llmkit_one, "raw_generate": raw_one}, a.repeats)

    # A prompt file, as `llmkit generate --input prompts.txt --chat` reads it.
    _, held_out = chatterbot_rows()
    questions = [r["question"] for r in held_out[: a.file_prompts]]
    file_options = DecodingConfig(max_new_tokens=a.file_new_tokens, do_sample=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prompts.txt"
        path.write_text("\n".join(questions) + "\n")
        prompts = read_texts(path).texts
    tokens: dict[str, int] = {}

    def batched() -> float:
        r = generate_with_stats(
            loaded,
            prompts,
            file_options,
            batch_size=len(prompts),
            prompt_format=PromptFormat(chat=True),
            progress=False,
        )
        tokens["batched"] = r.new_tokens
        return r.seconds

    def one_by_one() -> float:
        t0 = time.perf_counter()
        n = 0
        for q in prompts:
            n += generate_with_stats(
                loaded, [q], file_options, prompt_format=PromptFormat(chat=True), progress=False
            ).new_tokens
        tokens["one_by_one"] = n
        return time.perf_counter() - t0

    file_runs = common.interleave({"batched": batched, "one_by_one": one_by_one}, a.repeats)
    med1 = {k: common.median(v) for k, v in single.items()}
    med2 = {k: common.median(v) for k, v in file_runs.items()}
    print(f"   batch 1: llmkit {med1['llmkit']:.1f} vs raw {med1['raw_generate']:.1f} tokens/s")
    print(
        f"   file of {len(prompts)}: batched {med2['batched']:.1f} s vs one by one "
        f"{med2['one_by_one']:.1f} s ({tokens})"
    )
    common.record(
        "generate",
        {
            "batch1_tokens_per_s_median": {k: round(v, 2) for k, v in med1.items()},
            "batch1_tokens_per_s_all": {k: [round(x, 2) for x in v] for k, v in single.items()},
            "file_seconds_median": {k: round(v, 2) for k, v in med2.items()},
            "file_seconds_all": {k: [round(x, 2) for x in v] for k, v in file_runs.items()},
            "file_new_tokens": tokens,
        },
        ratios={
            "generate_batch1_vs_raw": med1["llmkit"] / med1["raw_generate"],
            "generate_batched_file_vs_one_by_one": med2["one_by_one"] / med2["batched"],
        },
        targets={
            "generate_batch1_vs_raw": ">= 1.0",
            "generate_batched_file_vs_one_by_one": ">= 3.0",
        },
        config={
            "new_tokens": a.new_tokens,
            "file_prompts": len(prompts),
            "file_new_tokens": a.file_new_tokens,
            "repeats": a.repeats,
            "tiny": a.tiny,
            "model": "SmolLM2-135M-Instruct fp32",
        },
        load_before=load_before,
    )


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
