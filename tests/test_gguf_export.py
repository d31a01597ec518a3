"""`llmkit export --format gguf`, end to end through llama.cpp (llama-cpp-python, `make gguf`).

Slow tier: each export runs llama.cpp's converter in a process of its own (~25 s of imports
on 2 busy cores) and the llama.cpp build these tests need takes minutes (`make gguf`; CI
runs it before `make test-slow`). Without it the tests fail, naming `make gguf`: a skipped
proof proves nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from llmkit.config.finetune import FinetuneRecipe
from llmkit.config.loader import load_recipe
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _llama_cpp_built() -> None:
    from llmkit.export.llama_cpp import converter_dir, llama_cpp_module

    converter_dir()  # UsageError naming `make gguf` when missing
    llama_cpp_module()


@pytest.fixture(scope="module")
def llama_lora(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run on the tiny Llama (SmolLM2's tokenizer and chat template): 3 steps at a high
    lr so the adapter moves the answers, with a system prompt on its task card."""
    from llmkit.commands.finetune import run_finetune

    rows = tmp_path_factory.mktemp("rows") / "chat.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"What is {i} plus {i}?"},
                        {"role": "assistant", "content": f"It is {2 * i}."},
                    ]
                }
            )
            + "\n"
            for i in range(40)
        )
    )
    out = tmp_path_factory.mktemp("runs") / "llama-lora"
    recipe = load_recipe(
        FinetuneRecipe,
        None,
        [
            f"model.init={tiny_llama_dir}",
            f"train.output_dir={out}",
            f"data.sources=[{rows}]",
            "train.max_steps=3",
            "train.lr=5.0e-2",
            "train.eval_every=null",
            "train.save_every=null",
            "data.max_eval_examples=4",
            "data.system=You add numbers.",
        ],
    )
    run_finetune(recipe)
    assert (out / "adapter_config.json").exists()
    return out


def _check(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "gguf_check.json").read_text()))


def _merged_logits(run: Path, ids: torch.Tensor) -> torch.Tensor:
    from llmkit.export.gguf import load_merged

    with torch.no_grad():
        return load_merged(run).eval()(input_ids=ids).logits


def test_f32_and_f16_answer_in_llama_cpp_as_in_transformers(
    llama_lora: Path, tmp_path: Path
) -> None:
    """The LoRA run, merged, through llama.cpp's converter: llama.cpp's greedy tokens equal
    transformers' on every check prompt, its tokenizer agrees, and transformers' own GGUF
    loader gives back the merged model's logits (f32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for quant in ("f32", "f16"):
        out = tmp_path / quant
        proc = run_cli(
            "export", str(llama_lora), "--format", "gguf", "--quant", quant, "-o", str(out)
        )
        assert proc.returncode == 0, proc.stderr
        check = _check(out)
        assert check["greedy_tokens_equal"] == check["greedy_tokens"] == 60, check
        assert check["tokenizer_prompts_equal"] == check["prompts"] == 5
        assert "60/60 equal (5/5 prompts identical)" in proc.stdout
        names = {p.name for p in out.iterdir()}
        assert names == {".llmkit", "Modelfile", f"llama-lora-{quant}.gguf", "gguf_check.json"}
        modelfile = (out / "Modelfile").read_text()
        assert f"FROM ./llama-lora-{quant}.gguf" in modelfile
        assert 'PARAMETER stop "<|im_end|>"' in modelfile
        assert 'SYSTEM "You add numbers."' in modelfile

    gguf = tmp_path / "f32" / "llama-lora-f32.gguf"
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tok("To be or not to be, 那是问题", return_tensors="pt").input_ids
    back = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    with torch.no_grad():
        reloaded = back.eval()(input_ids=ids).logits
    merged = _merged_logits(llama_lora, ids)
    assert torch.allclose(reloaded, merged, atol=1e-4), (reloaded - merged).abs().max()
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template


def test_quantized_exports_report_perplexity_next_to_f16(llama_lora: Path, tmp_path: Path) -> None:
    sizes = {}
    for quant in ("q8_0", "q4_k_m"):
        out = tmp_path / quant
        proc = run_cli(
            "export", str(llama_lora), "--format", "gguf", "--quant", quant, "-o", str(out)
        )
        assert proc.returncode == 0, proc.stderr
        check = _check(out)
        ppl, f16 = check["perplexity"], check["perplexity_f16"]
        assert f"{quant} {ppl:.3f} vs f16 {f16:.3f}" in proc.stdout
        assert min(ppl, f16) > 1  # a perplexity, not a log or a loss
        sizes[quant] = (out / f"llama-lora-{quant}.gguf").stat().st_size
        if quant == "q8_0":  # 8.5 bits a weight: within 1% of f16's perplexity
            assert abs(ppl / f16 - 1) < 0.01, (ppl, f16)
    assert sizes["q4_k_m"] < sizes["q8_0"]


def test_a_gpt2_model_exports_and_answers_the_same(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """GPT-2 (a full model, no adapter): transformers 5 no longer writes the `n_ctx` that
    llama.cpp's converter reads; the export still loads and agrees."""
    out = tmp_path / "gpt2"
    proc = run_cli("export", str(tiny_gpt2_dir), "--format", "gguf", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    check = _check(out)
    assert check["greedy_tokens_equal"] == check["greedy_tokens"], check
    assert check["tokenizer_prompts_equal"] == check["prompts"]


def test_an_architecture_llama_cpp_lacks_is_refused_in_one_line(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from llmkit import assets

    model = tmp_path / "opt"
    tok = AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir())
    cfg = OPTConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, ffn_dim=32,
        num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=16,
    )  # fmt: skip
    OPTForCausalLM(cfg).save_pretrained(model)
    tok.save_pretrained(model)
    out = tmp_path / "out"
    proc = run_cli("export", str(model), "--format", "gguf", "-o", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "OPTForCausalLM is not supported" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "opt"]


def test_never_replaces_a_users_folder_and_ctrl_c_leaves_nothing(
    llama_lora: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = run_cli("export", str(llama_lora), "--format", "gguf", "-o", str(mine), "--overwrite")
    assert proc.returncode == 2 and "not made by llmkit" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llmkit", "export", str(llama_lora), "--format", "gguf"]
    export = subprocess.Popen(
        [*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    # Ctrl-C once the merged model is being written for the converter (in llmkit's temporary
    # folder): what is left must be what was there before.
    while not list(tmp_path.glob(".out.*.llmkit-tmp/.hf/*/config.json")):
        assert export.poll() is None, export.stderr.read() if export.stderr else ""
        time.sleep(0.01)  # a poll on the file, not a wait on the clock
    export.send_signal(signal.SIGINT)
    assert export.wait(timeout=300) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine.lock", ".out.lock", "mine"]
