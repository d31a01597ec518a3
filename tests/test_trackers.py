"""`train.report_to`: W&B (offline) and MLflow (local SQLite store) get exactly the numbers of
metrics.jsonl, in one run each, with the resolved recipe as config; a missing or unknown
tracker is one error line before anything is written."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

TINY = [
    "pretrain", "tiny-cpu", "--set", "train.max_steps=6", "--set", "train.eval_every=3",
    "--set", "train.save_every=6", "--set", "train.log_every=2",
]  # fmt: skip
# What a run logs at each step, besides Trainer's timings (runtime, samples/s, flos).
COMPARED = ("loss", "eval_loss", "perplexity", "eval_perplexity", "learning_rate", "grad_norm")


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B transaction log (`run-*.wandb`): LevelDB's log format (32 KiB
    blocks of chunks: crc32 4, length 2, type 1 (full, first, middle, last)) after a 7-byte
    ":W&B" header, each record a `wandb.proto` Record. wandb 0.31 ships no reader for it."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, block = 7, b"", 32 * 1024
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or last of a split record
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def jsonl_values(run: Path) -> set[tuple[str, int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return {
        (key, int(row["step"]), float(row[key]))
        for row in rows
        for key in COMPARED
        if key in row and math.isfinite(float(row[key]))
    }


@pytest.mark.slow  # one real training run with both trackers: ~65 s on a busy 2-core machine
def test_wandb_offline_and_mlflow_sqlite_log_what_metrics_jsonl_holds(tmp_path: Path) -> None:
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    run = tmp_path / "run"
    out = run_cli(
        *TINY, "--set", "train.report_to=[mlflow,wandb]", "--output-dir", str(run),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    expected = jsonl_values(run)
    assert {k for k, _, _ in expected} == set(COMPARED)
    assert ("eval_loss", 6, json.loads((run / "metrics.json").read_text())["eval_loss"]) in expected

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]  # the final evaluation in the same run
    run_id = runs[0].info.run_id
    logged = {
        (key, m.step, m.value) for key in COMPARED for m in client.get_metric_history(run_id, key)
    }
    assert logged == expected
    params = runs[0].data.params
    assert params["recipe.train.max_steps"] == "6" and params["recipe.model.arch"] == "gpt2"

    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history: set[tuple[str, int, float]] = set()
    config: dict[str, Any] = {}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = record.history.item
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
            step = int(row["train/global_step"])
            for key, value in row.items():
                name = key.replace("train/", "").replace("eval/", "eval_")
                if name in COMPARED:
                    history.add((name, step, float(value)))
        elif kind == "config":
            config |= {i.key: json.loads(i.value_json) for i in record.config.update}
    assert history == expected
    assert config["recipe"]["train"]["max_steps"] == 6


def test_a_tracker_that_is_not_installed_is_one_error_line(tmp_path: Path) -> None:
    out = run_cli(*TINY, "--set", "train.report_to=comet_ml", "--output-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: train.report_to: comet_ml needs the comet-ml package, which is not installed "
        "(pip install comet-ml)"
    )
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()


def test_an_unknown_tracker_names_the_valid_ones(tmp_path: Path) -> None:
    out = run_cli(*TINY, "--set", "train.report_to=[wandb,wandbb]", "--dry-run")
    assert out.returncode == 2
    assert "train.report_to.1" in out.stderr and "'mlflow'" in out.stderr
    assert "Traceback" not in out.stderr
    ok = run_cli(*TINY, "--set", "train.report_to=wandb", "--dry-run")
    assert ok.returncode == 0 and "report_to:\n  - wandb" in ok.stdout


@pytest.mark.slow  # a text2text fine-tune scoring BLEU/ROUGE on generations: ~60 s, busy machine
def test_a_python_finetune_logs_its_task_metrics_and_loads_with_its_card(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmkit

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"source": f"count to {i}", "target": " ".join(map(str, range(1, i + 1)))})
            + "\n"
            for i in range(1, 41)
        )
    )
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns
    run = llmkit.finetune(
        task="text2text",
        model={"init": str(tiny_llama_dir)},
        data={"sources": [str(pairs)], "template": "{source} =", "max_eval_examples": 8},
        train={
            "max_steps": 4, "eval_every": 2, "save_every": 2, "log_every": 1, "batch_size": 4,
            "lr": 1e-2, "report_to": "mlflow", "output_dir": tmp_path / "t2t",
        },
        eval={"metric_for_best_model": "rougeL", "generate_examples": 4, "max_new_tokens": 8},
    )  # fmt: skip
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").open()]
    task = {
        (k, int(r["step"]), float(r[k]))
        for r in rows
        for k in ("eval_bleu", "eval_rougeL", "eval_loss")
        if k in r
    }
    assert {k for k, _, _ in task} == {"eval_bleu", "eval_rougeL", "eval_loss"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(db)
    (logged_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = {
        (k, m.step, m.value)
        for k in ("eval_bleu", "eval_rougeL", "eval_loss")
        for m in client.get_metric_history(logged_run.info.run_id, k)
    }
    assert logged == task
    assert logged_run.data.params["recipe.task"] == "text2text"

    # The run's card (its template and stop) applies in Python as in `llmkit generate`.
    ours = llmkit.load(run).generate("count to 3")
    cli = run_cli("generate", "--model", str(run.path), "count to 3")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == ours + "\n"
    # Its evaluation, as `llmkit eval --model RUN`: the run's own validation examples.
    report = llmkit.load(run).evaluate(output_dir=tmp_path / "eval", limit=4)
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert "bleu" in json.dumps(report)
