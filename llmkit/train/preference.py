"""Preference tuning through TRL 1.16's trainers, on llmkit's run machinery.

    method   trainer (TRL)                        reference model
    dpo      trl.DPOTrainer, loss_type sigmoid    LoRA: the base with the adapter disabled;
    ipo      trl.DPOTrainer, loss_type ipo        full: a frozen copy of the start weights
    kto      trl.KTOTrainer (unpaired rows)       (same as dpo)
    orpo     trl.experimental.orpo.ORPOTrainer    none (odds ratio + SFT loss)
    cpo      trl.experimental.cpo.CPOTrainer      none
    simpo    CPOTrainer, loss_type simpo, cpo_alpha 0 (SimPO has no SFT term)   none

The TRL trainer class goes through `llmkit.train.trainer.build_trainer` like every llmkit
trainer: finite-loss guard, atomic checkpoints (exact resume after kill -9), Ctrl-C/SIGTERM
save, metrics.jsonl (TRL's rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies, logps/* rows land there as logged), progress lines.

Under LoRA the adapter is made by TRL from our `LoraConfig` (`peft_config`), not by us: given
an already-wrapped PeftModel, TRL 1.16 adds a second "ref" adapter copy; given the config it
computes the reference with the adapter disabled (DPOTrainer.compute_ref_log_probs).
"""

from __future__ import annotations

import importlib
from typing import Any

from llmkit.io.runs import RunDir

# method -> (module, config class, trainer class), TRL 1.16: ORPO and CPO live in
# trl.experimental; KTO was promoted to trl (trl.experimental.kto now warns and forwards).
TRAINERS = {
    "dpo": ("trl", "DPOConfig", "DPOTrainer"),
    "ipo": ("trl", "DPOConfig", "DPOTrainer"),
    "kto": ("trl", "KTOConfig", "KTOTrainer"),
    "orpo": ("trl.experimental.orpo", "ORPOConfig", "ORPOTrainer"),
    "cpo": ("trl.experimental.cpo", "CPOConfig", "CPOTrainer"),
    "simpo": ("trl.experimental.cpo", "CPOConfig", "CPOTrainer"),
}
NEEDS_REFERENCE = ("dpo", "ipo", "kto")


def trl_classes(method: str) -> tuple[Any, Any]:
    import os

    from llmkit.io.quiet import harmless_warnings_ignored

    module, config, trainer = TRAINERS[method]
    # trl.experimental warns on import that its APIs may change; the README says which
    # methods come from there, and the TRL version is pinned (pyproject).
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    with harmless_warnings_ignored():
        mod = importlib.import_module(module)
    return getattr(mod, config), getattr(mod, trainer)


def method_arguments(recipe: Any) -> dict[str, Any]:
    """The recipe's `preference:` section as TRL config fields, for its method."""
    p = recipe.preference
    args: dict[str, Any] = {
        "beta": p.beta,
        "max_length": recipe.data.max_length,
        # TRL turns gradient checkpointing on by default (~20% slower steps); llmkit's
        # other trainers leave it off, so preference runs match them. transformers 5.25
        # names it activation_checkpointing (the old name warns when set).
        "gradient_checkpointing": None,
        "activation_checkpointing": False,
    }
    if p.method in ("dpo", "ipo"):
        args["loss_type"] = [p.loss_type or p.method.replace("dpo", "sigmoid")]
        args["label_smoothing"] = p.label_smoothing
    elif p.method == "kto":
        args["loss_type"] = p.loss_type or "kto"
        args["desirable_weight"] = p.desirable_weight
        args["undesirable_weight"] = p.undesirable_weight
    elif p.method in ("cpo", "simpo"):
        args["loss_type"] = p.loss_type or ("simpo" if p.method == "simpo" else "sigmoid")
        args["label_smoothing"] = p.label_smoothing
        if args["loss_type"] == "simpo":
            args["simpo_gamma"] = p.simpo_gamma
            if p.method == "simpo":
                args["cpo_alpha"] = 0.0  # SimPO proper; cpo + simpo keeps CPO's NLL term
    return args


