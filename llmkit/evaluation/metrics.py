"""Scores for language models: one typed function per metric, on well-kept libraries.

Units, so numbers can be compared with papers and other tools:
  - BLEU, chrF, self-BLEU: sacreBLEU scores, 0-100, each with its signature string.
  - ROUGE-1/2/L/Lsum: rouge-score F-measure x 100, averaged over pairs (mean of per-pair
    scores, as Hugging Face `evaluate` does, not a corpus-level pooled score).
  - exact match, token F1: SQuAD v2.0 official script semantics, 0-100.
  - accuracy: exact string match after stripping surrounding whitespace, 0-100.
  - distinct-n: unique n-grams / all n-grams over all outputs (Li et al. 2016), 0-1.
  - length: mean whitespace tokens per output.

Each corpus value also keeps what it is computed from, example by example (`ExampleStats`),
so an A/B comparison can resample examples without scoring text again
(llmkit.evaluation.significance).

`METRICS` maps the metric names `llmkit eval` accepts to functions of (predictions,
references); perplexity needs a model (llmkit.evaluation.perplexity).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import UsageError
from llmkit.evaluation.significance import ExampleStats, mean_stats, sacrebleu_stats

# --- generation metrics --------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusScore:
    """A sacreBLEU score with the signature that makes it reproducible."""

    score: float
    signature: str


def _check_pairs(preds: Sequence[str], refs: Sequence[str]) -> None:
    if len(preds) != len(refs):
        raise UsageError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise UsageError("no predictions to score")


def _sacrebleu_corpus(
    metric: Any, preds: Sequence[str], refs: Sequence[str]
) -> tuple[CorpusScore, ExampleStats]:
    """sacreBLEU's `corpus_score` in its own two steps, keeping the per-sentence sufficient
    statistics in between (BLEU: hypothesis and reference lengths, matches and totals of
    1-4-grams; chrF: hypothesis, reference and match counts per n-gram order)."""
    _check_pairs(preds, refs)
    hyps, streams = list(preds), [list(refs)]
    metric._check_corpus_score_args(hyps, streams)
    stats = metric._extract_corpus_statistics(hyps, streams)
    score = float(metric._aggregate_and_compute(stats).score)
    return CorpusScore(score, str(metric.get_signature())), sacrebleu_stats(metric, stats)


def bleu(preds: Sequence[str], refs: Sequence[str]) -> CorpusScore:
    """Corpus BLEU with sacreBLEU's defaults (13a tokenizer, exp smoothing, one reference)."""
    from sacrebleu.metrics import BLEU

    return _sacrebleu_corpus(BLEU(), preds, refs)[0]


