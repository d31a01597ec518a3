"""Data prep on the Shakespeare corpus (5.1 MB, GPT-2 tokenizer, blocks of 128).

  python benchmarks/bench_prep.py            # 3 repetitions, cold caches every time
  python benchmarks/bench_prep.py --tiny

llmkit    `prepare()` of the default pretraining recipe into an empty $LLMKIT_PREP_CACHE
          (read + clean + tokenize + pack + split + write the cache), then the cache hit
baseline  run_clm.py's data path: datasets.load_dataset("text") + map(tokenize, batched)
          + map(group_texts, batched), into an empty datasets cache_dir (so nothing is
          reused between repetitions)
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="one repetition on 3 of the 42 works")
    a = p.parse_args()
    if a.tiny:
        a.repeats = 1
    common.pin_threads()
    load_before = common.header("prep")

    import datasets

    from llmkit import assets
    from llmkit.config.loader import load_recipe
    from llmkit.config.pretrain import PretrainRecipe
    from llmkit.data.prep import load_tokenizer_for, prepare

    datasets.disable_progress_bars()
    files = [str(f) for f in assets.shakespeare_files()]
    if a.tiny:
        files = files[:3]
    recipe = load_recipe(PretrainRecipe, None, [f"data.sources={files}"])
    tokenizer = load_tokenizer_for(recipe)
    block = recipe.data.block_size
    hits: list[float] = []

    def llmkit_cold() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["LLMKIT_PREP_CACHE"] = tmp
            t0 = time.perf_counter()
            prepare(recipe, tokenizer, verbose=False)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            data = prepare(recipe, tokenizer, verbose=False)
            int(data.train[-1, -1])  # touch the memory map
            hits.append(time.perf_counter() - t0)
            del os.environ["LLMKIT_PREP_CACHE"]
        return cold

    def group_texts(examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // block) * block
        return {
            k: [t[i : i + block] for i in range(0, total, block)] for k, t in concatenated.items()
        }

    def baseline() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            raw = datasets.load_dataset("text", data_files={"train": files}, cache_dir=tmp)
            tokenized = raw.map(
                lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"]
            )
            tokenized.map(group_texts, batched=True)
            return time.perf_counter() - t0

    times = common.interleave({"llmkit": llmkit_cold, "datasets_map": baseline}, a.repeats)
    med = {k: common.median(v) for k, v in times.items()}
    hit = common.median(hits)
    print(
        f"   cold: llmkit {med['llmkit']:.2f} s vs datasets map {med['datasets_map']:.2f} s; "
        f"cache hit {hit * 1000:.1f} ms"
    )
    common.record(
        "prep",
        {
            "seconds_median": {k: round(v, 3) for k, v in med.items()},
            "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "cache_hit_seconds_median": round(hit, 4),
            "cache_hit_seconds_all": [round(x, 4) for x in hits],
        },
        ratios={
            "prep_vs_datasets_map": med["datasets_map"] / med["llmkit"],
            "prep_cache_hit_headroom": 1.0 / max(hit, 1e-6),
        },
        targets={
            "prep_vs_datasets_map": ">= 2.0",
            "prep_cache_hit_headroom": ">= 1.0 (hit <= 1 s)",
        },
        config={
            "files": len(files),
            "repeats": a.repeats,
            "tiny": a.tiny,
        },
        load_before=load_before,
    )


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