def preference_trainer_class(method: str) -> type:
    """TRL's trainer for `method`, without its README.md model card: TRL writes one into the
    run folder at every checkpoint (a file llmkit does not describe or need)."""
    _, trainer_cls = trl_classes(method)

    def create_model_card(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    return type(trainer_cls.__name__, (trainer_cls,), {"create_model_card": create_model_card})


def build_preference_trainer(
    recipe: Any,
    model: Any,
    reference: Any,
    tokenizer: Any,
    args: Any,
    run: RunDir,
    datasets: tuple[Any, Any],
) -> Any:
    """A TRL trainer through llmkit's factory: `model` is the plain base model; under LoRA
    TRL wraps it with the recipe's adapter config; `reference` is a frozen copy for full
    dpo/ipo/kto (None otherwise)."""
    from llmkit.io.quiet import harmless_warnings_ignored
    from llmkit.models.lora import lora_config
    from llmkit.train.trainer import build_trainer

    method = recipe.preference.method
    kwargs: dict[str, Any] = {}
    if recipe.lora.enabled:
        kwargs["peft_config"] = lora_config(model, recipe)
    if method in NEEDS_REFERENCE:
        kwargs["ref_model"] = reference
    with harmless_warnings_ignored():
        return build_trainer(
            model,
            tokenizer,
            args,
            run,
            recipe.train,
            (datasets[0], datasets[1], None),
            trainer_cls=preference_trainer_class(method),
            show_ppl=False,
            **kwargs,
        )


def setup_preference(
    recipe: Any, run: RunDir, args: Any, tokenizer: Any, resume: bool, overwrite: bool
) -> tuple[Any, Any]:
    """Checked rows, the base model (+ a frozen reference for full dpo/ipo/kto), the run
    folder and the TRL trainer: (trainer, FinetuneData) for `llmkit finetune`'s train/save."""
    from transformers import set_seed

    from llmkit.data.finetune import FinetuneData
    from llmkit.data.preference import build_preference_data
    from llmkit.io import interrupt
    from llmkit.models.load import load_for_finetuning
    from llmkit.models.lora import describe_model

    main = args.process_index == 0
    method = recipe.preference.method
    with args.main_process_first(desc="data"):
        data = build_preference_data(recipe, tokenizer, method)
    interrupt.check()
    set_seed(recipe.train.seed)  # LoRA's A matrices start random
    model = load_for_finetuning(recipe, tokenizer, None)
    reference = None
    if method in NEEDS_REFERENCE and not recipe.lora.enabled:
        # Full fine-tuning moves every weight: the reference is a second, frozen copy (LoRA
        # needs none: the adapter is switched off instead).
        reference = load_for_finetuning(recipe, tokenizer, None).eval()
    interrupt.check()
    if method not in NEEDS_REFERENCE:
        # ORPO/CPO batches hold chosen_input_ids/rejected_input_ids, no input_ids: the
        # Trainer's token count would warn at every step and count nothing.
        args.include_num_input_tokens_seen = "no"
    with args.main_process_first(desc="run folder"):
        if main:
            run.start(recipe.to_yaml(), resume=resume, overwrite=overwrite)
    trainer = build_preference_trainer(
        recipe, model, reference, tokenizer, args, run, (data.train, data.validation)
    )
    if main:
        print(describe_model(trainer.model, recipe))
        unit = "rows (desirable/undesirable)" if method == "kto" else "pairs"
        print(
            f"data: {len(data.train):,} training / {len(data.validation):,} validation {unit}; "
            f"method {method} (beta {recipe.preference.beta:g}"
            + (", reference: the base model, adapter off" if recipe.lora.enabled else "")
            * (method in NEEDS_REFERENCE)
            + ")"
        )
    return trainer, FinetuneData(
        train=data.train,
        validation=data.validation,
        collator=None,
        sample_prompt=data.sample_prompt,
        sample_shown=data.sample_shown,
        scored_rows=data.pairs,
    )
