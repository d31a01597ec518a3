"""Paired bootstrap resampling (Koehn 2004) for every corpus metric of an A/B comparison.

Example indices are drawn with replacement, the same draws for both systems, `n_samples`
times, from numpy's `default_rng(seed)` exactly as sacreBLEU's paired_bs draws them. Each
metric is recomputed on every resample from statistics kept, example by example, when it
was scored (`ExampleStats`): BLEU and chrF from their summed sufficient statistics
(sacreBLEU's own score function, so BLEU's p-value is sacreBLEU's), the others as means of
per-example scores. No text is scored twice, and resampling is one matrix product:
(resamples x examples) draw counts times (examples x statistics of every metric, both
systems).

Per metric: A, B, B - A, a 95% interval of B - A (the 2.5th and 97.5th percentiles of the
resampled differences, at sacreBLEU's indices n//40 and n - n//40 - 1) and sacreBLEU's
p-value: the observed |B - A| against the resampled |B - A| shifted to mean 0 (no
difference), p = (resamples above it + 1) / (resamples + 1), two-sided. Convention: when A
and B score the same, p = 1. sacreBLEU counts strictly larger gaps plus one, so identical
systems get 1/1001 ~ 0.001, "significant"; no gap is no evidence of a difference (the same
trap: jhclark/multeval#5).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 12345  # sacreBLEU's ($SACREBLEU_SEED)
# Draw counts are built in blocks of resamples of at most this many cells (16 MB of float64):
# all 1,000 resamples of 2,000 examples at once, 20 at a time for 100,000 examples.
_BLOCK_CELLS = 2**21

# Values left out of the test, and why. Each is a property of one system's whole set, not a
# sum or mean over examples: a resample drawn with replacement repeats ~37% of the outputs
# (1 - 1/e), and repeats alone lower distinct-n and raise self-BLEU, so the resampled values
# would measure the duplication rather than the system.
NOT_TESTED = {
    "distinct_1": "a set-level ratio; resampling repeats outputs, which lowers it by itself",
    "distinct_2": "a set-level ratio; resampling repeats outputs, which lowers it by itself",
    "self_bleu": "a set-level score; repeated outputs match their copies, and one costs "
    "~15 s on 500 outputs (1,000 resamples: hours)",
    "perplexity_sliding": "scored over token windows of text, not over the paired examples",
    "perplexity_per_document": "scored over token windows of text, not over the paired examples",
}


@dataclass(frozen=True)
class ExampleStats:
    """What a corpus value is computed from, one row per example, and how: the bootstrap sums
    the rows of each resample and recomputes the value from the sums."""

    rows: Any  # numpy float64, (examples, k)
    from_sums: Callable[[Any], Any]  # (resamples, k) column sums -> (resamples,) values
    metric: Any = None  # the sacreBLEU metric, for its signature


def mean_stats(values: Sequence[float], scale: float) -> ExampleStats:
    """A value that is `scale` x the mean of per-example values (ROUGE, EM, F1, length)."""
    import numpy as np

    n = len(values)
    rows = np.asarray(values, dtype=np.float64).reshape(n, 1)
    return ExampleStats(rows, lambda sums: scale * sums[:, 0] / n)


def sacrebleu_stats(metric: Any, stats: list[list[float]]) -> ExampleStats:
    """A sacreBLEU metric's per-sentence sufficient statistics (BLEU: lengths, matches and
    totals of 1-4-grams; chrF: hypothesis, reference and match counts per n-gram order)."""
    import numpy as np

    def from_sums(sums: Any) -> Any:
        # float32, as sacreBLEU's paired_bs passes them (counts are exact below 2**24): the
        # same inputs give sacreBLEU's scores bit for bit.
        rows32 = sums.astype(np.float32)
        return np.array([metric._compute_score_from_stats(row).score for row in rows32])

    return ExampleStats(np.array(stats, dtype=np.float64), from_sums, metric)


@dataclass(frozen=True)
class MetricTest:
    a: float
    b: float
    difference: float  # B - A
    ci_low: float  # 95% interval of B - A over the resamples
    ci_high: float
    p_value: float  # two-sided; < 0.05 is the usual "significant"


@dataclass(frozen=True)
class PairedBootstrap:
    """BLEU's test in the layout metrics.json had before every metric was tested."""

    bleu_a: float
    bleu_b: float
    difference: float  # B - A, BLEU points
    p_value: float
    mean_b: float  # B's mean BLEU over the resamples
    ci_b: float  # half-width of B's 95% interval over the resamples
    n_samples: int
    signature: str


