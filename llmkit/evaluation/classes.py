"""Classification scores: accuracy, macro-F1 and a per-class report, for fine-tuning's
evaluation (label ids) and `llmkit eval` of a classifier (label names) alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any


def class_report(guess: Sequence[Hashable], gold: Sequence[Hashable]) -> dict[str, Any]:
    """accuracy (0-1), macro_f1 (the unweighted mean of per-class F1 over every class seen in
    either list, so a rare topic counts as much as a common one, and a class predicted but
    never true counts as F1 0), and per class: precision, recall, f1, support."""
    if len(guess) != len(gold) or not gold:
        raise ValueError(f"{len(guess)} predictions for {len(gold)} labels")
    predicted, true = Counter(guess), Counter(gold)
    hits = Counter(g for g, t in zip(guess, gold, strict=True) if g == t)
    per_class: dict[str, dict[str, float]] = {}
    for c in sorted(set(predicted) | set(true), key=str):
        p = hits[c] / predicted[c] if predicted[c] else 0.0
        r = hits[c] / true[c] if true[c] else 0.0
        f1 = 2 * hits[c] / (predicted[c] + true[c])
        per_class[str(c)] = {"precision": p, "recall": r, "f1": f1, "support": true[c]}
    return {
        "accuracy": sum(hits.values()) / len(gold),
        "macro_f1": sum(v["f1"] for v in per_class.values()) / len(per_class),
        "per_class": per_class,
    }


def majority_baseline(labels: Sequence[Hashable]) -> float:
    """Accuracy of always answering the most common label."""
    return Counter(labels).most_common(1)[0][1] / len(labels)
