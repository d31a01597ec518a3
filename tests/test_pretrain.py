"""Pretraining end to end through the CLI on tiny configs: causal, masked, resume, 2 processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")
TINY_BERT = str(REPO / "recipes/pretrain/tiny-bert-cpu.yaml")


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "tests" / "data", tmp_path / "tests" / "data")
    return tmp_path


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _log_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def test_causal_lm_trains_and_saves_a_model_plain_transformers_loads(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_cli("pretrain", TINY, "--max-steps", "30", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    run = workdir / "runs" / "tiny-cpu"
    m = _metrics(run)
    assert m["steps"] == 30
    assert m["eval_loss"] < m["eval_loss_before"] - 1.0  # from ~10.8 (ln 50k) down
    assert "validation perplexity:" in out.stdout and "before ->" in out.stdout
    assert "global batch: 8 per device x 1 device(s) x 1 accumulation = 8 blocks" in out.stdout
    assert " tok/s " in out.stdout + out.stderr
    assert (run / "recipe.yaml").exists() and (run / "model.safetensors").exists()
    assert _log_steps(run)[-1] == 30
    assert (workdir / "runs" / "LATEST").read_text().strip() == "tiny-cpu"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run)
    tok = AutoTokenizer.from_pretrained(run)
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 10.0  # trained, not random (~10.8)
    assert model.config.vocab_size == 50304  # GPT-2's 50257 padded to a multiple of 64

    # The reported eval loss is the plain mean token loss on the run's validation blocks
    # (transformers 5's Trainer once made it 63/64 of that: see collate_causal).
    import yaml

    from llmkit.config.pretrain import PretrainRecipe
    from llmkit.data.prep import load_prepared

    recipe = PretrainRecipe.model_validate(yaml.safe_load((run / "recipe.yaml").read_text()))
    monkeypatch.chdir(workdir)  # the recipe's sources are relative to where it ran
    blocks = torch.from_numpy(load_prepared(recipe).validation.astype("int64"))
    with torch.no_grad():
        plain = model(blocks, labels=blocks).loss.item()
    assert abs(plain - m["eval_loss"]) < 1e-4


def test_masked_lm_trains_and_saves_a_bert_plain_transformers_loads(workdir: Path) -> None:
    out = run_cli("pretrain", TINY_BERT, "--max-steps", "30", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    run = workdir / "runs" / "tiny-bert-cpu"
    m = _metrics(run)
    assert m["eval_loss"] < m["eval_loss_before"] - 0.5

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(run)
    tok = AutoTokenizer.from_pretrained(run)
    assert tok.mask_token == "[MASK]"
    enc = tok("to be or not to [MASK]", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[-1] == model.config.vocab_size >= len(tok)


def test_existing_run_is_refused_then_resumed_from_its_step(workdir: Path) -> None:
    first = run_cli(
        "pretrain", TINY, "--max-steps", "20", "--set", "train.save_every=10", cwd=workdir
    )
    assert first.returncode == 0, first.stderr[-3000:]
    run = workdir / "runs" / "tiny-cpu"
    weights = (run / "model.safetensors").read_bytes()

    again = run_cli("pretrain", TINY, "--max-steps", "20", cwd=workdir)
    assert again.returncode == 2
    assert "already holds a run: pass --resume to continue it, --overwrite" in again.stderr
    assert (run / "model.safetensors").read_bytes() == weights  # nothing lost

    resumed = run_cli(
        "pretrain",
        TINY,
        "--max-steps",
        "30",
        "--set",
        "train.save_every=10",
        "--resume",
        cwd=workdir,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = _log_steps(run)
    # First run logged 1, 10, 20; the resumed one continues at 30, it does not restart at 1.
    assert steps == [1, 10, 20, 30]
    assert _metrics(run)["steps"] == 30
    # The resumed run still reports the perplexity from before training began.
    assert "before ->" in resumed.stdout
    assert _metrics(run)["eval_loss_before"] > _metrics(run)["eval_loss"]


def test_resume_without_checkpoint_is_a_clear_error(workdir: Path) -> None:
    out = run_cli("pretrain", TINY, "--resume", "--output-dir", "runs/none", cwd=workdir)
    assert out.returncode == 2
    assert "--resume: no checkpoint-* folder in runs/none" in out.stderr


def test_two_processes_train_one_run_with_the_recipes_global_batch(workdir: Path) -> None:
    out = run_cli(
        "pretrain",
        TINY,
        "--devices",
        "2",
        "--max-steps",
        "6",
        "--set",
        "train.eval_every=3",
        "--set",
        "train.save_every=6",
        cwd=workdir,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "launching 2 processes" in out.stdout
    assert (
        "8 per device x 2 device(s) x 1 accumulation = 16 blocks = 1,024 tokens/step" in out.stdout
    )
    runs = [p for p in (workdir / "runs").iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["tiny-cpu"]
    run = runs[0]
    m = _metrics(run)
    assert m["world_size"] == 2
    # Tokens are counted on every rank and summed: both ranks trained 6 steps of 8 x 64.
    assert m["tokens_seen"] == 6 * 2 * 8 * 64
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-6"]
    assert (run / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["pretrain/gpt-shakespeare", "pretrain/bert-mlm-shakespeare", "pretrain/llama-shakespeare"],
)
def test_shipped_recipe_trains_on_the_full_corpus(name: str, tmp_path: Path) -> None:
    out = run_cli(
        "pretrain",
        name,
        "--max-steps",
        "5",
        "--set",
        "train.eval_every=null",
        "--set",
        "data.max_eval_blocks=8",
        "--set",
        "train.save_every=null",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / Path(name).name
    m = _metrics(run)
    assert m["steps"] == 5
    assert m["eval_loss"] < m["eval_loss_before"]
    assert "1,333,770 tokens" in out.stdout or "tokens ->" in out.stdout


def test_gpu_only_choices_follow_detection(tmp_path: Path) -> None:
    from llmkit.config.recipe import TrainConfig
    from llmkit.train.arguments import training_arguments

    args = training_arguments(TrainConfig(), tmp_path)
    gpu = torch.cuda.is_available()  # False on the CI machines: all three must be off there
    bf16 = gpu and torch.cuda.is_bf16_supported()
    assert (args.use_cpu, args.bf16, args.torch_compile) == (not gpu, bf16, gpu)
    assert args.optim == "adamw_torch_fused"  # has a CPU kernel; ~9 ms vs ~78 ms a step
    assert training_arguments(TrainConfig(compile=True), tmp_path).torch_compile is True
