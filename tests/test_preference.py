"""`llmkit finetune` with task: preference (DPO, ORPO, KTO through TRL): defaults, the
step-0 loss, one-pass data checks, saved runs that generate, resume after kill -9.

Training runs are real CLI subprocesses on a tiny Llama (2 layers, width 32) with SmolLM2's
real tokenizer and chat template, on the embedded chatterbot preference pairs.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from llmkit.config.finetune import FinetuneRecipe
from llmkit.config.loader import load_recipe
from llmkit.errors import UsageError

RECIPE = str(REPO / "recipes/finetune/dpo-chatterbot.yaml")


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, validation) JSONL: 24 + 4 of the embedded chatterbot preference pairs (the
    whole set, 2,064 pairs, costs ~10 s of chat rendering and tokenizing per run)."""
    from llmkit.data.examples import EMBEDDED_ROWS

    train, held_out = EMBEDDED_ROWS["embedded:chatterbot-preference"]()
    folder = tmp_path_factory.mktemp("pairs")
    paths = folder / "train.jsonl", folder / "validation.jsonl"
    for path, rows in zip(paths, (train[::80][:24], held_out[:4]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def _args(
    model: Path, out: Path, data: tuple[Path, Path] | None, *extra: str, steps: int = 2
) -> list[str]:
    sets = {
        "model.init": str(model),
        "train.log_every": "1",
        "train.eval_every": "null",
        "train.save_every": "null",
        "eval.metric_for_best_model": "loss",
        "data.max_eval_examples": "4",
    }
    if data is not None:
        sets |= {"data.sources": f"[{data[0]}]", "data.validation": str(data[1])}
    flat = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    return ["finetune", RECIPE, "--output-dir", str(out), "--max-steps", str(steps), *flat, *extra]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# --- recipe defaults -------------------------------------------------------------------------


def test_each_method_gets_trl_defaults_field_by_field(tmp_path: Path) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text("task: preference\n")

    def recipe(*sets: str) -> FinetuneRecipe:
        return load_recipe(FinetuneRecipe, bare, list(sets))

    lora = recipe()
    assert (lora.preference.method, lora.preference.beta, lora.train.lr) == ("dpo", 0.1, 1e-5)
    assert lora.model.init == "embedded:smollm2"
    full = recipe("lora.enabled=false")
    assert full.train.lr == 1e-6  # TRL's DPOConfig default, for full fine-tuning
    assert full.train.eval_every == 50  # the other fine-tuning defaults still apply
    assert recipe("preference.method=simpo").preference.beta == 2.0
    assert recipe("train.lr=3.0e-4").train.lr == 3e-4  # a set value wins
    assert recipe("preference.beta=0.5").preference.beta == 0.5
    with pytest.raises(UsageError, match="kto needs 2 or more"):
        recipe("preference.method=kto", "train.batch_size=1")
    with pytest.raises(UsageError, match="kto reports no rewards/accuracies"):
        recipe("preference.method=kto", "eval.metric_for_best_model=rewards/accuracies")
    with pytest.raises(UsageError, match="not reported for task preference"):
        recipe("eval.metric_for_best_model=bleu")


def test_embedded_pairs_cross_topics_and_keep_the_held_out_split() -> None:
    from llmkit.data.examples import EMBEDDED_ROWS, chatterbot_rows

    train, held_out = EMBEDDED_ROWS["embedded:chatterbot-preference"]()
    assert len(train) > 1000 and len(held_out) > 50
    assert all(r["chosen"].strip() != r["rejected"].strip() for r in train + held_out)
    sft_held_out = {r["question"] for r in chatterbot_rows()[1]}
    assert {r["prompt"] for r in held_out} <= sft_held_out
    assert not {r["prompt"] for r in train} & sft_held_out


# --- training ------------------------------------------------------------------------------


def test_dpo_starts_at_log_2_and_logs_trl_reward_metrics(
    tiny_llama_dir: Path, tmp_path: Path, pairs_jsonl: tuple[Path, Path]
) -> None:
    """Policy == reference at step 0 (LoRA's B starts at zero), so every pair's DPO loss is
    -log sigmoid(0) = log 2."""
    run = tmp_path / "dpo"
    out = run_cli(*_args(tiny_llama_dir, run, pairs_jsonl))
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_loss_before"] == pytest.approx(math.log(2), abs=1e-6)
    train_rows = [r for r in _rows(run) if "loss" in r]
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert key in train_rows[0], key
    assert "eval_perplexity" not in metrics  # a preference loss is no NLL
    card = json.loads((run / "llmkit_task.json").read_text())
    assert card["task"] == "preference" and card["prompt"]["chat"] is True
    recipe = (run / "recipe.yaml").read_text()
    assert "beta: 0.1" in recipe and "method: dpo" in recipe
    assert not any(p.name == "README.md" and "TRL" in p.read_text() for p in run.glob("*.md"))
    from llmkit.evaluation.plot import panel_keys, read_curves

    assert {"rewards/margins", "eval_rewards/margins"} <= set(panel_keys([read_curves(run)]))
    plot = run_cli("plot", str(run), "--output", str(tmp_path / "curves.png"))
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert (tmp_path / "curves.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "method, extra",
    [
        pytest.param("orpo", [], marks=pytest.mark.slow),
        pytest.param("kto", [], marks=pytest.mark.slow),
        pytest.param("simpo", [], marks=pytest.mark.slow),
        # full: a frozen copy of the start weights is the reference
        pytest.param("dpo", ["--set", "lora.enabled=false"], marks=pytest.mark.slow),
    ],
)
def test_method_trains_and_saves_a_run_generate_prompts_as_trained(
    tiny_llama_dir: Path,
    tmp_path: Path,
    pairs_jsonl: tuple[Path, Path],
    method: str,
    extra: list[str],
) -> None:
    run = tmp_path / method
    args = _args(tiny_llama_dir, run, pairs_jsonl, "--set", f"preference.method={method}", *extra)
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"method {method}" in out.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    weights = "model.safetensors" if extra else "adapter_model.safetensors"
    assert (run / weights).exists()
    gen = run_cli("generate", "--model", str(run), "--max-new-tokens", "4", "Hello")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert "chat template" in gen.stderr  # prompted as trained: the run's card says chat


# --- bad data ------------------------------------------------------------------------------


def test_bad_rows_are_listed_all_at_once_and_nothing_is_written(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    rows = [
        {"prompt": "Hi", "chosen": "Hello there."},  # row 1: no rejected
        {"prompt": "Hi", "chosen": "Same answer", "rejected": "Same answer"},  # row 2
        {"prompt": "word " * 200, "chosen": "a", "rejected": "b"},  # row 3: too long
        {"prompt": "你好", "chosen": "你好！", "rejected": "再见。"},  # fine
        {"prompt": "Hi", "completion": "Hey", "label": "yes"},  # row 5: label not a bool
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    before = data.read_bytes()
    run = tmp_path / "run"
    out = run_cli(
        *_args(tiny_llama_dir, run, (data, data)),
        *("--set", "data.max_length=64", "--set", "data.max_eval_examples=null"),
    )
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr
    # each problem once per split (the file is both): 4 problems x 2
    assert err[0] == "error: 8 problems:", out.stderr
    assert any("train row 1: missing rejected" in line for line in err)
    assert any("train row 2: chosen and rejected are identical" in line for line in err)
    assert any(
        "train row 3: the prompt alone is" in line and "max_length is 64" in line for line in err
    )
    assert any("train row 5: label must be true" in line for line in err)
    assert not any("row 4" in line for line in err)
    assert data.read_bytes() == before and not run.exists()


def test_unpaired_rows_need_kto(tiny_llama_dir: Path, tmp_path: Path) -> None:
    rows = [{"prompt": f"Q{i}", "completion": f"A{i}", "label": i % 2 == 0} for i in range(8)]
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli(*_args(tiny_llama_dir, tmp_path / "run", (data, data)))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: preference.method dpo: needs prompt/chosen/rejected pairs; unpaired "
        "prompt/completion/label rows are for kto"
    )
    assert not (tmp_path / "run").exists()


# --- resume ----------------------------------------------------------------------------------


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    f = run / "metrics.jsonl"
    while not (f.exists() and f'"step": {step},' in f.read_text()):
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"run ended before step {step}: {err[-2000:]}")
        assert time.monotonic() < deadline, f"step {step} never logged"
        time.sleep(0.05)


@pytest.mark.slow
def test_dpo_killed_and_resumed_equals_uninterrupted(
    tiny_llama_dir: Path, tmp_path: Path, pairs_jsonl: tuple[Path, Path]
) -> None:
    from safetensors.torch import load_file

    extra = ["--set", "train.save_every=3", "--set", "train.save_total_limit=null"]
    full = run_cli(*_args(tiny_llama_dir, tmp_path / "full", pairs_jsonl, *extra, steps=8))
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "killed"
    args = _args(tiny_llama_dir, run, pairs_jsonl, *extra, steps=8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_step(run, 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run}/checkpoint-3" in resumed.stdout
    a = load_file(tmp_path / "full/adapter_model.safetensors")
    b = load_file(run / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    losses = {r["step"]: r["loss"] for r in _rows(tmp_path / "full") if "loss" in r}
    resumed_losses = {r["step"]: r["loss"] for r in _rows(run) if "loss" in r}
    assert resumed_losses == losses


# --- eval on preference pairs ------------------------------------------------------------------


def test_swapping_chosen_and_rejected_negates_every_margin(
    tiny_llama_dir: Path, smollm2_tokenizer: object
) -> None:
    from transformers import AutoModelForCausalLM

    from llmkit.evaluation.preference import preference_scores, render_pairs

    rows = [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "Five, I think."},
        {"prompt": "你好", "chosen": "你好！很高兴见到你。", "rejected": "再见"},
        {"prompt": "สวัสดี", "chosen": "สวัสดีครับ", "rejected": "ลาก่อน"},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "Bye."},
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    for chat in (True, False):
        pairs = render_pairs(rows, smollm2_tokenizer, chat=chat)
        a = preference_scores(model, smollm2_tokenizer, pairs, batch_size=3)
        b = preference_scores(model, smollm2_tokenizer, [(p, r, c) for p, c, r in pairs])
        assert [pytest.approx(-m, abs=1e-4) for m in b.margins] == a.margins
        assert a.accuracy + b.accuracy == pytest.approx(100.0)  # no ties on random weights
        assert a.margin == pytest.approx(sum(a.margins) / 4)


def test_eval_reports_preference_accuracy_and_the_paired_test(
    tiny_llama_dir: Path, tmp_path: Path, pairs_jsonl: tuple[Path, Path]
) -> None:
    data = pairs_jsonl[0]
    before = data.read_bytes()
    out_dir = tmp_path / "eval"
    out = run_cli(
        "eval", "--model", str(tiny_llama_dir), "--model-b", str(tiny_llama_dir),
        "--data", str(data), "--output-dir", str(out_dir), "--limit", "6",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    values = metrics["metrics"]
    assert 0 <= values["preference_accuracy"] <= 100 and metrics["data"]["examples"] == 6
    assert "preference_accuracy" in out.stdout
    test = json.dumps(metrics)
    assert "preference_margin" in test and "p_value" in test  # A/B: the paired bootstrap ran
    assert data.read_bytes() == before


@pytest.mark.slow
@pytest.mark.timeout(1800)  # SmolLM2 trains 6 DPO steps, then two models score 8 pairs
def test_shipped_recipe_raises_held_out_preference(tmp_path: Path) -> None:
    """The shipped DPO recipe as it is, on the real SmolLM2: the held-out pairs' implicit
    reward accuracy and margin rise from 0 (policy = reference), and their log-prob
    preference margin rises over the base model's."""
    run = tmp_path / "dpo"
    # 6 of its 16 steps (each ~30 s on 2 quiet cores), evaluated at the end: CI's slow tier
    # budget; the full recipe's figures are in README.
    out = run_cli(
        "finetune", RECIPE, "--output-dir", str(run), "--max-steps", "6",
        "--set", "train.eval_every=6", "--set", "train.save_every=6",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["rewards/accuracies_before"] == 0.0
    assert metrics["rewards/accuracies"] >= 0.6 and metrics["rewards/margins"] > 0
    ab = run_cli(
        "eval", "--model", "embedded:smollm2", "--model-b", str(run),
        "--data", str(run / "validation.jsonl"), "--limit", "8",
        "--output-dir", str(tmp_path / "ab"),
    )  # fmt: skip
    assert ab.returncode == 0, ab.stderr[-3000:]
    result = json.loads((tmp_path / "ab" / "metrics.json").read_text())
    assert result["metrics"]["preference_margin"] < _metric_b(result, "preference_margin")


def _metric_b(result: dict, name: str) -> float:
    """System B's value in an A/B eval's metrics.json."""
    return float(result["b"]["metrics"][name])
