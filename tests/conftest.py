"""Shared fixtures: everything offline, on CPU, built from configs in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Nothing may wait on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prep caches go to a per-session temp folder; converted embedded models are shared
    with the user's cache (converting SmolLM2 costs ~35 s, once)."""
    monkeypatch.setenv("LLMKIT_PREP_CACHE", str(tmp_path_factory.getbasetemp() / "prep-cache"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer GPT-2 (hidden 32) with the real GPT-2 tokenizer,
    saved as a plain Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from llmkit import assets

    out = tmp_path_factory.mktemp("tiny-gpt2")
    tok = AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir())
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_tiny_bert(out: Path, head: str = "BertModel", max_positions: int = 128) -> Path:
    """A random 2-layer BERT (width 32, seed 0) with MiniLM's real WordPiece tokenizer; `head`
    names the transformers class (BertModel, BertForMaskedLM...)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    from llmkit import assets

    tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    getattr(transformers, head)(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from llmkit import assets

    return AutoTokenizer.from_pretrained(assets.smollm2_dir())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A random 2-layer Llama (width 32) with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = smollm2_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run `python -m llmkit ARGS` as a user would, capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until_caught(proc: subprocess.Popen[Any], sig: int, timeout: float = 300) -> None:
    """Block until `proc` has a handler for `sig` (the kernel's SigCgt mask in
    /proc/PID/status): before it, a SIGTERM kills Python outright. A marker, not a sleep."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            status = ""
        caught = [line for line in status.splitlines() if line.startswith("SigCgt:")]
        if caught and int(caught[0].split()[1], 16) >> (sig - 1) & 1:
            return
        assert proc.poll() is None, f"exited {proc.returncode} before handling signal {sig}"
        assert time.monotonic() < deadline, f"no handler for signal {sig} in {timeout} s"
        time.sleep(0.01)
