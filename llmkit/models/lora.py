"""LoRA (peft): which layers to adapt, wrapping a model, and merging an adapter back in.

W' = W + (alpha / r) * B @ A for every adapted matrix; `merge_adapter` folds it in (peft's
`merge_and_unload`), so the result loads with `AutoModelFor*.from_pretrained(folder)`: no
peft, no extra matmuls at inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import UsageError
from llmkit.io.files import read_json_object
from llmkit.io.quiet import harmless_warnings_ignored
from llmkit.models.load import loading, resolve_ref

if TYPE_CHECKING:
    from llmkit.config.finetune import FinetuneRecipe

# LoRA targets when the recipe names none: every attention projection (the LoRA paper adapts
# q and v; QLoRA found adapting all of them closes most of the gap to full fine-tuning).
DEFAULT_LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "bert": ["query", "key", "value"],
}


def lora_targets(model: Any, requested: list[str] | None) -> list[str]:
    """The recipe's target modules, checked against the model, or the architecture's default."""
    import torch
    from transformers.pytorch_utils import Conv1D

    present = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D)
        }
    )
    arch = getattr(model.config, "model_type", "?")
    if requested is None:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        default = DEFAULT_LORA_TARGETS.get(arch) or PEFT_DEFAULTS.get(arch)
        if default is None:
            raise UsageError(
                f"lora.target_modules: no default for model type '{arch}'; "
                f"name some of: {', '.join(present)}"
            )
        return list(default)
    missing = [name for name in requested if name not in present]
    if missing:
        raise UsageError(
            f"lora.target_modules: {', '.join(missing)} not in the model "
            f"({type(model).__name__} has: {', '.join(present)})"
        )
    return list(requested)


def apply_lora(model: Any, recipe: FinetuneRecipe) -> Any:
    from peft import get_peft_model

    config = lora_config(model, recipe)
    with harmless_warnings_ignored():  # peft 0.21 reads a deprecated attribute (io.quiet)
        return get_peft_model(model, config)


def lora_config(model: Any, recipe: FinetuneRecipe) -> Any:
    """The recipe's `lora:` section as a peft `LoraConfig` for `model`."""
    from peft import LoraConfig

    lo = recipe.lora
    if recipe.task == "classification":
        task_type = "SEQ_CLS"
    elif getattr(model.config, "is_encoder_decoder", False):
        task_type = "SEQ_2_SEQ_LM"  # T5's defaults: q and v
    else:
        task_type = "CAUSAL_LM"
    return LoraConfig(
        task_type=task_type,
        r=lo.r,
        lora_alpha=lo.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=lo.dropout,
        target_modules=lora_targets(model, lo.target_modules),
        # GPT-2's Conv1D stores weights transposed (in x out); peft needs telling.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )


def describe_model(model: Any, recipe: FinetuneRecipe) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = model.get_base_model() if recipe.lora.enabled else model
    how = f"LoRA r={recipe.lora.r}" if recipe.lora.enabled else "full fine-tuning"
    return (
        f"model: {type(base).__name__} from {recipe.base_model}, {how}: "
        f"{trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters trainable "
        f"({100 * trainable / total:.2f}%)"
    )


def merge_adapter(run: Path, adapter: dict[str, Any]) -> Any:
    """Base model + adapter, merged, in fp32 (merging in low precision rounds the update)."""
    import torch
    from peft import PeftModel
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    base_ref = str(adapter.get("base_model_name_or_path") or "")
    if not base_ref:
        raise UsageError(f"{run}/adapter_config.json: base_model_name_or_path is empty")
    task = adapter.get("task_type")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if task == "SEQ_CLS":
        # The head's size and names live in the run's config (saved next to the adapter).
        auto: Any = AutoModelForSequenceClassification
        config = run / "config.json"
        head = read_json_object(config, "model config") if config.exists() else {}
        labels = head.get("id2label") or {}
        kwargs |= {
            "num_labels": len(labels) or 2,
            "id2label": {int(k): v for k, v in labels.items()} or None,
            "label2id": head.get("label2id"),
        }
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
    elif task == "SEQ_2_SEQ_LM":
        auto = AutoModelForSeq2SeqLM
    else:
        auto = AutoModelForCausalLM
    with loading("base model", base_ref):
        base = auto.from_pretrained(resolve_ref(base_ref), **kwargs)
    with loading("LoRA adapter", str(run)):
        model = PeftModel.from_pretrained(base, str(run))
    return model.merge_and_unload()
