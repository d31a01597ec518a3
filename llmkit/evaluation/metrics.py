"""Scores for language models: one typed function per metric, on well-kept libraries.

Units, so numbers can be compared with papers and other tools:
  - BLEU, chrF, self-BLEU: sacreBLEU scores, 0-100, each with its signature string.
  - ROUGE-1/2/L/Lsum: rouge-score F-measure x 100, averaged over pairs (mean of per-pair
    scores, as Hugging Face `evaluate` does, not a corpus-level pooled score).
  - exact match, token F1: SQuAD v2.0 official script semantics, 0-100 (over characters for
    Chinese, Japanese, Korean and Thai, as CMRC 2018 and DRCD score them).
  - accuracy: exact string match after stripping surrounding whitespace, 0-100.
  - distinct-n: unique n-grams / all n-grams over all outputs (Li et al. 2016), 0-1.
  - length: mean units per output (words, or characters for CJK).

How text is split into words (BLEU's sacreBLEU tokenizer, ROUGE's tokenizer, the units of
F1, distinct-n and length) depends on the script and is decided once per corpus from the
references: llmkit.evaluation.text (`TextScheme`). Every function takes a scheme, or
detects one from the references (predictions, for the metrics without references).

Each corpus value also keeps what it is computed from, example by example (`ExampleStats`),
so an A/B comparison can resample examples without scoring text again
(llmkit.evaluation.significance).

`METRICS` maps the metric names `llmkit eval` accepts to functions of (predictions,
references, scheme); perplexity needs a model (llmkit.evaluation.perplexity).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import UsageError
from llmkit.evaluation.pairs import check_pairs, resolve_scheme
from llmkit.evaluation.rouge import ROUGE_TYPES, rouge, rouge_rows, rouge_signature
from llmkit.evaluation.significance import ExampleStats, mean_stats, sacrebleu_stats
from llmkit.evaluation.text import TextScheme, char_units

# --- generation metrics --------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusScore:
    """A sacreBLEU score with the signature that makes it reproducible."""

    score: float
    signature: str


def _sacrebleu_corpus(
    metric: Any, preds: Sequence[str], refs: Sequence[str]
) -> tuple[CorpusScore, ExampleStats]:
    """sacreBLEU's `corpus_score` in its own two steps, keeping the per-sentence sufficient
    statistics in between (BLEU: hypothesis and reference lengths, matches and totals of
    1-4-grams; chrF: hypothesis, reference and match counts per n-gram order)."""
    check_pairs(preds, refs)
    hyps, streams = list(preds), [list(refs)]
    metric._check_corpus_score_args(hyps, streams)
    stats = metric._extract_corpus_statistics(hyps, streams)
    score = float(metric._aggregate_and_compute(stats).score)
    return CorpusScore(score, str(metric.get_signature())), sacrebleu_stats(metric, stats)


def bleu_metric(scheme: TextScheme, *, effective_order: bool = False) -> Any:
    """sacreBLEU's BLEU with the scheme's tokenizer (its signature names it: `tok:zh`)."""
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=scheme.bleu, effective_order=effective_order)


def bleu(
    preds: Sequence[str], refs: Sequence[str], scheme: TextScheme | None = None
) -> CorpusScore:
    """Corpus BLEU with sacreBLEU's defaults (exp smoothing, one reference) and the tokenizer
    of the references' script (13a for English, zh for Chinese...)."""
    return _sacrebleu_corpus(bleu_metric(resolve_scheme(scheme, refs)), preds, refs)[0]


def chrf(preds: Sequence[str], refs: Sequence[str]) -> CorpusScore:
    """Corpus chrF (character 6-grams, beta 2) with sacreBLEU's defaults: characters need no
    tokenizer, in any script."""
    from sacrebleu.metrics import CHRF

    return _sacrebleu_corpus(CHRF(), preds, refs)[0]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation, drop articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_units(text: str, scheme: TextScheme) -> list[str]:
    """The units EM and F1 compare: SQuAD's normalized words, or for CJK and Thai, CMRC
    2018's characters (each CJK character, each other word; punctuation dropped)."""
    if scheme.units == "char":
        return char_units(text)
    return normalize_answer(text).split()


