"""Prep at scale: time and peak memory on 100 MB - 1 GB of text (issue 16).

  python benchmarks/bench_prep_scale.py                       # 20 MB: a quick check
  python benchmarks/bench_prep_scale.py --sizes 100M,300M,1G  # the figures in RESULTS.md

The corpus is one text file of the 42 embedded Shakespeare works (5.1 MB) repeated up to the
size, in a temporary folder under /tmp that is removed afterwards. Each pipeline runs in its
own child process, which reports its own peak RSS (ru_maxrss) and that of its workers:

llmkit    `prepare()` of the default recipe with data.dedupe=false (as `llmkit prep --set
          data.dedupe=false`): stream, tokenize, split, pack, write the shards
datasets  run_clm.py's path: load_dataset("text") + map(tokenize, batched, num_proc=cores)
          + map(group_texts, batched, num_proc=cores), into an empty datasets cache
ceiling   the tokenizer's own `encode_batch_fast` over the same text in the same ~1 KB
          pieces and 4 MiB batches; only the encode calls are timed (the upper bound)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"peak_rss_mib": 1536, "vs_ceiling": 0.8, "vs_datasets": 2.0}

PRELUDE = """
import json, os, resource, sys, time
def peak(who):
    return resource.getrusage(who).ru_maxrss / 1024
def report(**kw):
    kw["peak_rss_mib"] = peak(resource.RUSAGE_SELF)
    kw["workers_peak_rss_mib"] = peak(resource.RUSAGE_CHILDREN)
    print("RESULT " + json.dumps(kw))
corpus, work = sys.argv[1], sys.argv[2]
"""

LLMKIT = """
os.environ["LLMKIT_PREP_CACHE"] = work
from llmkit.config.loader import load_recipe
from llmkit.config.pretrain import PretrainRecipe
from llmkit.data.prep import load_tokenizer_for, prepare
recipe = load_recipe(PretrainRecipe, None, [f"data.sources=[{corpus}]", "data.dedupe=false"])
tok = load_tokenizer_for(recipe)
t0 = time.perf_counter()
data = prepare(recipe, tok, verbose=False)
report(seconds=time.perf_counter() - t0, tokens=data.meta["n_tokens"])
"""

DATASETS = """
import itertools
import datasets
from llmkit.config.loader import load_recipe
from llmkit.config.pretrain import PretrainRecipe
from llmkit.data.prep import load_tokenizer_for
datasets.disable_progress_bars()
recipe = load_recipe(PretrainRecipe, None, [])
tok = load_tokenizer_for(recipe)
block = recipe.data.block_size
def group_texts(examples):
    joined = {k: list(itertools.chain(*examples[k])) for k in examples}
    total = (len(joined["input_ids"]) // block) * block
    return {k: [t[i : i + block] for i in range(0, total, block)] for k, t in joined.items()}
t0 = time.perf_counter()
raw = datasets.load_dataset("text", data_files={"train": corpus}, cache_dir=work)
tokenized = raw.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"],
                    num_proc=os.cpu_count())
grouped = tokenized.map(group_texts, batched=True, num_proc=os.cpu_count())
report(seconds=time.perf_counter() - t0, tokens=len(grouped["train"]) * block)
"""

CEILING = """
from llmkit.config.loader import load_recipe
from llmkit.config.pretrain import PretrainRecipe
from llmkit.data.prep import load_tokenizer_for
tok = load_tokenizer_for(load_recipe(PretrainRecipe, None, []))
encode = tok.backend_tokenizer.encode_batch_fast
encoding = tokens = 0
t0 = time.perf_counter()
with open(corpus, encoding="utf-8") as f:
    while lines := f.readlines(1 << 22):
        pieces, piece, size = [], [], 0
        for line in lines:
            piece.append(line)
            size += len(line)
            if size >= 1024:
                pieces.append("".join(piece))
                piece, size = [], 0
        pieces.append("".join(piece))
        t1 = time.perf_counter()
        tokens += sum(len(e.ids) for e in encode(pieces, add_special_tokens=False))
        encoding += time.perf_counter() - t1
