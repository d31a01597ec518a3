"""A/B significance speed: the paired bootstrap, 1,000 resamples of 2,000 examples.

    python benchmarks/bench_bootstrap.py            # 3 repetitions
    python benchmarks/bench_bootstrap.py --tiny

Two close systems over the same 2,000 references of ~20 words (bench_eval's Shakespeare
pairs: A drops ~15% of the words and swaps two; B is A, but drops only ~5% in every 10th
answer and ~45% in every 10th other one), so BLEU's p-value is neither 0.001 nor 1. Both
are scored once with BLEU, chrF, ROUGE-1/2/L/Lsum, exact match, token F1, accuracy and
length (not timed: `llmkit eval` does it anyway). Timed: llmkit's paired_bootstrap over all
ten values, from the per-example statistics kept by the scoring, vs sacreBLEU's
PairedTest(test_type="bs") for BLEU and chrF only (it extracts both systems' statistics
again, then resamples by materializing resamples x examples x statistics). BLEU's and
chrF's p-values must agree.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common
from bench_eval import make_pairs

NAMES = ["bleu", "chrf", "rouge", "em", "f1", "accuracy", "length"]


def scored(preds: list[str], refs: list[str]) -> tuple[dict[str, Any], dict[str, float]]:
    from llmkit.evaluation import metrics

    examples: dict[str, Any] = {}
    values: dict[str, float] = {}
    for result in metrics.score_texts(preds, refs, NAMES).values():
        examples |= result.examples
        values |= result.values
    return examples, values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    if a.tiny:
        a.examples, a.resamples, a.repeats = 200, 100, 1
    common.pin_threads()
    load_before = common.header("bootstrap")

    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    from llmkit.evaluation.significance import paired_bootstrap

    sys_a, refs = make_pairs(a.examples)
    rng = random.Random(1)
    sys_b = list(sys_a)  # B redoes every 10th answer better, every 10th other one worse
    for i in range(0, len(refs), 5):
        keep = 0.95 if i % 10 == 0 else 0.55
        sys_b[i] = " ".join(w for w in refs[i].split() if rng.random() < keep)
    t0 = time.perf_counter()
    (ea, va), (eb, vb) = scored(sys_a, refs), scored(sys_b, refs)
    scoring = time.perf_counter() - t0
    print(f"   scoring both systems once (all metrics): {scoring:.2f} s")
    p_values: dict[str, dict[str, float]] = {}

    def run_llmkit() -> float:
        t = time.perf_counter()
        boot = paired_bootstrap(ea, eb, va, vb, n_samples=a.resamples, seed=12345)
        elapsed = time.perf_counter() - t
        p_values["llmkit"] = {k: boot.tests[k].p_value for k in ("bleu", "chrf")}
        return elapsed

    def run_sacrebleu() -> float:
        os.environ["SACREBLEU_SEED"] = "12345"
        t = time.perf_counter()
        _, res = PairedTest(
            [("A", sys_a), ("B", sys_b)],
            {"BLEU": BLEU(), "chrF": CHRF()},
            [refs],
            test_type="bs",
            n_samples=a.resamples,
        )()
        elapsed = time.perf_counter() - t
        p_values["sacrebleu"] = {
            k: res[n][1].p_value for k, n in (("bleu", "BLEU"), ("chrf", "chrF2"))
        }  # type: ignore[union-attr]
        return elapsed

    times = common.interleave({"llmkit": run_llmkit, "sacrebleu": run_sacrebleu}, a.repeats)
    med = {k: common.median(v) for k, v in times.items()}
    agree = p_values["llmkit"] == p_values["sacrebleu"]
    print(
        f"   {a.resamples:,} resamples of {a.examples:,} examples: llmkit {med['llmkit']:.3f} s "
        f"(10 metrics) vs sacreBLEU {med['sacrebleu']:.2f} s (BLEU + chrF); "
        f"p-values agree: {agree} {p_values['llmkit']}"
    )
    common.record(
        "bootstrap",
        {
            "seconds_median": {k: round(v, 3) for k, v in med.items()},
            "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "scoring_seconds": round(scoring, 2),
            "p_values": p_values,
            "p_values_agree": agree,
        },
        ratios={
            "bootstrap_vs_sacrebleu_paired_bs": med["sacrebleu"] / med["llmkit"],
            "bootstrap_2k_budget": 1.0 / med["llmkit"],
        },
        targets={"bootstrap_2k_budget": ">= 1.0 (<= 1 s for all metrics)"},
        config={
            "examples": a.examples,
            "resamples": a.resamples,
            "repeats": a.repeats,
            "tiny": a.tiny,
        },
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
