"""`llmkit plot` on real tiny runs, and TensorBoard: one event folder, perplexity logged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli

from llmkit.config.pretrain import PretrainRecipe
from llmkit.config.requests import PlotRequest
from llmkit.errors import UsageError
from llmkit.evaluation.plot import Drawn, read_curves
from llmkit.flags import FIX_WORDING

TINY = REPO / "recipes/pretrain/tiny-cpu.yaml"
LM_PANELS = ["train loss", "eval loss", "eval perplexity", "learning rate"]


def _pretrain(out: Path, lr: str) -> Path:
    """4 steps of the tiny GPT-2, a log every step and an evaluation every 2, TensorBoard on:
    about 10 s on 2 cores (a small validation split and batch keep evaluations cheap)."""
    from llmkit.commands.pretrain import run_pretrain
    from llmkit.config.loader import load_recipe

    overrides = [
        f"train.output_dir={out}",
        f"data.sources=[{REPO / 'tests/data'}]",
        "data.validation=0.03",
        "train.max_steps=4",
        "train.batch_size=2",
        f"train.lr={lr}",
        "train.log_every=1",
        "train.eval_every=2",
        "train.save_every=null",
        "train.tensorboard=true",
    ]
    run_pretrain(load_recipe(PretrainRecipe, str(TINY), overrides))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    return _pretrain(root / "slow", "1.0e-3"), _pretrain(root / "fast", "1.0e-2")


def _plot(*runs: Path, **options: Any) -> Drawn:
    from llmkit.commands.plot import run_plot

    return run_plot(PlotRequest(runs=list(runs), **options))


def _error(*runs: Path, **options: Any) -> str:
    """The line the command line prints for a UsageError."""
    with pytest.raises(UsageError) as e:
        _plot(*runs, **options)
    return e.value.render(FIX_WORDING)


def test_plot_of_a_run_is_a_png_with_its_panels(runs: tuple[Path, Path]) -> None:
    from PIL import Image

    run = runs[0]
    proc = run_cli("plot", str(run))
    assert proc.returncode == 0, proc.stderr
    out = run / "plots.png"
    assert proc.stdout.strip() == (f"wrote {out} (1000x680): {', '.join(LM_PANELS)} for 1 run")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1000, 680)
        image.load()  # the whole file decodes
        # Not a blank canvas: anti-aliased curves and text give hundreds of colours, blank one.
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50


def test_two_runs_are_overlaid_against_tokens(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "both.png"
    drawn = _plot(*runs, x="tokens", output=out)
    assert (drawn.panels, drawn.runs, drawn.size) == (LM_PANELS, ["slow", "fast"], (1000, 680))
    # The x axis is the token count each record logged: 4 steps of 2 blocks of 64 tokens.
    curves = read_curves(runs[1], "tokens").curves
    assert [x for x, _ in curves["loss"]] == [128, 256, 384, 512]
    assert [x for x, _ in curves["eval_loss"]] == [0, 256, 512]  # after-training eval: one point
    with Image.open(out) as image:
        assert image.size == (1000, 680)


def test_task_metrics_get_panels_and_timings_do_not(tmp_path: Path) -> None:
    """A classifier's log (no perplexity): accuracy and macro-F1 panels, no runtime panel;
    the half line a killed run leaves at the end is skipped."""
    run = tmp_path / "clf"
    run.mkdir()
    records = [
        {"step": 0, "eval_loss": 1.4, "eval_accuracy": 0.25, "eval_macro_f1": 0.1,
         "eval_runtime": 0.5},
        {"step": 5, "loss": 1.2, "learning_rate": 2e-4, "tokens_seen": 900},
        {"step": 10, "eval_loss": 0.9, "eval_accuracy": 0.6, "eval_macro_f1": 0.55,
         "eval_runtime": 0.4},
    ]  # fmt: skip
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (run / "metrics.jsonl").write_text(lines + '{"step": 15, "lo')
    drawn = _plot(run)
    panels = ["train loss", "eval loss", "learning rate", "eval accuracy", "eval macro-F1"]
    assert drawn.panels == panels and drawn.size == (1500, 680)
    assert drawn.path == run / "plots.png" and drawn.path.exists()
    assert read_curves(run).curves["eval_accuracy"] == [(0, 0.25), (10, 0.6)]


def test_bad_inputs_are_one_error_line(runs: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    silent = tmp_path / "silent"  # a run that never logged a loss
    silent.mkdir()
    (silent / "metrics.jsonl").write_text('{"step": 0, "eval_runtime": 1.0}\n')
    cases = {
        str(tmp_path / "missing"): f"error: run {tmp_path / 'missing'} does not exist",
        str(runs[0] / "config.json"): f"error: {runs[0] / 'config.json'} is not a run folder",
        str(empty): f"error: {empty} has no metrics.jsonl",
        str(silent): f"error: no points to plot in {silent / 'metrics.jsonl'}",
    }
    for arg, start in cases.items():
        err = _error(runs[0], Path(arg), output=tmp_path / "x.png")
        assert err.startswith(start) and "\n" not in err, err
    assert not (tmp_path / "x.png").exists()
    err = _error(runs[0], output=tmp_path / "x.svg")
    assert (
        err
        == f"error: --output {tmp_path / 'x.svg'}: plots are PNG files; give a name ending in .png"
    )
    # What the user sees: that line alone on stderr, exit code 2.
    proc = run_cli("plot", str(runs[0]), str(empty))
    assert proc.returncode == 2
    assert (
        proc.stderr
        == f"error: {empty} has no metrics.jsonl: not a run folder, or one that never logged\n"
    )


def test_an_existing_file_is_replaced_only_with_overwrite(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "mine.png"
    out.write_bytes(b"the user's own picture")
    err = _error(runs[0], output=out)
    assert err == f"error: output {out} already exists: pass --overwrite to replace it"
    assert out.read_bytes() == b"the user's own picture"
    _plot(runs[0], output=out, overwrite=True)
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_tensorboard_has_one_event_folder_per_run_with_perplexity(
    runs: tuple[Path, Path],
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs[0]
    folders = {p.parent for p in run.rglob("events.out.tfevents.*")}
    assert folders == {run / "tensorboard"}  # was also <run>/runs/<date>_<host>/
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = json.loads((run / "metrics.json").read_text())
    ppl = {e.step: e.value for e in events.Scalars("eval/perplexity")}
    assert sorted(ppl) == [0, 2, 4]
    assert ppl[4] == pytest.approx(logged["eval_perplexity"], rel=1e-5)
    train_ppl = events.Scalars("train/perplexity")
    losses = events.Scalars("train/loss")
    assert [e.step for e in train_ppl] == [1, 2, 3, 4]
    assert [p.value for p in train_ppl] == pytest.approx(
        [2.718281828**e.value for e in losses], rel=1e-5
    )


def test_run_folder_names_clash_shows_paths(runs: tuple[Path, Path], tmp_path: Path) -> None:
    twin = tmp_path / "other" / runs[0].name
    shutil.copytree(runs[0], twin, ignore=shutil.ignore_patterns("*.safetensors", "checkpoint-*"))
    drawn = _plot(runs[0], twin, output=tmp_path / "t.png")
    assert drawn.runs == [str(runs[0]), str(twin)]
