"""The LSTM language model (`model.arch: lstm`): the transformers model itself, then a run
through the CLI as a user makes one: train, load, generate, resume exactly, eval perplexity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli
from safetensors.torch import load_file

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")
# tiny-cpu with the LSTM: 12 steps, a checkpoint every 6, no evaluation but the last.
ARGS = [
    "--set",
    "model.arch=lstm",
    "--max-steps",
    "12",
    "--set",
    "train.save_every=6",
    "--set",
    "train.eval_every=null",
    "--set",
    "train.log_every=1",
    "--set",
    "train.save_total_limit=null",
]


def _tiny_model(vocab: int = 97) -> torch.nn.Module:
    from llmkit.models.lstm import LSTMConfig, LSTMForCausalLM

    torch.manual_seed(0)
    config = LSTMConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, eos_token_id=0)
    return LSTMForCausalLM(config).eval()


def test_padded_rows_score_as_if_unpadded_and_greedy_generate_is_the_argmax_chain() -> None:
    model = _tiny_model()
    ids = torch.randint(1, 97, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding (batched generate)
    mask[2, 6:] = 0  # right padding
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        alone_left = model(ids[1:2, 4:]).logits[0]
        alone_right = model(ids[2:3, :6]).logits[0]
    assert torch.allclose(batch[1, 4:], alone_left, atol=1e-5)
    assert torch.allclose(batch[2, :6], alone_right, atol=1e-5)

    out = model.generate(
        ids[:1, :5], attention_mask=mask[:1, :5], max_new_tokens=6, do_sample=False
    )
    chain = ids[:1, :5]
    with torch.no_grad():
        for _ in range(6):
            nxt = model(chain).logits[:, -1].argmax(-1, keepdim=True)
            chain = torch.cat([chain, nxt], dim=1)
    assert out.tolist() == chain.tolist()


def test_saved_lstm_loads_through_the_auto_classes(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    model = _tiny_model()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llmkit_lstm"
    assert AutoConfig.from_pretrained(tmp_path).hidden_size == 16
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.arange(1, 20).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    # The output projection stays tied to the embedding after loading.
    assert again.lm_head.weight.data_ptr() == again.embed.weight.data_ptr()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = tmp_path_factory.mktemp("lstm")
    shutil.copytree(REPO / "tests" / "data", wd / "tests" / "data")
    return wd


@pytest.fixture(scope="module")
def lstm_run(workdir: Path) -> Path:
    out = run_cli("pretrain", TINY, *ARGS, "--output-dir", "runs/lstm", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model: LSTMForCausalLM, 3.29M parameters (from config)" in out.stdout
    return workdir / "runs" / "lstm"


def test_lstm_run_trains_and_generates_from_its_folder(lstm_run: Path, workdir: Path) -> None:
    m = json.loads((lstm_run / "metrics.json").read_text())
    assert m["steps"] == 12
    assert m["eval_loss"] < m["eval_loss_before"] - 0.25  # from ~10.8 (ln 50,304): 10.42
    out = run_cli("generate", "--model", str(lstm_run), "--max-new-tokens", "8", "--json", "ROMEO:")
    assert out.returncode == 0, out.stderr[-2000:]
    answer = json.loads(out.stdout)
    assert "LSTMForCausalLM" in answer["model"] and answer["new_tokens"] == 8
    assert answer["completion"]  # 12 steps in, mostly newlines: text all the same


def test_eval_perplexity_of_an_lstm_run_is_its_final_validation_loss(
    lstm_run: Path, workdir: Path
) -> None:
    out = run_cli(
        "eval", "--model", str(lstm_run), "--text", str(lstm_run), "--output-dir", "ev", cwd=workdir
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads((workdir / "ev" / "metrics.json").read_text())["metrics"]
    want = json.loads((lstm_run / "metrics.json").read_text())["eval_perplexity"]
    assert got["perplexity_per_document"] == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
def test_lstm_run_resumed_from_a_checkpoint_equals_the_uninterrupted_run(
    lstm_run: Path, workdir: Path
) -> None:
    """The run as if killed after checkpoint-6: resuming it ends with the same weights."""
    cut = workdir / "runs" / "cut"
    shutil.copytree(lstm_run, cut)
    for name in ("model.safetensors", "metrics.json", "checkpoint-12"):
        path = cut / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out = run_cli("pretrain", TINY, *ARGS, "--output-dir", str(cut), "--resume", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from {cut}/checkpoint-6" in out.stdout
    a, b = load_file(cut / "model.safetensors"), load_file(lstm_run / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
