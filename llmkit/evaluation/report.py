"""An evaluation's report: the systems' scores, their differences, and the outputs
(metrics.json, predictions JSONL, ab.png, a table on stdout).

metrics.json carries everything needed to repeat the numbers: the sacreBLEU signatures,
decoding and window settings, example counts and library versions.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.evaluation import significance
from llmkit.io.provenance import versions
from llmkit.io.runs import METRICS_JSON
from llmkit.io.write import MARKER, atomic_path, mark_owned, write_json, write_jsonl

EVAL = "eval"  # the marker kind of an evaluation folder
# Everything `save` writes: a folder holding only these is an evaluation's, marked or not.
PREDICTIONS = {"A": "predictions.jsonl", "B": "predictions_b.jsonl"}
EVAL_FILES = frozenset(
    {METRICS_JSON, "ab.png", MARKER, "harness", *PREDICTIONS.values()}
    | {f"{name}.partial" for name in PREDICTIONS.values()}
)

DISPLAY = {
    "bleu": "BLEU",
    "chrf": "chrF",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum",
    "exact_match": "exact match",
    "f1": "token F1",
    "accuracy": "accuracy",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "self_bleu": "self-BLEU",
    "avg_length": "avg length",
    "perplexity_sliding": "perplexity (sliding)",
    "perplexity_per_document": "perplexity (per document)",
    "pseudo_perplexity": "pseudo-perplexity",
    "masked_accuracy": "masked accuracy",
}
LOWER_IS_BETTER = {"perplexity_sliding", "perplexity_per_document", "pseudo_perplexity"}


@dataclass
class SystemScores:
    """One system's numbers: a model or a predictions file."""

    label: str  # "A" or "B"
    source: str  # model description or file name
    values: dict[str, float] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # what each value is computed from, example by example, for the paired bootstrap
    examples: dict[str, significance.ExampleStats] = field(default_factory=dict)
    predictions: list[dict[str, Any]] | None = None  # rows of predictions.jsonl


@dataclass
class Report:
    mode: str
    systems: list[SystemScores]
    data: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bootstrap: significance.Bootstrap | None = None


def compare(report: Report, n_samples: int, seed: int) -> None:
    """The paired bootstrap (n_samples resamples; 0 = off) for every value both systems have
    per-example statistics for (differences are computed where they are shown and saved)."""
    a, b = report.systems
    if n_samples > 0 and a.examples and b.examples:
        report.bootstrap = significance.paired_bootstrap(
            a.examples, b.examples, a.values, b.values, n_samples=n_samples, seed=seed
        )


def differences(report: Report) -> dict[str, float]:
    """B - A for every metric both systems have."""
    if len(report.systems) < 2:
        return {}
    a, b = report.systems
    return {k: b.values[k] - a.values[k] for k in a.values if k in b.values}


UNITS = {
    "bleu/chrf/rouge*/exact_match/f1/accuracy/self_bleu": "0-100 (sacreBLEU convention)",
    "rouge*": "mean of per-pair rouge-score F-measures, x 100 (tokenizer: signatures.rouge)",
    "distinct_1/distinct_2": "unique n-grams / all n-grams over all outputs, 0-1",
    "avg_length": "units per output: words, or characters for CJK/Thai (details.text.units)",
    "perplexity_*": "exp(mean NLL per scored token, nats); lower is better",
    "<task>/<metric>": "lm-evaluation-harness's own value and units (acc, acc_norm: 0-1)",
    "pseudo_perplexity": "exp(mean NLL of each token masked alone, nats); lower is better",
    "masked_accuracy": "0-100: top-1 prediction of each token masked alone",
}


def to_json(report: Report) -> dict[str, Any]:
    """metrics.json: numbers first, then everything needed to repeat them."""
    a = report.systems[0]
    out: dict[str, Any] = {
        "mode": report.mode,
        "metrics": a.values,
        "system": a.source,
        "details": a.details,
        "signatures": a.signatures,
        "data": report.data,
        "settings": report.settings,
        "notes": report.notes,
        "units": UNITS,
        "versions": versions(
            ("llmkit", "sacrebleu", "rouge-score", "torch", "transformers", "lm_eval", "evaluate")
        ),
        "command": " ".join(["llmkit", *sys.argv[1:]]),
    }
    if len(report.systems) == 2:
        b = report.systems[1]
        out["b"] = {"system": b.source, "metrics": b.values, "details": b.details}
        out["difference"] = differences(report)
        boot = report.bootstrap
        if boot is not None:
            untested = [k for k in out["difference"] if k not in boot.tests]
            out["paired_bootstrap"] = boot.to_json(untested)
            if boot.bleu is not None:  # BLEU's test, in the layout it had on its own
                out["paired_bootstrap_bleu"] = vars(boot.bleu)
    return out