@dataclass(frozen=True)
class Bootstrap:
    n_samples: int
    seed: int
    examples: int
    tests: dict[str, MetricTest]
    signatures: dict[str, str]  # sacreBLEU's, with bs and seed
    seconds: float
    bleu: PairedBootstrap | None = None

    def to_json(self, not_tested: Sequence[str]) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "seed": self.seed,
            "examples": self.examples,
            "metrics": {k: asdict(t) for k, t in self.tests.items()},
            "not_tested": {k: NOT_TESTED.get(k, "no per-example statistics") for k in not_tested},
            "signatures": self.signatures,
            "seconds": self.seconds,
        }


def draw_indices(n_examples: int, n_samples: int, seed: int) -> Any:
    """(n_samples, n_examples) example indices, sacreBLEU's paired_bs draws for this seed.
    (sacreBLEU reads seed 0 as "unseeded"; here 0 is a seed like any other.)"""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.choice(n_examples, size=(n_samples, n_examples), replace=True)


def resampled_sums(rows: Any, indices: Any) -> Any:
    """Column sums of `rows` (examples x k) over each resample's examples: (resamples x k).

    A matrix product of draw counts, not rows[indices].sum(1): that would materialize
    resamples x examples x k values (sacreBLEU's way, 72 MB for BLEU on 2,000 examples).
    """
    import numpy as np

    n_samples, n = indices.shape
    out = np.empty((n_samples, rows.shape[1]))
    step = max(1, _BLOCK_CELLS // n)
    for start in range(0, n_samples, step):
        block = indices[start : start + step]
        offsets = np.arange(len(block))[:, None] * n
        counts = np.bincount((block + offsets).ravel(), minlength=len(block) * n)
        out[start : start + len(block)] = counts.reshape(len(block), n).astype(np.float64) @ rows
    return out


def paired_bootstrap(
    a: Mapping[str, ExampleStats],
    b: Mapping[str, ExampleStats],
    values_a: Mapping[str, float],
    values_b: Mapping[str, float],
    *,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED,
) -> Bootstrap:
    """Test every value both systems have per-example statistics for (same examples)."""
    import numpy as np

    start = time.perf_counter()
    keys = [k for k in values_a if k in values_b and k in a and k in b]
    n = len(a[keys[0]].rows) if keys else 0
    if any(len(s[k].rows) != n for s in (a, b) for k in keys):
        raise ValueError("systems A and B were scored on different numbers of examples")
    if not keys or n == 0:
        return Bootstrap(n_samples, seed, n, {}, {}, 0.0)
    blocks = [s[k].rows for k in keys for s in (a, b)]
    sums = resampled_sums(np.hstack(blocks), draw_indices(n, n_samples, seed))
    edges = np.cumsum([0, *(m.shape[1] for m in blocks)])
    tests, signatures, bleu = {}, {}, None
    for i, key in enumerate(keys):
        cols = [sums[:, edges[j] : edges[j + 1]] for j in (2 * i, 2 * i + 1)]
        scores_a, scores_b = a[key].from_sums(cols[0]), b[key].from_sums(cols[1])
        tests[key] = _test(values_a[key], values_b[key], scores_a, scores_b)
        if a[key].metric is not None:
            signature = a[key].metric.get_signature()
            signature.update("seed", str(seed))
            signature.update("bs", n_samples)
            signatures[key] = str(signature)
        if key == "bleu":
            from sacrebleu.significance import estimate_ci

            mean_b, ci_b = estimate_ci(scores_b)
            t = tests[key]
            bleu = PairedBootstrap(
                t.a, t.b, t.difference, t.p_value, float(mean_b), float(ci_b), n_samples,
                signatures[key],
            )  # fmt: skip
    seconds = round(time.perf_counter() - start, 3)
    return Bootstrap(n_samples, seed, n, tests, signatures, seconds, bleu)


def _test(value_a: float, value_b: float, scores_a: Any, scores_b: Any) -> MetricTest:
    import numpy as np

    observed = value_b - value_a
    gaps = np.abs(scores_b - scores_a)
    above = int(np.sum(gaps - gaps.mean() > abs(observed)))  # sacreBLEU's _compute_p_value
    p_value = 1.0 if observed == 0 else (above + 1) / (len(gaps) + 1)
    diffs = np.sort(scores_b - scores_a)
    low = len(diffs) // 40  # sacreBLEU's estimate_ci: 95%, 1/40 from each end
    return MetricTest(
        a=value_a,
        b=value_b,
        difference=observed,
        ci_low=float(diffs[low]),
        ci_high=float(diffs[len(diffs) - low - 1]),
        p_value=float(p_value),
    )
