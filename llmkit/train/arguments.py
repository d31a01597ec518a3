"""The one place llmkit's recipe names become Hugging Face `TrainingArguments` names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmkit.config.recipe import TrainConfig


def in_distributed_run() -> bool:
    """Whether this process is one of several (torchrun / accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_precision(precision: str) -> str:
    """auto -> bf16 on a GPU that has it, else fp32 (CPU autocast to bf16 is slower than
    fp32 on CPUs without AVX512-BF16, which is most of them)."""
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def training_arguments(
    train: TrainConfig,
    output_dir: Path,
    *,
    load_best: bool = False,
    args_cls: Any = None,
    **extra: Any,
) -> Any:
    """`args_cls`: a `TrainingArguments` subclass (TRL's DPOConfig, ...) whose own fields
    come in `extra`."""
    import torch
    from transformers import TrainingArguments

    from llmkit.train.trackers import check_trackers

    check_trackers(train.report_to)  # before data or model load: one line, nothing written
    precision = resolve_precision(train.precision)
    on_gpu = torch.cuda.is_available()
    eval_steps = train.eval_every
    # Early stopping needs a checkpoint at every evaluation to restore the best one.
    save_steps = eval_steps if load_best else train.save_every
    args: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": train.max_steps,
        "num_train_epochs": train.epochs,
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": train.eval_batch_size or train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "learning_rate": train.lr,
        "lr_scheduler_type": train.lr_schedule,
        # transformers 5 takes a float < 1 as a share of total steps (warmup_ratio is gone).
        "warmup_steps": train.warmup if train.warmup < 1 else int(train.warmup),
        "weight_decay": train.weight_decay,
        "adam_beta2": train.adam_beta2,
        "max_grad_norm": train.max_grad_norm,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "tf32": True if on_gpu and torch.cuda.get_device_capability()[0] >= 8 else None,
        "torch_compile": on_gpu if train.compile is None else train.compile,
        # Fused AdamW has a CPU kernel since torch 2.4 (and is transformers' own default from
        # torch 2.8): one pass over each tensor instead of ~10 foreach passes. On 2 cores the
        # default GPT's optimizer step (7.2M parameters) took ~9 ms fused vs ~78 ms foreach.
        "optim": "adamw_torch_fused",
        "logging_steps": train.log_every,
        "logging_first_step": True,
        # The NaN/inf filter costs a host sync every step; we log the raw loss instead.
        "logging_nan_inf_filter": False,
        "eval_strategy": "steps" if eval_steps else "no",
        "eval_steps": eval_steps,
        "save_strategy": "steps" if save_steps else "no",
        "save_steps": save_steps or 500,
        "save_total_limit": train.save_total_limit,
        "load_best_model_at_end": load_best,
        "metric_for_best_model": "eval_loss" if load_best else None,
        "greater_is_better": False if load_best else None,
        "seed": train.seed,
        "data_seed": train.seed,
        "dataloader_num_workers": train.num_workers,
        "dataloader_pin_memory": on_gpu,
        # TensorBoard is attached by the trainer factory with the run's own log folder.
        "report_to": "none",
        # Packed causal blocks have no padding, so "all" is exact and needs no mask lookup
        # (with "non_padding" transformers warns on every step when batches carry no mask).
        "include_num_input_tokens_seen": "all",
        "disable_tqdm": False,
        # llmkit's datasets carry exactly what their collators need (e.g. MLM word starts).
        "remove_unused_columns": False,
    }
    if not on_gpu:
        args["use_cpu"] = True
        if in_distributed_run():  # setting a backend in one process asks for a process group
            args["ddp_backend"] = "gloo"
    args.update(sharding_arguments(train.strategy))
    args.update(extra)
    return (args_cls or TrainingArguments)(**args)


def sharding_in_use(trainer: Any) -> str:
    """What the trainer's accelerator actually does across processes (read back, not the
    recipe's wish): "fsdp2", "ddp", or "none" for one process."""
    if trainer.args.world_size <= 1:
        return "none"
    return "fsdp2" if trainer.accelerator.is_fsdp2 else "ddp"


def sharding_arguments(strategy: str) -> dict[str, Any]:
    """FSDP2 (`fully_shard`) through Trainer/accelerate; `ddp` needs nothing (the default).
    The final model is gathered to rank 0 and saved as one plain folder (FULL_STATE_DICT)."""
    if strategy == "ddp" or not in_distributed_run():
        return {}
    config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": True,  # full_shard: ZeRO-3-like
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one FSDP unit per decoder layer
        "state_dict_type": "FULL_STATE_DICT",
    }
    args: dict[str, Any] = {"fsdp": True, "fsdp_config": config}
    if strategy == "hsdp":
        from accelerate.parallelism_config import ParallelismConfig

        world = int(os.environ["WORLD_SIZE"])
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        args["parallelism_config"] = ParallelismConfig(
            dp_replicate_size=world // per_node, dp_shard_size=per_node
        )
    return args
