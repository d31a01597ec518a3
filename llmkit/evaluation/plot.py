"""Training curves from runs' metrics.jsonl, drawn as one PNG (matplotlib, Agg backend).

One panel per metric (train loss, eval loss, eval perplexity, learning rate, then any task
metrics the evaluations computed: accuracy, macro-F1, BLEU, chrF, ROUGE), x = optimizer step
or tokens seen; several runs share each panel, one colour per run, named by run folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmkit.errors import UsageError
from llmkit.io.files import read_text
from llmkit.io.runs import METRICS_JSONL
from llmkit.io.write import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes

XAxis = Literal["steps", "tokens"]

# Fixed panels, in this order: metrics.jsonl key -> title.
PANELS = {
    "loss": "train loss",
    "eval_loss": "eval loss",
    "eval_perplexity": "eval perplexity",
    "learning_rate": "learning rate",
    # Preference tuning (TRL): the implicit rewards on training batches.
    "rewards/accuracies": "train reward accuracy",
    "rewards/margins": "train reward margin",
}
# Task metrics come next, these first (the order of the training log lines), then the rest
# by name; `eval_*` keys that time the evaluation are no curves.
TASK_TITLES = {
    "eval_accuracy": "eval accuracy",
    "eval_macro_f1": "eval macro-F1",
    "eval_bleu": "eval BLEU",
    "eval_chrf": "eval chrF",
    "eval_rougeL": "eval ROUGE-L",
    "eval_rouge1": "eval ROUGE-1",
    "eval_rouge2": "eval ROUGE-2",
}
NOT_CURVES = {
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "eval_model_preparation_time",
    "eval_generation_seconds",
    # TRL's diagnostics beside its reward metrics: no curve a user reads for progress.
    "eval_num_tokens",
    "eval_entropy",
    "eval_logits/chosen",
    "eval_logits/rejected",
    "eval_mean_token_accuracy",
}
# Token counts: llmkit's own key (MetricsJsonl adds it to every record), then the Trainer's.
TOKEN_KEYS = ("tokens_seen", "num_input_tokens_seen")

PANEL_INCHES = (5.0, 3.4)  # one panel's width and height
DPI = 100
MAX_COLUMNS = 3


@dataclass
class RunCurves:
    """One run's curves: metric key -> points (x, y), sorted by x, one point per x."""

    name: str
    source: Path
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Drawn:
    """What `draw` put in the PNG."""

    path: Path
    panels: list[str]  # titles, in reading order (left to right, top to bottom)
    runs: list[str]  # legend labels
    size: tuple[int, int]  # pixels, width x height
    figure: Any = field(default=None, repr=False, compare=False)  # matplotlib Figure

    def _repr_png_(self) -> bytes:
        """A notebook shows the plot itself (IPython's rich display protocol)."""
        return self.path.read_bytes()


def read_curves(run: Path, x: XAxis = "steps", name: str | None = None) -> RunCurves:
    """The curves in `run`/metrics.jsonl. Where one x holds several values (the evaluation
    after training repeats the last one; a resumed run re-logs steps after its checkpoint),
    the last one logged wins. A malformed line (a run killed mid-write) is skipped."""
    if not run.exists():
        raise UsageError(f"run {run} does not exist")
    if not run.is_dir():
        raise UsageError(f"{run} is not a run folder (a folder made by pretrain or finetune)")
    source = run / METRICS_JSONL
    if not source.exists():
        raise UsageError(
            f"{run} has no {METRICS_JSONL}: not a run folder, or one that never logged"
        )
    points: dict[str, dict[float, float]] = {}
    for line in read_text(source).splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        at = _x(record, x)
        if at is None:
            continue
        for key, value in record.items():
            if _is_curve(key) and _finite(value):
                points.setdefault(key, {})[at] = float(value)
    curves = {key: sorted(by_x.items()) for key, by_x in points.items()}
    if not curves:
        what = "token counts" if x == "tokens" else "steps"
        raise UsageError(f"no points to plot in {source} (no records with losses and {what})")
    return RunCurves(name or run.name, source, curves)


def _x(record: dict[str, object], x: XAxis) -> float | None:
    keys = TOKEN_KEYS if x == "tokens" else ("step",)
    for key in keys:
        if _finite(record.get(key)):
            return float(record[key])  # type: ignore[arg-type]  # _finite: int or float
    return None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_curve(key: str) -> bool:
    if key in PANELS:
        return True
    return key.startswith("eval_") and key not in NOT_CURVES


def panel_keys(runs: list[RunCurves]) -> list[str]:
    """The metrics any run has, fixed panels first, then known task metrics, then others."""
    present = {key for run in runs for key in run.curves}
    ordered = [k for k in PANELS if k in present] + [k for k in TASK_TITLES if k in present]
    return ordered + sorted(present - set(ordered))


def title(key: str) -> str:
    return PANELS.get(key) or TASK_TITLES.get(key) or "eval " + key.removeprefix("eval_")


def labels(runs: list[Path]) -> list[str]:
    """Legend names: each run's folder name, or the path as given where two names clash."""
    names = [run.name or str(run) for run in runs]
    return [str(run) if names.count(n) > 1 else n for run, n in zip(runs, names, strict=True)]


def draw(runs: list[RunCurves], out: Path, *, x: XAxis = "steps") -> Drawn:
    """Write the runs' curves to `out` as a PNG (atomically), one panel per metric."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    keys = panel_keys(runs)
    # 4 panels (a plain LM run) read best as 2 x 2; more go 3 to a row.
    columns = 2 if len(keys) in (2, 4) else min(MAX_COLUMNS, len(keys))
    rows = math.ceil(len(keys) / columns)
    width, height = PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows
    # A Figure of its own, not pyplot's: no backend is switched (a notebook keeps its inline
    # one), nothing is left open in pyplot, and PNG output uses Agg by itself.
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    flat = list(axes.flat)
    for ax, key in zip(flat, keys, strict=False):  # spare axes are switched off below
        _panel(ax, key, runs, colors, x)
    for ax in flat[len(keys) :]:
        ax.set_axis_off()
    lines = [
        Line2D([], [], color=colors[i % len(colors)], marker="o", markersize=3)
        for i in range(len(runs))
    ]
    fig.legend(
        lines,
        [run.name for run in runs],
        loc="outside upper center",
        ncols=min(len(runs), 4),
        frameon=False,
    )
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    size = (round(width * DPI), round(height * DPI))
    return Drawn(out, [title(k) for k in keys], [run.name for run in runs], size, fig)


def _panel(ax: Axes, key: str, runs: list[RunCurves], colors: list[str], x: XAxis) -> None:
    from matplotlib.ticker import MaxNLocator

    values: list[float] = []
    for i, run in enumerate(runs):
        points = run.curves.get(key)
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        values += ys
        ax.plot(xs, ys, color=colors[i % len(colors)], marker="o", markersize=3, linewidth=1.2)
    ax.set_title(title(key))
    ax.set_xlabel("tokens seen" if x == "tokens" else "step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if key == "learning_rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    # Perplexity falls from ~50,000 (random GPT-2 vocabulary) to tens: on a linear axis
    # everything after the first evaluations is a flat line at the bottom.
    positive = [v for v in values if v > 0]
    if key.endswith("perplexity") and positive and max(positive) > 10 * min(positive):
        ax.set_yscale("log")
