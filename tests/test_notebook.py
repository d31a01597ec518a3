"""llmkit in Jupyter: examples/quickstart.ipynb runs top to bottom in a real kernel (nbclient),
training's progress is one HTML bar updated in place (no carriage returns in the saved
outputs), the plot shows as an image; and Ctrl-C in a Python training run saves a
checkpoint, raises TrainingInterrupted, and leaves the process able to train again."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


@pytest.mark.slow  # a kernel, torch and 10 training steps: ~60-90 s on a busy 2-core machine
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    streams = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "\r" not in streams  # no tqdm text bars in the saved notebook
    assert "step    10/10 | loss" in streams
    training = next(c for c in nb.cells if "llmkit.pretrain(" in c.source)
    bars = [o for o in training.outputs if o.output_type == "display_data"]
    assert len(bars) == 1 and "<progress" in bars[0].data["text/html"]
    assert 'value="10" max="10"' in bars[0].data["text/html"]  # updated in place to the end
    result = next(o for o in training.outputs if o.output_type == "execute_result")
    assert result.data["text/plain"].startswith("('reached max_steps 10'")
    shown = next(o for o in nb.cells[-1].outputs if o.output_type == "execute_result")
    assert shown.data["image/png"]  # the plot, shown as an image
    assert (tmp_path / "runs" / "quickstart" / "plots.png").is_file()


SCRIPT = """
import sys, llmkit
out, short = sys.argv[1], sys.argv[2]
try:
    llmkit.pretrain("tiny-cpu", train={"max_steps": 100000, "log_every": 1, "eval_every": 100000,
                                      "save_every": 100000, "output_dir": out})
except llmkit.TrainingInterrupted as e:
    print("INTERRUPTED", isinstance(e, KeyboardInterrupt), e.run, str(e), flush=True)
run = llmkit.pretrain("tiny-cpu", train={"max_steps": 2, "eval_every": 2, "save_every": 2,
                                         "output_dir": short})
print("AGAIN", run.stop_reason, flush=True)
"""


@pytest.mark.slow  # two short trainings in one process: ~40 s on a busy machine
def test_ctrl_c_in_python_checkpoints_raises_and_trains_again(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out, short = tmp_path / "long", tmp_path / "short"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(short)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # wait for a training step's line, not a sleep
        lines.append(line)
        if line.startswith("step     2/"):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=600)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text[-3000:]
    interrupted = next(line for line in text.splitlines() if line.startswith("INTERRUPTED"))
    assert interrupted.startswith(f"INTERRUPTED True {out} training stopped")
    assert "resume=True" in interrupted
    assert [p.name for p in out.glob("checkpoint-*")], text[-2000:]
    assert "AGAIN reached max_steps 2" in text  # the Ctrl-C did not stop the next run
