"""`llmkit plot RUN [RUN ...]`: training curves of one or several runs as one PNG."""

from __future__ import annotations

from llmkit.config.requests import PlotRequest
from llmkit.errors import UsageError
from llmkit.evaluation.plot import Drawn, draw, labels, read_curves
from llmkit.io.write import check_output

DEFAULT_NAME = "plots.png"


def run_plot(req: PlotRequest) -> Drawn:
    names = labels(req.runs)
    runs = [read_curves(run, req.x, name) for run, name in zip(req.runs, names, strict=True)]
    out = req.output or req.runs[0] / DEFAULT_NAME
    if out.suffix.lower() != ".png":
        raise UsageError(f"--output {out}: plots are PNG files; give a name ending in .png")
    check_output(out, [run.source for run in runs], overwrite=req.overwrite)
    drawn = draw(runs, out, x=req.x)
    width, height = drawn.size
    print(
        f"wrote {out} ({width}x{height}): {', '.join(drawn.panels)} "
        f"for {len(runs)} run{'s' if len(runs) > 1 else ''}"
    )
    return drawn