def _pair_f1(pred: str, ref: str, scheme: TextScheme) -> float:
    pred_tokens = answer_units(pred, scheme)
    ref_tokens = answer_units(ref, scheme)
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
    check_pairs(preds, refs)
    return [float(fn(p, r)) for p, r in zip(preds, refs, strict=True)]


def _pair_em(pred: str, ref: str, scheme: TextScheme) -> float:
    return float(answer_units(pred, scheme) == answer_units(ref, scheme))


def _pair_accuracy(pred: str, ref: str) -> float:
    return float(pred.strip() == ref.strip())


def _em_values(preds: Sequence[str], refs: Sequence[str], scheme: TextScheme) -> list[float]:
    return _pair_values(lambda p, r: _pair_em(p, r, scheme), preds, refs)


def _f1_values(preds: Sequence[str], refs: Sequence[str], scheme: TextScheme) -> list[float]:
    return _pair_values(lambda p, r: _pair_f1(p, r, scheme), preds, refs)


def exact_match(
    preds: Sequence[str], refs: Sequence[str], scheme: TextScheme | None = None
) -> float:
    """Percentage of predictions equal to their reference after SQuAD normalization (CJK:
    the same characters, punctuation and spaces aside)."""
    return 100 * _mean(_em_values(preds, refs, resolve_scheme(scheme, refs)))


def token_f1(preds: Sequence[str], refs: Sequence[str], scheme: TextScheme | None = None) -> float:
    """Mean token-overlap F1 x 100 (SQuAD's normalized words; CJK: characters)."""
    return 100 * _mean(_f1_values(preds, refs, resolve_scheme(scheme, refs)))