def save(report: Report, out_dir: Path) -> None:
    """Predictions first and metrics.json last: a metrics.json means the folder is complete."""
    mark_owned(out_dir, EVAL)
    for system in report.systems:
        if system.predictions is not None:
            write_jsonl(out_dir / PREDICTIONS[system.label], system.predictions)
    if len(report.systems) == 2:
        plot_ab(report, out_dir / "ab.png")
    write_json(out_dir / METRICS_JSON, to_json(report))


def plot_ab(report: Report, path: Path) -> None:
    """One small panel per metric (scales differ: BLEU ~10, distinct ~0.5, perplexity ~50)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    a, b = report.systems
    keys = [k for k in a.values if k in b.values]
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        values = [a.values[key], b.values[key]]
        bars = ax.bar(["A", "B"], values, color=["#4c72b0", "#dd8452"])
        ax.bar_label(bars, labels=[_fmt(key, v) for v in values], fontsize=8)
        title = DISPLAY.get(key, key)
        if key in LOWER_IS_BETTER:
            title += " (lower=better)"
        test = report.bootstrap.tests.get(key) if report.bootstrap else None
        if test is not None:
            title += f"\np = {test.p_value:.3f}"
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.2)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"A: {_short(a.source)}   B: {_short(b.source)}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _short(text: str, width: int = 50) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _fmt(key: str, value: float) -> str:
    """Two decimals for 0-100 scores and perplexity, four for 0-1 ratios (distinct-n)."""
    if math.isinf(value) or math.isnan(value):
        return str(value)
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    # distinct-n and the harness's values (<task>/acc) are 0-1 ratios
    return f"{value:.4f}" if key.startswith("distinct") or "/" in key else f"{value:.2f}"


def _signed(key: str, value: float) -> str:
    text = _fmt(key, value)
    return text if text.startswith("-") else "+" + text


def show(report: Report, out_dir: Path) -> None:
    """The table on stdout: A, and for A/B also B, B - A, and the bootstrap's 95% interval
    of B - A and p-value for every metric it tested."""
    from rich.console import Console
    from rich.table import Table

    two = len(report.systems) == 2
    tests = report.bootstrap.tests if report.bootstrap is not None else {}
    table = Table(title=f"llmkit eval ({report.mode})", title_justify="left")
    table.add_column("metric")
    for system in report.systems:
        table.add_column(system.label, justify="right")
    if two:
        table.add_column("B - A", justify="right")
    if tests:
        table.add_column("95% CI of B - A", justify="right")
        table.add_column("p", justify="right")
    diffs = differences(report)
    for key, value in report.systems[0].values.items():
        row = [DISPLAY.get(key, key), _fmt(key, value)]
        if two:
            other = report.systems[1].values.get(key)
            row.append("-" if other is None else _fmt(key, other))
            row.append(_signed(key, diffs[key]) if key in diffs else "-")
        if tests:
            test = tests.get(key)
            row += _test_cells(key, test) if test is not None else ["", ""]
        table.add_row(*row)
    console = Console(width=120)
    for system in report.systems:
        console.print(f"{system.label}: {system.source}", highlight=False)
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    if report.bootstrap is not None and tests:
        boot = report.bootstrap
        console.print(
            f"paired bootstrap: {boot.n_samples:,} resamples of {boot.examples:,} examples, "
            f"seed {boot.seed}, {boot.seconds:.2f} s; * = p < 0.05",
            highlight=False,
        )
        untested = [DISPLAY.get(k, k) for k in diffs if k not in tests]
        if untested:
            console.print(
                f"not tested: {', '.join(untested)} (see paired_bootstrap.not_tested in "
                f"{METRICS_JSON})",
                highlight=False,
            )
    signatures = report.systems[0].signatures
    if "bleu" in signatures:
        console.print(f"BLEU signature: {signatures['bleu']}", highlight=False)
    if "rouge" in signatures:
        console.print(f"ROUGE: {signatures['rouge']}", highlight=False)
    text = report.systems[0].details.get("text")
    if text is not None and any(k in signatures for k in ("em", "f1", "distinct", "length")):
        console.print(f"EM/F1, distinct-n, length over {text['units']}", highlight=False)
    console.print(f"wrote {out_dir / METRICS_JSON}", highlight=False)


def _test_cells(key: str, test: significance.MetricTest) -> list[str]:
    interval = f"[{_fmt(key, test.ci_low)}, {_fmt(key, test.ci_high)}]"
    return [interval, f"{test.p_value:.3f}" + (" *" if test.p_value < 0.05 else "")]