report(seconds=encoding, wall_seconds=time.perf_counter() - t0, tokens=tokens)
"""


def parse_size(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def make_corpus(path: Path, size: int) -> None:
    from llmkit import assets

    text = "".join(p.read_text(encoding="utf-8") for p in assets.shakespeare_files())
    written = 0
    with path.open("w", encoding="utf-8") as f:
        while written + len(text) <= size:
            f.write(text)
            written += len(text)
        rest = text[: size - written]
        f.write(rest[: rest.rfind("\n") + 1])


def run_child(body: str, corpus: Path, work: Path) -> dict[str, Any]:
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, str(corpus), str(work)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(work, ignore_errors=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="20M", help="comma-separated corpus sizes (K/M/G = 1e3/6/9)")
    p.add_argument("--skip-datasets-above", default="1G", help="datasets only up to this size")
    a = p.parse_args()
    load_before = common.header("prep_scale")
    cap = parse_size(a.skip_datasets_above)
    rows: dict[str, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="llmkit-bench-prep-scale-", dir="/tmp"))
    try:
        for size_text in a.sizes.split(","):
            size = parse_size(size_text)
            corpus = tmp / "corpus.txt"
            make_corpus(corpus, size)
            row: dict[str, Any] = {"bytes": corpus.stat().st_size}
            pipelines = {"llmkit": LLMKIT, "ceiling": CEILING}
            if size <= cap:
                pipelines["datasets"] = DATASETS
            for name, body in pipelines.items():
                r = run_child(body, corpus, tmp / name)
                r["tokens_per_s"] = r["tokens"] / r["seconds"]
                row[name] = r
                print(
                    f"   {size_text:>5} {name:9} {r['seconds']:8.1f} s  "
                    f"{r['tokens_per_s']:>10,.0f} tokens/s  peak RSS {r['peak_rss_mib']:,.0f} MiB"
                    f" (workers {r['workers_peak_rss_mib']:,.0f} MiB)",
                    flush=True,
                )
            row["vs_ceiling"] = row["ceiling"]["seconds"] / row["llmkit"]["seconds"]
            if "datasets" in row:
                row["vs_datasets"] = row["datasets"]["seconds"] / row["llmkit"]["seconds"]
            rows[size_text] = row
            corpus.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)
    peaks = {size: round(row["llmkit"]["peak_rss_mib"]) for size, row in rows.items()}
    print(f"   llmkit peak RSS MiB by size: {peaks} (target <= {TARGETS['peak_rss_mib']})")
    common.record(
        "prep_scale",
        {"sizes": rows, "llmkit_peak_rss_mib": peaks},
        ratios={f"{k}_{size}": row[k] for size, row in rows.items() for k in TARGETS if k in row},
        targets={
            f"{k}_{size}": f">= {TARGETS[k]}"
            for size, row in rows.items()
            for k in ("vs_ceiling", "vs_datasets")
            if k in row
        },
        config={"sizes": a.sizes, "datasets_up_to": a.skip_datasets_above},
        load_before=load_before,
    )


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    print("| size | pipeline | seconds | tokens/s | peak RSS MiB (workers) |")
    print("|---|---|---|---|---|")
    for size, row in rows.items():
        for name in ("llmkit", "ceiling", "datasets"):
            if name in row:
                r = row[name]
                print(
                    f"| {size} | {name} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
                    f"{r['peak_rss_mib']:,.0f} ({r['workers_peak_rss_mib']:,.0f}) |"
                )
        extra = f", {row['vs_datasets']:.2f}x datasets" if "vs_datasets" in row else ""
        print(f"| {size} | ratios | {row['vs_ceiling']:.2f}x ceiling{extra} | | |")


if __name__ == "__main__":
    main()