def accuracy(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Percentage of predictions equal to their reference (labels: only whitespace trimmed)."""
    return 100 * _mean(_pair_values(_pair_accuracy, preds, refs))


def output_units(text: str, scheme: TextScheme) -> list[str]:
    """The units of an output for distinct-n and length: whitespace words, or characters."""
    return char_units(text) if scheme.units == "char" else text.split()


def distinct_n(preds: Sequence[str], n: int, scheme: TextScheme | None = None) -> float:
    """Unique n-grams / all n-grams over every output (words; CJK: characters); 0 when none."""
    scheme = resolve_scheme(scheme, preds)
    grams: Counter[tuple[str, ...]] = Counter()
    for text in preds:
        units = output_units(text, scheme)
        grams.update(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


# Self-BLEU is quadratic: each output is scored against all others. 500 outputs = 249,500
# reference sentences, ~15 s on 2 cores; larger sets use their first 500 outputs.
SELF_BLEU_MAX_OUTPUTS = 500


def self_bleu(
    preds: Sequence[str],
    scheme: TextScheme | None = None,
    *,
    max_outputs: int = SELF_BLEU_MAX_OUTPUTS,
) -> CorpusScore:
    """Mean sentence BLEU of each output against all the others (Zhu et al. 2018, Texygen).

    Higher means less diverse. Uses the first `max_outputs` outputs; 0 for fewer than two.
    """
    sample = list(preds[:max_outputs])
    metric = bleu_metric(resolve_scheme(scheme, sample), effective_order=True)
    if len(sample) < 2:  # nothing to compare against (and sacrebleu has no signature yet)
        return CorpusScore(0.0, "n/a: fewer than two outputs")
    scores = [
        metric.sentence_score(hyp, sample[:i] + sample[i + 1 :]).score
        for i, hyp in enumerate(sample)
    ]
    return CorpusScore(math.fsum(scores) / len(scores), str(metric.get_signature()))


def _lengths(preds: Sequence[str], scheme: TextScheme) -> list[float]:
    return [float(len(output_units(p, scheme))) for p in preds]


def avg_length(preds: Sequence[str], scheme: TextScheme | None = None) -> float:
    """Mean units per output: whitespace words, or characters for CJK and Thai."""
    return _mean(_lengths(preds, resolve_scheme(scheme, preds)))


# --- fine-tuning evaluation ----------------------------------------------------------------


def classification_scores(pred: Any) -> dict[str, float]:
    """Accuracy and macro-F1 (llmkit.evaluation.classes) of a Trainer's EvalPrediction (class
    logits and label ids), as its `compute_metrics`."""
    import numpy as np

    from llmkit.evaluation.classes import class_report

    guess = np.asarray(pred.predictions).argmax(-1).tolist()
    report = class_report(guess, np.asarray(pred.label_ids).tolist())
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def generation_scores(
    preds: list[str], refs: list[str], scheme: TextScheme | None = None
) -> dict[str, float]:
    """BLEU and chrF (sacreBLEU, 0-100) and ROUGE F-measures (x100), each on the whole set:
    what a text-to-text fine-tune reports at each evaluation, computed as `llmkit eval`
    computes them (the same scheme for the same references)."""
    scheme = resolve_scheme(scheme, refs)
    scores = {"bleu": bleu(preds, refs, scheme).score, "chrf": chrf(preds, refs).score}
    rouge_scores = rouge(preds, refs, scheme)
    scores |= {k: float(rouge_scores[k]) for k in ("rouge1", "rouge2", "rougeL")}
    return scores


# --- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricResult:
    """What one registered metric gives: named values and, for sacreBLEU, a signature."""

    values: dict[str, float]
    signature: str | None = None
    examples: dict[str, ExampleStats] = field(default_factory=dict)  # per value, if it has them


def _bleu_metric(preds: Sequence[str], refs: Sequence[str], scheme: TextScheme) -> MetricResult:
    s, stats = _sacrebleu_corpus(bleu_metric(scheme), preds, refs)
    return MetricResult({"bleu": s.score}, s.signature, {"bleu": stats})


def _chrf_metric(preds: Sequence[str], refs: Sequence[str], scheme: TextScheme) -> MetricResult:
    from sacrebleu.metrics import CHRF

    s, stats = _sacrebleu_corpus(CHRF(), preds, refs)
    return MetricResult({"chrf": s.score}, s.signature, {"chrf": stats})


def _rouge_metric(preds: Sequence[str], refs: Sequence[str], scheme: TextScheme) -> MetricResult:
    rows = rouge_rows(preds, refs, scheme)
    columns = {name: [row[i] for row in rows] for i, name in enumerate(ROUGE_TYPES)}
    return MetricResult(
        {name: 100 * _mean(col) for name, col in columns.items()},
        rouge_signature(scheme),
        examples={name: mean_stats(col, 100.0) for name, col in columns.items()},
    )


def _mean_metric(
    key: str, values: list[float], scale: float = 100.0, signature: str | None = None
) -> MetricResult:
    return MetricResult(
        {key: scale * _mean(values)}, signature, examples={key: mean_stats(values, scale)}
    )


def _self_bleu_metric(
    preds: Sequence[str], refs: Sequence[str], scheme: TextScheme
) -> MetricResult:
    s = self_bleu(preds, scheme)
    return MetricResult({"self_bleu": s.score}, s.signature)


def _units_signature(scheme: TextScheme) -> str:
    return "tok:char (CMRC 2018)" if scheme.units == "char" else "tok:squad-words"


MetricFn = Callable[[Sequence[str], Sequence[str], TextScheme], MetricResult]

METRICS: dict[str, MetricFn] = {
    "bleu": _bleu_metric,
    "chrf": _chrf_metric,
    "rouge": _rouge_metric,
    "em": lambda p, r, s: _mean_metric(
        "exact_match", _em_values(p, r, s), signature=_units_signature(s)
    ),
    "f1": lambda p, r, s: _mean_metric("f1", _f1_values(p, r, s), signature=_units_signature(s)),
    "accuracy": lambda p, r, s: _mean_metric("accuracy", _pair_values(_pair_accuracy, p, r)),
    "distinct": lambda p, r, s: MetricResult(
        {"distinct_1": distinct_n(p, 1, s), "distinct_2": distinct_n(p, 2, s)},
        _units_signature(s),
    ),
    "self_bleu": _self_bleu_metric,
    "length": lambda p, r, s: _mean_metric(
        "avg_length", _lengths(p, s), scale=1.0, signature=_units_signature(s)
    ),
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
    preds: Sequence[str],
    refs: Sequence[str],
    names: Sequence[str],
    scheme: TextScheme | None = None,
) -> dict[str, MetricResult]:
    """Run the named metrics on the same (predictions, references), split by one scheme."""
    check_pairs(preds, refs)
    scheme = resolve_scheme(scheme, refs)
    return {name: METRICS[name](preds, refs, scheme) for name in names}
