"""Proof that a GGUF file answers as the trained model did, measured by llama.cpp itself.

- greedy tokens: the same prompt token ids go to transformers (the merged model, fp32) and to
  llama.cpp (the exported file); each picks its argmax for `new_tokens` steps. f32/f16 files
  should agree token for token; a quantized file may drift, and its perplexity says by how much.
- tokenizer: llama.cpp's tokenizer (rebuilt from the GGUF metadata) against the Hugging Face
  one on the same prompts: a mismatch there changes every answer in llama.cpp, Ollama, LM Studio.
- perplexity: llama.cpp's logits over a held-out text, exp(mean negative log-likelihood of each
  next token), in windows of the file's context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.export.llama_cpp import llama_cpp_module

# Prompts of several scripts: a tokenizer bug shows first outside ASCII.
CHECK_PROMPTS = (
    "The meaning of life is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "Paris est la capitale de",
    "今天天气很好，我们",
)
NEW_TOKENS = 12  # per prompt: 5 x 12 = 60 greedy steps, ~1 s for a small model on 2 cores
PPL_TOKENS = 1024  # held-out tokens scored per file (~2 s at 135M parameters, f16, 2 cores)


@dataclass(frozen=True)
class Agreement:
    same: int  # greedy tokens equal, position by position, up to the first difference each
    total: int
    prompts_equal: int  # prompts whose whole continuation is equal
    prompts: int
    tokenizer_equal: int  # prompts llama.cpp tokenizes to the Hugging Face ids

    def line(self) -> str:
        return (
            f"greedy tokens, llama.cpp vs transformers: {self.same}/{self.total} equal "
            f"({self.prompts_equal}/{self.prompts} prompts identical); tokenizer: "
            f"{self.tokenizer_equal}/{self.prompts} prompts tokenized the same"
        )

    def to_json(self) -> dict[str, int]:
        return {
            "greedy_tokens_equal": self.same,
            "greedy_tokens": self.total,
            "prompts_identical": self.prompts_equal,
            "prompts": self.prompts,
            "tokenizer_prompts_equal": self.tokenizer_equal,
        }


def open_gguf(path: Path, n_ctx: int) -> Any:
    """llama.cpp's own loader on the file; it refuses what it cannot run."""
    llama_cpp = llama_cpp_module()
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=None
    )


def hf_greedy(model: Any, prompt_ids: list[int], new_tokens: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # compare a full row, even past an end-of-text token
            do_sample=False,
            pad_token_id=model.config.eos_token_id or 0,
        )
    return [int(t) for t in out[0, len(prompt_ids) :]]


def llama_greedy(llm: Any, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """argmax of llama.cpp's logits, step by step (no sampler in between)."""
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(new_tokens):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


def agreement(
    llm: Any, model: Any, tokenizer: Any, prompts: tuple[str, ...] = CHECK_PROMPTS
) -> Agreement:
    same = total = prompts_equal = tok_equal = 0
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        plain = [int(i) for i in tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        llama_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
        tok_equal += list(llama_ids) == plain
        ours, theirs = hf_greedy(model, ids, NEW_TOKENS), llama_greedy(llm, ids, NEW_TOKENS)
        run = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), len(ours)
        )
        same += run
        total += len(ours)
        prompts_equal += ours == theirs
    return Agreement(same, total, prompts_equal, len(prompts), tok_equal)


def perplexity(llm: Any, ids: list[int], window: int) -> float:
    """exp(mean NLL) of each next token under llama.cpp, in windows of `window` tokens (the
    model's trained context at most: llama.cpp rounds its own n_ctx up to a multiple of 256,
    past GPT-2's learned positions, where it aborts)."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[: len(chunk) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        targets = np.asarray(chunk[1:])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(nll / max(count, 1))