def chrf(preds: Sequence[str], refs: Sequence[str]) -> CorpusScore:
    """Corpus chrF (character 6-grams, beta 2) with sacreBLEU's defaults."""
    from sacrebleu.metrics import CHRF

    return _sacrebleu_corpus(CHRF(), preds, refs)[0]


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Measured on 2 cores, 10,000 pairs of ~20 words: 9.6 s plain rouge-score, 4.2 s with the
# stem cache below, ~2.5 s with 2 processes on top. A pool costs ~0.1 s to start, so small
# inputs stay in this process.
_ROUGE_PARALLEL_MIN_PAIRS = 2000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects (rouge-score splits Lsum on newlines only).

    A sentence ends at . ! or ? followed by whitespace; existing line breaks are kept. This is
    a simple rule (nltk's punkt would need a download); it only affects ROUGE-Lsum.
    """
    lines = (s for line in text.splitlines() for s in _SENTENCE_END.split(line.strip()))
    return "\n".join(s for s in lines if s)


@functools.cache
def _rouge_scorer() -> Any:
    """rouge-score with use_stemmer=True, its Porter stemmer memoized.

    Stemming is ~55% of rouge-score's time and a word always stems the same way, so caching
    `stem` gives identical tokens (and scores) in half the time.
    """
    from nltk.stem import porter
    from rouge_score import rouge_scorer, tokenize, tokenizers

    class _CachedStemmer:
        def __init__(self) -> None:
            self.stem = functools.lru_cache(maxsize=2**18)(porter.PorterStemmer().stem)

    class _StemCacheTokenizer(tokenizers.Tokenizer):
        """rouge-score's DefaultTokenizer(use_stemmer=True), with a memoized stemmer."""

        def __init__(self) -> None:
            self._stemmer = _CachedStemmer()

        def tokenize(self, text: str) -> list[str]:
            return list(tokenize.tokenize(text, self._stemmer))

    return rouge_scorer.RougeScorer(
        list(ROUGE_TYPES), use_stemmer=True, tokenizer=_StemCacheTokenizer()
    )


def _rouge_rows(pairs: Sequence[tuple[str, str]]) -> list[tuple[float, ...]]:
    """Per-pair F-measures (one per ROUGE type) for (prediction, reference) pairs."""
    scorer = _rouge_scorer()
    rows = []
    for pred, ref in pairs:
        scores = scorer.score(split_sentences(ref), split_sentences(pred))
        rows.append(tuple(scores[t].fmeasure for t in ROUGE_TYPES))
    return rows


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    size = math.ceil(len(items) / n)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def rouge_rows(
    preds: Sequence[str], refs: Sequence[str], *, workers: int | None = None
) -> list[tuple[float, ...]]:
    """Per-pair ROUGE-1/2/L/Lsum F-measures (0-1), in order.

    Large inputs are split over `workers` processes (default: all cores, from 2,000 pairs);
    rows come back in order, so the result does not depend on it.
    """
    _check_pairs(preds, refs)
    pairs = list(zip(preds, refs, strict=True))
    if workers is None:
        workers = (os.cpu_count() or 1) if len(pairs) >= _ROUGE_PARALLEL_MIN_PAIRS else 1
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        # fork: workers inherit the imported scorer instead of re-importing nltk (~0.5 s each).
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = [r for part in pool.map(_rouge_rows, _chunks(pairs, workers)) for r in part]
    else:
        rows = _rouge_rows(pairs)
    return rows


def rouge(
    preds: Sequence[str], refs: Sequence[str], *, workers: int | None = None
) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F-measure x 100, the mean of per-pair scores (rouge-score, stemmed)."""
    rows = rouge_rows(preds, refs, workers=workers)
    return {
        name: 100 * math.fsum(row[i] for row in rows) / len(rows)
        for i, name in enumerate(ROUGE_TYPES)
    }


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation, drop articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _pair_f1(pred: str, ref: str) -> float:
    pred_tokens = normalize_answer(pred).split()
    ref_tokens = normalize_answer(ref).split()
    if not pred_tokens or not ref_tokens:
        # SQuAD v2.0: an empty answer scores 1 only against an empty reference.
        return float(pred_tokens == ref_tokens)
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _pair_values(
    fn: Callable[[str, str], float], preds: Sequence[str], refs: Sequence[str]
) -> list[float]:
    _check_pairs(preds, refs)
    return [float(fn(p, r)) for p, r in zip(preds, refs, strict=True)]


def _pair_em(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def _pair_accuracy(pred: str, ref: str) -> float:
    return float(pred.strip() == ref.strip())


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Percentage of predictions equal to their reference after SQuAD normalization."""
    return 100 * _mean(_pair_values(_pair_em, preds, refs))


def token_f1(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean SQuAD token-overlap F1 x 100 (bag of normalized words per pair)."""
    return 100 * _mean(_pair_values(_pair_f1, preds, refs))


def accuracy(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Percentage of predictions equal to their reference (labels: only whitespace trimmed)."""
    return 100 * _mean(_pair_values(_pair_accuracy, preds, refs))


def distinct_n(preds: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams over every output (whitespace tokens); 0 when none."""
    grams: Counter[tuple[str, ...]] = Counter()
    for text in preds:
        words = text.split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


# Self-BLEU is quadratic: each output is scored against all others. 500 outputs = 249,500
# reference sentences, ~15 s on 2 cores; larger sets use their first 500 outputs.
SELF_BLEU_MAX_OUTPUTS = 500


def self_bleu(preds: Sequence[str], *, max_outputs: int = SELF_BLEU_MAX_OUTPUTS) -> CorpusScore:
    """Mean sentence BLEU of each output against all the others (Zhu et al. 2018, Texygen).

    Higher means less diverse. Uses the first `max_outputs` outputs; 0 for fewer than two.
    """
    from sacrebleu.metrics import BLEU

    sample = list(preds[:max_outputs])
    metric = BLEU(effective_order=True)
    if len(sample) < 2:  # nothing to compare against (and sacrebleu has no signature yet)
        return CorpusScore(0.0, "n/a: fewer than two outputs")
    scores = [
        metric.sentence_score(hyp, sample[:i] + sample[i + 1 :]).score
        for i, hyp in enumerate(sample)
    ]
    return CorpusScore(math.fsum(scores) / len(scores), str(metric.get_signature()))


# Chinese and Japanese put no spaces between words: each Han or kana character counts as one
# (sacreBLEU's `zh` tokenizer cuts the same). "巴黎是法国的首都" is 8 words, not 1. Thai has
# no spaces either but words of several letters and no segmenter here: still by whitespace.
_UNSPACED = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]"
)


def count_words(text: str) -> int:
    """Words in `text`: whitespace-separated tokens, each Chinese/Japanese character one."""
    n = 0
    for token in text.split():
        characters = len(_UNSPACED.findall(token))
        if not characters:
            n += 1
            continue
        # What is left between the characters: words of other scripts, not punctuation.
        rest = _UNSPACED.sub(" ", token).split()
        n += characters + sum(any(c.isalnum() for c in w) for w in rest)
    return n


def _lengths(preds: Sequence[str]) -> list[float]:
    return [float(count_words(p)) for p in preds]


def avg_length(preds: Sequence[str]) -> float:
    """Mean number of words per output (`count_words`)."""
    return _mean(_lengths(preds))


# --- fine-tuning evaluation ----------------------------------------------------------------


def classification_scores(pred: Any) -> dict[str, float]:
    """Accuracy and macro-F1 (llmkit.evaluation.classes) of a Trainer's EvalPrediction (class
    logits and label ids), as its `compute_metrics`."""
    import numpy as np

    from llmkit.evaluation.classes import class_report

    guess = np.asarray(pred.predictions).argmax(-1).tolist()
    report = class_report(guess, np.asarray(pred.label_ids).tolist())
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def generation_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """BLEU and chrF (sacreBLEU, 0-100) and ROUGE F-measures (x100), each on the whole set."""
    scores = {"bleu": bleu(preds, refs).score, "chrf": chrf(preds, refs).score}
    rouge_scores = rouge(preds, refs)
    scores |= {k: float(rouge_scores[k]) for k in ("rouge1", "rouge2", "rougeL")}
    return scores


# --- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricResult:
    """What one registered metric gives: named values and, for sacreBLEU, a signature."""

    values: dict[str, float]
    signature: str | None = None
    examples: dict[str, ExampleStats] = field(default_factory=dict)  # per value, if it has them


def _bleu_metric(preds: Sequence[str], refs: Sequence[str]) -> MetricResult:
    from sacrebleu.metrics import BLEU

    s, stats = _sacrebleu_corpus(BLEU(), preds, refs)
    return MetricResult({"bleu": s.score}, s.signature, {"bleu": stats})


def _chrf_metric(preds: Sequence[str], refs: Sequence[str]) -> MetricResult:
    from sacrebleu.metrics import CHRF

    s, stats = _sacrebleu_corpus(CHRF(), preds, refs)
    return MetricResult({"chrf": s.score}, s.signature, {"chrf": stats})


def _rouge_metric(preds: Sequence[str], refs: Sequence[str]) -> MetricResult:
    rows = rouge_rows(preds, refs)
    columns = {name: [row[i] for row in rows] for i, name in enumerate(ROUGE_TYPES)}
    return MetricResult(
        {name: 100 * _mean(col) for name, col in columns.items()},
        examples={name: mean_stats(col, 100.0) for name, col in columns.items()},
    )


def _mean_metric(key: str, values: list[float], scale: float = 100.0) -> MetricResult:
    return MetricResult({key: scale * _mean(values)}, examples={key: mean_stats(values, scale)})


def _self_bleu_metric(preds: Sequence[str], refs: Sequence[str]) -> MetricResult:
    s = self_bleu(preds)
    return MetricResult({"self_bleu": s.score}, s.signature)


MetricFn = Callable[[Sequence[str], Sequence[str]], MetricResult]

METRICS: dict[str, MetricFn] = {
    "bleu": _bleu_metric,
    "chrf": _chrf_metric,
    "rouge": _rouge_metric,
    "em": lambda p, r: _mean_metric("exact_match", _pair_values(_pair_em, p, r)),
    "f1": lambda p, r: _mean_metric("f1", _pair_values(_pair_f1, p, r)),
    "accuracy": lambda p, r: _mean_metric("accuracy", _pair_values(_pair_accuracy, p, r)),
    "distinct": lambda p, r: MetricResult(
        {"distinct_1": distinct_n(p, 1), "distinct_2": distinct_n(p, 2)}
    ),
    "self_bleu": _self_bleu_metric,
    "length": lambda p, r: _mean_metric("avg_length", _lengths(p), scale=1.0),
}
# accuracy is opt-in: on free text it is a stricter exact match that reads as 0.
DEFAULT_METRICS = ("bleu", "chrf", "rouge", "em", "f1", "distinct", "self_bleu", "length")


def parse_metric_names(spec: str | None) -> list[str]:
    """`bleu,rouge` -> ["bleu", "rouge"]; None -> the defaults; unknown names are an error."""
    if spec is None:
        return list(DEFAULT_METRICS)
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        shown = ", ".join(unknown) if unknown else "(none)"
        raise UsageError(f"unknown metric {shown} (valid: {', '.join(METRICS)})")
    return list(dict.fromkeys(names))


def score_texts(
    preds: Sequence[str], refs: Sequence[str], names: Sequence[str]
) -> dict[str, MetricResult]:
    """Run the named metrics on the same (predictions, references)."""
    _check_pairs(preds, refs)
    return {name: METRICS[name](preds, refs) for name in names}
