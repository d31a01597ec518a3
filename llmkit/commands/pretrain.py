"""`llmkit pretrain`: setup -> evaluate -> train -> evaluate -> save.

Causal LM (GPT-2/Llama from a config, or continued from `model.init`) on packed blocks, or
masked LM (BERT) on sentence-packed blocks with `DataCollatorForLanguageModeling` masking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llmkit.config.schema import Recipe
from llmkit.data.prep import PreparedData, load_tokenizer_for, prepare
from llmkit.runs import RunDir
from llmkit.train.callbacks import perplexity


@dataclass
class PretrainResult:
    run: RunDir
    metrics: dict[str, Any]


def run_pretrain(
    recipe: Recipe, *, resume: bool = False, overwrite: bool = False
) -> PretrainResult:
    from llmkit.models import build_model
    from llmkit.train.arguments import training_arguments

    run = RunDir(recipe.output_dir)
    run.check(resume=resume, overwrite=overwrite)  # every rank agrees before anything is written
    t = recipe.train
    args = training_arguments(
        t,
        run.path,
        load_best=t.early_stopping_patience is not None,
        # Sentence-packed MLM blocks are padded: count only real tokens for tokens/s.
        include_num_input_tokens_seen="non_padding" if recipe.task == "masked_lm" else "all",
    )
    main = args.process_index == 0

    with args.main_process_first(desc="run folder and data prep"):
        if main:
            run.create(overwrite=overwrite and not resume)
            run.recipe_file.write_text(recipe.to_yaml())
        tokenizer = load_tokenizer_for(recipe)
        data = prepare(recipe, tokenizer, verbose=main)

    from transformers import set_seed

    set_seed(t.seed)  # before the model is built: initial weights follow train.seed
    model = build_model(recipe, tokenizer)
    train_ds, eval_ds, collator = _datasets(recipe, data, tokenizer)
    tokens_per_step = t.batch_size * args.world_size * t.grad_accum * recipe.data.block_size
    if main:
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"model: {type(model).__name__}, {n_params / 1e6:.2f}M parameters "
            f"({'continued from ' + recipe.model.init if recipe.model.init else 'from config'})"
        )
        print(
            f"global batch: {t.batch_size} per device x {args.world_size} device(s) x "
            f"{t.grad_accum} accumulation = {t.batch_size * args.world_size * t.grad_accum} "
            f"blocks = {tokens_per_step:,} tokens/step"
        )

    from llmkit.train.trainer import build_trainer, fit

    trainer = build_trainer(
        model=model,
        tokenizer=tokenizer,
        args=args,
        train=t,
        run=run,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
    )
    metrics: dict[str, Any] = {
        "global_batch_tokens": tokens_per_step,
        "world_size": args.world_size,
    }
    before = run.first_eval_loss() if resume else trainer.evaluate()["eval_loss"]
    if before is not None:
        metrics |= {"eval_loss_before": before, "eval_perplexity_before": perplexity(before)}
        if main and not resume:
            print(f"validation perplexity before training: {perplexity(before):,.1f}")

    t0 = time.perf_counter()
    out = fit(trainer, run, resume=resume)
    train_seconds = time.perf_counter() - t0
    after = trainer.evaluate()["eval_loss"]
    metrics |= {
        "train_loss": out.training_loss,
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 1),
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "eval_loss": after,
        "eval_perplexity": perplexity(after),
    }
    trainer.save_model()  # main process only: model + tokenizer, safetensors
    if main:
        if recipe.task == "causal_lm":
            model.generation_config.save_pretrained(run.path)
        run.write_metrics(metrics)
        run.mark_latest()
        if "eval_perplexity_before" in metrics:
            print(
                f"validation perplexity: {metrics['eval_perplexity_before']:,.1f} before -> "
                f"{metrics['eval_perplexity']:,.1f} after {metrics['steps']} steps "
                f"({train_seconds:.0f}s)"
            )
        else:
            print(f"validation perplexity after {metrics['steps']} steps: {perplexity(after):,.1f}")
        print(f"saved model to {run.path}")
        if recipe.task == "causal_lm":
            print(f'try it: llmkit generate --model {run.path} "ROMEO:"')
    return PretrainResult(run=run, metrics=metrics)


def _datasets(recipe: Recipe, data: PreparedData, tokenizer: Any) -> tuple[Any, Any, Any]:
    from llmkit.data.collate import CausalBlocks, MaskedBlocks, MaskedLMCollator, collate_causal

    if recipe.task == "causal_lm":
        return CausalBlocks(data.train), CausalBlocks(data.validation), collate_causal
    assert data.train_lengths is not None and data.train_word_starts is not None
    assert data.validation_lengths is not None and data.validation_word_starts is not None
    collator = MaskedLMCollator(
        tokenizer=tokenizer,
        mlm_probability=recipe.masking.mlm_probability,
        whole_word_mask=recipe.masking.whole_word_mask,
        seed=recipe.train.seed,
    )
    return (
        MaskedBlocks(data.train, data.train_lengths, data.train_word_starts),
        MaskedBlocks(
            data.validation, data.validation_lengths, data.validation_word_starts, fixed_masks=True
        ),
        collator,
    )
