"""ROUGE-1/2/L/Lsum through rouge-score, with the tokenizer of the text's script
(llmkit.evaluation.text): F-measure per pair, averaged (as Hugging Face `evaluate` does)."""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from typing import Any

from llmkit.evaluation.pairs import check_pairs, resolve_scheme
from llmkit.evaluation.text import TextScheme, rouge_tokenizer, split_sentences

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Measured on 2 cores, 10,000 pairs of ~20 words: 9.6 s plain rouge-score, 4.2 s with the
# stem cache (llmkit.evaluation.text), ~2.5 s with 2 processes on top. A pool costs ~0.1 s
# to start, so small inputs stay in this process.
_ROUGE_PARALLEL_MIN_PAIRS = 2000


def rouge_scorer(scheme: TextScheme) -> Any:
    """rouge-score's scorer with the scheme's tokenizer."""
    from rouge_score import rouge_scorer as rs

    return rs.RougeScorer(list(ROUGE_TYPES), tokenizer=rouge_tokenizer(scheme.rouge))


def rouge_signature(scheme: TextScheme) -> str:
    """What the ROUGE numbers were computed with, as sacreBLEU names its settings."""
    from importlib.metadata import version

    stem = "porter" if scheme.rouge == "porter" else "no"
    return f"rouge-score {version('rouge-score')}|tok:{scheme.rouge}|stem:{stem}|avg:pairs"


def _rouge_rows(pairs: Sequence[tuple[str, str]], scheme: TextScheme) -> list[tuple[float, ...]]:
    """Per-pair F-measures (one per ROUGE type) for (prediction, reference) pairs."""
    scorer = rouge_scorer(scheme)
    rows = []
    for pred, ref in pairs:
        scores = scorer.score(split_sentences(ref), split_sentences(pred))
        rows.append(tuple(scores[t].fmeasure for t in ROUGE_TYPES))
    return rows


def _rouge_rows_of(args: tuple[Sequence[tuple[str, str]], TextScheme]) -> list[tuple[float, ...]]:
    return _rouge_rows(*args)


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    size = math.ceil(len(items) / n)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def rouge_rows(
    preds: Sequence[str],
    refs: Sequence[str],
    scheme: TextScheme | None = None,
    *,
    workers: int | None = None,
) -> list[tuple[float, ...]]:
    """Per-pair ROUGE-1/2/L/Lsum F-measures (0-1), in order.

    Large inputs are split over `workers` processes (default: all cores, from 2,000 pairs);
    rows come back in order, so the result does not depend on it.
    """
    check_pairs(preds, refs)
    scheme = resolve_scheme(scheme, refs)
    pairs = list(zip(preds, refs, strict=True))
    if workers is None:
        workers = (os.cpu_count() or 1) if len(pairs) >= _ROUGE_PARALLEL_MIN_PAIRS else 1
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        # fork: workers inherit the imported scorer instead of re-importing nltk (~0.5 s each).
        parts = [(part, scheme) for part in _chunks(pairs, workers)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return [r for rows in pool.map(_rouge_rows_of, parts) for r in rows]
    return _rouge_rows(pairs, scheme)


def rouge(
    preds: Sequence[str],
    refs: Sequence[str],
    scheme: TextScheme | None = None,
    *,
    workers: int | None = None,
) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F-measure x 100, the mean of per-pair scores (rouge-score, with the
    tokenizer of the references' script)."""
    rows = rouge_rows(preds, refs, scheme, workers=workers)
    return {
        name: 100 * math.fsum(row[i] for row in rows) / len(rows)
        for i, name in enumerate(ROUGE_TYPES)
    }
