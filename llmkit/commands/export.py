"""`llmkit export RUN`: merge a LoRA adapter into its base model -> a plain HF folder.

W' = W + (alpha / r) * B @ A, folded into every adapted matrix (peft's `merge_and_unload`),
so the result loads with `AutoModelFor*.from_pretrained(folder)`: no peft, no extra
matmuls at inference. The folder gets safetensors weights, the tokenizer and (for causal
LMs) the generation config.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError


def run_export(
    run: Path,
    *,
    output: Path | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
) -> Path:
    if push_to_hub is not None:
        check_hub_reachable()
    adapter = _adapter_config(run)
    out = output or run.with_name(f"{run.name}-merged")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(
            f"output {out} already exists and is not empty; pass --overwrite or --output"
        )
    model = merge_adapter(run, adapter)
    tokenizer = _tokenizer(run, adapter)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)  # safetensors by default
    tokenizer.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"merged {run} into {type(model).__name__} ({n / 1e6:.1f}M parameters): {out}")
    if push_to_hub is not None:
        try:
            model.push_to_hub(push_to_hub)
            tokenizer.push_to_hub(push_to_hub)
        except Exception as e:  # network and auth errors come in many types
            raise UsageError(f"--push-to-hub {push_to_hub}: {str(e).splitlines()[0]}") from e
        print(f"pushed to https://huggingface.co/{push_to_hub}")
    return out


def check_hub_reachable() -> None:
    """Fail before minutes of merging when the hub is switched off."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise UsageError(
            "--push-to-hub: the hub is switched off (HF_HUB_OFFLINE=1); "
            "export without it and upload the folder from a machine online"
        )


def _adapter_config(run: Path) -> dict[str, Any]:
    cfg = run / "adapter_config.json"
    if not run.is_dir():
        raise UsageError(f"{run} is not a folder")
    if not cfg.exists():
        what = "a full model (it loads as is)" if (run / "config.json").exists() else "not a run"
        raise UsageError(
            f"{run} has no adapter_config.json: it is {what}; export merges LoRA adapters"
        )
    data: dict[str, Any] = json.loads(cfg.read_text())
    return data


def merge_adapter(run: Path, adapter: dict[str, Any]) -> Any:
    """Base model + adapter, merged, in fp32 (merging in low precision rounds the update)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llmkit.models import resolve_ref

    base_ref = str(adapter.get("base_model_name_or_path") or "")
    if not base_ref:
        raise UsageError(f"{run}/adapter_config.json: base_model_name_or_path is empty")
    task = adapter.get("task_type")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if task == "SEQ_CLS":
        # The head's size and names live in the run's config (saved next to the adapter).
        auto: Any = AutoModelForSequenceClassification
        head = (
            json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
        )
        labels = head.get("id2label") or {}
        kwargs |= {
            "num_labels": len(labels) or 2,
            "id2label": {int(k): v for k, v in labels.items()} or None,
            "label2id": head.get("label2id"),
        }
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
    else:
        auto = AutoModelForCausalLM
    try:
        base = auto.from_pretrained(resolve_ref(base_ref), **kwargs)
    except OSError as e:
        raise UsageError(f"base model {base_ref}: {str(e).splitlines()[0]}") from e
    model = PeftModel.from_pretrained(base, str(run))
    return model.merge_and_unload()


def _tokenizer(run: Path, adapter: dict[str, Any]) -> Any:
    from llmkit.models import load_tokenizer

    return load_tokenizer(str(run))
