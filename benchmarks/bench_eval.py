"""Evaluation speed: BLEU + ROUGE over 10,000 pairs, and perplexity over 1 MB of text.

    python benchmarks/bench_eval.py            # 3 repetitions
    python benchmarks/bench_eval.py --tiny

BLEU + ROUGE: 10,000 (prediction, reference) pairs of ~20 words cut from Shakespeare, each
prediction a perturbed copy of its reference (words dropped and swapped), so scores are
neither 0 nor 100. llmkit.evaluation.metrics.bleu + rouge vs what `evaluate`'s "sacrebleu"
and "rouge" scripts do: sacrebleu.corpus_bleu + rouge_score.RougeScorer(use_stemmer=True)
pair by pair. The scores must agree.

Perplexity: the default pretraining model (GPT-2 4x128, vocab 50,304, built from a config:
speed does not depend on the weights) over 1 MB of Shakespeare, windows of 128 tokens with
stride 64: llmkit.evaluation.perplexity.perplexity_sliding (equal-length windows batched,
logits kept only for scored positions) once over 1 MB, and against the Hugging Face guide's
loop ("Perplexity of fixed-length models": one window per forward, labels with -100 for
context) on 100 KB.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common


def make_pairs(n: int, words_per_pair: int = 20) -> tuple[list[str], list[str]]:
    from llmkit import assets

    words = " ".join(f.read_text() for f in assets.shakespeare_files()[:8]).split()
    rng = random.Random(0)
    preds, refs = [], []
    for i in range(n):
        start = (i * words_per_pair) % (len(words) - words_per_pair)
        ref = words[start : start + words_per_pair]
        pred = [w for w in ref if rng.random() > 0.15]
        if len(pred) > 3:
            j = rng.randrange(len(pred) - 1)
            pred[j], pred[j + 1] = pred[j + 1], pred[j]
        refs.append(" ".join(ref))
        preds.append(" ".join(pred))
    return preds, refs


def llmkit_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    from llmkit.evaluation import metrics

    return {"bleu": metrics.bleu(preds, refs).score, **metrics.rouge(preds, refs)}


def baseline_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    from llmkit.evaluation.metrics import ROUGE_TYPES
    from llmkit.evaluation.text import split_sentences

    out = {"bleu": sacrebleu.corpus_bleu(preds, [refs]).score}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = [
        scorer.score(split_sentences(r), split_sentences(p))
        for p, r in zip(preds, refs, strict=True)
    ]
    for t in ROUGE_TYPES:
        out[t] = 100 * math.fsum(s[t].fmeasure for s in rows) / len(rows)
    return out


def hf_guide_perplexity(model: Any, ids: list[int], max_length: int, stride: int) -> float:
    import torch

    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    seq = torch.tensor([ids])
    with torch.inference_mode():
        for begin in range(0, len(ids), stride):
            end = min(begin + max_length, len(ids))
            trg_len = end - prev_end
            input_ids = seq[:, begin:end]
            target = input_ids.clone()
            target[:, :-trg_len] = -100
            loss = model(input_ids, labels=target).loss
            valid = int((target[:, 1:] != -100).sum())
            nll_sum += float(loss) * valid
            n_tokens += valid
            prev_end = end
            if end == len(ids):
                break
    return math.exp(nll_sum / n_tokens)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=10_000)
    p.add_argument("--ppl-bytes", type=int, default=1_000_000)
    p.add_argument("--ppl-compare-bytes", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    if a.tiny:
        a.pairs, a.ppl_bytes, a.ppl_compare_bytes, a.repeats = 500, 20_000, 10_000, 1
    common.pin_threads()
    load_before = common.header("eval")

    preds, refs = make_pairs(a.pairs)
    scores: dict[str, dict[str, float]] = {}

    def run_llmkit() -> float:
        from llmkit.evaluation.text import reset_caches

        reset_caches()  # each repetition pays the scorer set-up, as a CLI run does
        t0 = time.perf_counter()
        scores["llmkit"] = llmkit_scores(preds, refs)
        return time.perf_counter() - t0

    def run_baseline() -> float:
        t0 = time.perf_counter()
        scores["baseline"] = baseline_scores(preds, refs)
        return time.perf_counter() - t0

    llmkit_scores(preds[:50], refs[:50])  # imports (nltk, sacrebleu) happen once, outside
    baseline_scores(preds[:50], refs[:50])
    times = common.interleave({"llmkit": run_llmkit, "baseline": run_baseline}, a.repeats)
    agree = all(abs(scores["llmkit"][k] - scores["baseline"][k]) < 1e-9 for k in scores["llmkit"])
    print(f"   scores {scores['llmkit']} (agree with baseline: {agree})")

    # --- perplexity ---
    import torch

    from llmkit import assets
    from llmkit.config.loader import load_recipe
    from llmkit.config.pretrain import PretrainRecipe
    from llmkit.data.prep import load_tokenizer_for
    from llmkit.evaluation.perplexity import perplexity_sliding
    from llmkit.models.build import build_model

    recipe = load_recipe(PretrainRecipe, None, [])
    tokenizer = load_tokenizer_for(recipe)
    torch.manual_seed(0)
    model = build_model(recipe, tokenizer).eval()
    text = "".join(f.read_text() for f in assets.shakespeare_files())
    window, stride = recipe.data.block_size, recipe.data.block_size // 2

    t0 = time.perf_counter()
    big = perplexity_sliding(
        model, tokenizer, [text[: a.ppl_bytes]], max_length=window, stride=stride
    )
    ppl_1mb = time.perf_counter() - t0
    print(
        f"   perplexity over {a.ppl_bytes:,} bytes ({big.tokens:,} tokens): "
        f"{ppl_1mb:.1f} s ({big.tokens / ppl_1mb:,.0f} tokens/s), ppl {big.ppl:,.1f}"
    )

    small = text[: a.ppl_compare_bytes]
    small_ids = tokenizer(small, verbose=False)["input_ids"]
    ppl_values: dict[str, float] = {}

    def ppl_llmkit() -> float:
        t = time.perf_counter()
        ppl_values["llmkit"] = perplexity_sliding(
            model, tokenizer, [small], max_length=window, stride=stride
        ).ppl
        return time.perf_counter() - t

    def ppl_guide() -> float:
        t = time.perf_counter()
        ppl_values["hf_guide"] = hf_guide_perplexity(model, small_ids, window, stride)
        return time.perf_counter() - t

    ppl_times = common.interleave({"llmkit": ppl_llmkit, "hf_guide": ppl_guide}, a.repeats)
    med = {k: common.median(v) for k, v in times.items()}
    pmed = {k: common.median(v) for k, v in ppl_times.items()}
    print(
        f"   BLEU+ROUGE {a.pairs:,} pairs: llmkit {med['llmkit']:.2f} s vs baseline "
        f"{med['baseline']:.2f} s; perplexity {a.ppl_compare_bytes:,} bytes: llmkit "
        f"{pmed['llmkit']:.2f} s vs guide {pmed['hf_guide']:.2f} s ({ppl_values})"
    )
    common.record(
        "eval",
        {
            "bleu_rouge_seconds_median": {k: round(v, 3) for k, v in med.items()},
            "bleu_rouge_seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "scores_agree": agree,
            "scores": {k: round(v, 4) for k, v in scores["llmkit"].items()},
            "perplexity_1mb_seconds": round(ppl_1mb, 2),
            "perplexity_1mb_tokens": big.tokens,
            "perplexity_compare_seconds_median": {k: round(v, 3) for k, v in pmed.items()},
            "perplexity_compare_values": {k: round(v, 3) for k, v in ppl_values.items()},
        },
        ratios={
            "bleu_rouge_10k_vs_baseline": med["baseline"] / med["llmkit"],
            "bleu_rouge_10k_budget": 10.0 / med["llmkit"],
            "perplexity_vs_hf_guide": pmed["hf_guide"] / pmed["llmkit"],
        },
        targets={"bleu_rouge_10k_budget": ">= 1.0 (<= 10 s)"},
        config={
            "pairs": a.pairs,
            "ppl_bytes": a.ppl_bytes,
            "window": window,
            "stride": stride,
            "repeats": a.repeats,
            "tiny": a.tiny,
        },
        load_before=load_before,
    )


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
