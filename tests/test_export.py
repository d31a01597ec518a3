"""`llmkit export`: a LoRA run merged into a plain folder that loads without peft."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from llmkit.config.finetune import FinetuneRecipe
from llmkit.config.loader import load_recipe
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def lora_run(tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 LoRA steps (GPT-2 defaults: c_attn, c_proj) at a high lr, so B moves off zero."""
    from llmkit.commands.finetune import run_finetune

    rows = tmp_path_factory.mktemp("rows") / "t.jsonl"
    rows.write_text(
        "".join(json.dumps({"text": f"line {i} of the story"}) + "\n" for i in range(40))
    )
    out = tmp_path_factory.mktemp("runs") / "gpt2-lora"
    recipe = load_recipe(
        FinetuneRecipe,
        None,
        [
            f"model.init={tiny_gpt2_dir}",
            f"train.output_dir={out}",
            f"data.sources=[{rows}]",
            "data.format=text",
            "train.max_steps=3",
            "train.lr=5.0e-2",
            "train.eval_every=null",
            "train.save_every=null",
            "data.max_eval_examples=4",
        ],
    )
    run_finetune(recipe)
    return out


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_export_merges_into_a_plain_model_with_the_same_logits(
    lora_run: Path, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    proc = run_cli("export", str(lora_run), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "merged" in proc.stdout and str(out) in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert "adapter_config.json" not in names

    ids = AutoTokenizer.from_pretrained(out)("To be or not to be", return_tensors="pt").input_ids
    merged = _logits(AutoModelForCausalLM.from_pretrained(out), ids)
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    adapted = _logits(PeftModel.from_pretrained(base, lora_run), ids)
    assert torch.allclose(merged, adapted, atol=1e-4)
    # ... and the adapter changed something, so the equality above says something.
    plain = _logits(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), ids)
    assert (merged - plain).abs().max() > 1e-3


def test_export_refuses_a_full_model_and_an_offline_push(
    lora_run: Path, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    proc = run_cli("export", str(tiny_gpt2_dir))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "no adapter_config.json" in proc.stderr
    proc = run_cli(
        "export",
        str(lora_run),
        "--output",
        str(tmp_path / "m"),
        "--push-to-hub",
        "me/model",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE=1" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_a_killed_export_leaves_temporaries_the_next_write_cleans(
    lora_run: Path, tmp_path: Path
) -> None:
    """kill -9 while the merged folder is being written leaves llmkit's hidden temporary
    beside it; the next export removes it (named with the dead writer's pid), and a user's
    own hidden folder of a similar name is kept."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "merged"
    (tmp_path / ".merged-mine").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "export", str(lora_run), "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".merged.*.llmkit-tmp")):  # the kill point: writing began
        assert proc.poll() is None, "export ended before the kill point"
        assert time.monotonic() < deadline, "export never began writing"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".merged.*.llmkit-tmp"))  # really left behind

    again = run_cli("export", str(lora_run), "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert "cleaned up after a killed llmkit process" in again.stderr
    # What is left: the user's folder, the export, and the writer lock beside it (kept: a
    # lock file deleted is what lets a second writer in).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".merged-mine", ".merged.lock", "merged"]
    assert (out / "model.safetensors").exists()
