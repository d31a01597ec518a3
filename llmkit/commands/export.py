"""`llmkit export RUN`: merge a LoRA adapter into its base model -> a plain HF folder.

The folder gets safetensors weights, the tokenizer and (for causal LMs) the generation config,
and loads with `AutoModelFor*.from_pretrained(folder)`: no peft, no extra matmuls at inference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmkit.config.requests import ExportRequest
from llmkit.errors import UsageError
from llmkit.io.files import read_json_object
from llmkit.io.runs import hold_writer_lock
from llmkit.io.write import check_output, check_replaceable, replace_folder

EXPORT = "export"  # the marker kind of an export folder


def run_export(req: ExportRequest) -> Path:
    from llmkit.models.card import read_card, write_card
    from llmkit.models.load import load_tokenizer
    from llmkit.models.lora import merge_adapter

    if req.push_to_hub is not None:
        check_hub_reachable()
    run = req.run if req.run is not None else _latest_adapter_run()
    if req.format == "gguf":
        return _export_gguf(req, run)
    adapter = _adapter_config(run)
    out = req.output or run.with_name(f"{run.name}-merged")
    check_output(out, [run], folder=True)
    hold_writer_lock(out)
    if out.exists() and any(out.iterdir()):
        if not req.overwrite:
            raise UsageError(
                f"output {out} already exists and is not empty; pass --overwrite or --output"
            )
        check_replaceable(out, EXPORT)  # only an earlier export, never the run or user files
    model = merge_adapter(run, adapter)
    tokenizer = load_tokenizer(str(run))
    card = read_card(run)  # the merged model is prompted as the run was

    def save(folder: Path) -> None:
        model.save_pretrained(folder)  # safetensors by default
        tokenizer.save_pretrained(folder)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(folder)
        if card is not None:
            write_card(folder, card)

    if out.exists() and not any(out.iterdir()):
        out.rmdir()  # an empty folder the user made for it
    try:
        replace_folder(out, save, kind=EXPORT)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror} (is the disk full?)") from e
    n = sum(p.numel() for p in model.parameters())
    print(f"merged {run} into {type(model).__name__} ({n / 1e6:.1f}M parameters): {out}")
    if req.push_to_hub is not None:
        try:
            model.push_to_hub(req.push_to_hub)
            tokenizer.push_to_hub(req.push_to_hub)
        except Exception as e:  # network and auth errors come in many types
            raise UsageError(f"--push-to-hub {req.push_to_hub}: {str(e).splitlines()[0]}") from e
        print(f"pushed to https://huggingface.co/{req.push_to_hub}")
    return out


def _export_gguf(req: ExportRequest, run: Path) -> Path:
    """One GGUF file + Ollama Modelfile, checked by llama.cpp (llmkit.export.gguf)."""
    from llmkit.export.gguf import build_gguf, check_exportable

    check_exportable(run)
    quant = req.quant or "f16"
    out = req.output or run.with_name(f"{run.name}-gguf")
    check_output(out, [run], folder=True)
    hold_writer_lock(out)
    if out.exists() and any(out.iterdir()) and not req.overwrite:
        raise UsageError(
            f"output {out} already exists and is not empty; pass --overwrite or --output"
        )
    if out.exists() and any(out.iterdir()):
        check_replaceable(out, EXPORT)
    elif out.exists():
        out.rmdir()  # an empty folder the user made for it
    reports = []
    try:
        replace_folder(
            out, lambda tmp: reports.append(build_gguf(tmp, run, quant, req.ppl_text)), kind=EXPORT
        )
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror} (is the disk full?)") from e
    for line in reports[0].lines():
        print(line)
    print(f"exported {run} as GGUF {quant}: {out / reports[0].file} (+ Modelfile for Ollama)")
    return out


def _latest_adapter_run() -> Path:
    """With no RUN: the latest finished run (runs/LATEST), as `llmkit eval` does; after
    `llmkit finetune` that is the adapter the user just trained."""
    from llmkit.io.console import note
    from llmkit.io.runs import latest_run

    latest = latest_run()
    if latest is None:
        raise UsageError(
            "no RUN given and no finished run in runs/ (runs/LATEST): "
            "name an adapter folder, e.g. llmkit export runs/lora-chatterbot"
        )
    note(f"run: {latest.path} (the latest, runs/LATEST)")
    return latest.path


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
    return read_json_object(cfg, "adapter config")
