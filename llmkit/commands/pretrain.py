"""`llmkit pretrain`: setup -> train (evaluate, fit, evaluate) -> save.

Causal LM (GPT-2/Llama from a config, or continued from `model.init`) on packed blocks, or
masked LM (BERT) on sentence-packed blocks with `DataCollatorForLanguageModeling` masking.
`setup` builds everything and returns the job, so benchmarks time exactly what users run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llmkit.config.pretrain import PretrainRecipe
from llmkit.io import interrupt
from llmkit.io.runs import RunDir
from llmkit.train.callbacks import perplexity


@dataclass
class PretrainJob:
    recipe: PretrainRecipe
    run: RunDir
    trainer: Any  # transformers.Trainer
    resume: bool
    main: bool  # the process that prints and saves (rank 0)


def run_pretrain(
    recipe: PretrainRecipe, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    job = setup(recipe, resume=resume, overwrite=overwrite)
    metrics = train(job)
    save(job, metrics)
    return metrics


def setup(
    recipe: PretrainRecipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list[Any] | None = None,
    **args_overrides: Any,
) -> PretrainJob:
    """Run folder, tokenizer, data (from the prep cache), model and Trainer."""
    from transformers import set_seed

    from llmkit.data.collate import pretraining_datasets
    from llmkit.data.prep import load_tokenizer_for, prepare
    from llmkit.models.build import build_model
    from llmkit.train.arguments import sharding_in_use, training_arguments
    from llmkit.train.checkpoints import check_resume_processes
    from llmkit.train.ending import check_finished
    from llmkit.train.trainer import build_trainer

    run = RunDir(recipe.output_dir)
    run.check(resume=resume, overwrite=overwrite)  # every rank agrees before anything is written
    t = recipe.train
    if resume:
        check_finished(run, t)  # "already finished at step N": exit 0 before any loading
    args = training_arguments(
        t,
        run.path,
        load_best=t.early_stopping_patience is not None,
        # Sentence-packed MLM blocks are padded: count only real tokens for tokens/s.
        include_num_input_tokens_seen="non_padding" if recipe.task == "masked_lm" else "all",
        **args_overrides,
    )
    main = args.process_index == 0
    if resume:
        check_resume_processes(run, args.world_size)  # an FSDP checkpoint: the count it had
    with args.main_process_first(desc="data prep"):
        tokenizer = load_tokenizer_for(recipe)
        data = prepare(recipe, tokenizer, verbose=main)
    interrupt.check()  # phase boundaries: a Ctrl-C whose exception a library lost stops here

    set_seed(t.seed)  # before the model is built: initial weights follow train.seed
    model = build_model(recipe, tokenizer)
    if main:
        n_params = sum(p.numel() for p in model.parameters())
        blocks = t.batch_size * args.world_size * t.grad_accum
        print(
            f"model: {type(model).__name__}, {n_params / 1e6:.2f}M parameters "
            f"({'continued from ' + recipe.model.init if recipe.model.init else 'from config'})"
        )
        print(
            f"global batch: {t.batch_size} per device x {args.world_size} device(s) x "
            f"{t.grad_accum} accumulation = {blocks} blocks = "
            f"{blocks * recipe.data.block_size:,} tokens/step"
        )
    datasets = pretraining_datasets(recipe, data, tokenizer)
    interrupt.check()
    # The run folder is made once its inputs (tokenizer, data, model) have loaded: bad data
    # leaves no folder behind.
    with args.main_process_first(desc="run folder"):
        if main:
            run.start(recipe.to_yaml(), resume=resume, overwrite=overwrite)
    trainer = build_trainer(model, tokenizer, args, run, t, datasets, callbacks=callbacks)
    if main and args.world_size > 1:
        print(f"processes: {args.world_size}, {sharding_in_use(trainer)}")
    return PretrainJob(recipe, run, trainer, resume, main)


def train(job: PretrainJob) -> dict[str, Any]:
    """Validation loss before (or, resuming, as first logged), training, and the kept
    weights' validation loss (evaluated once: see llmkit.train.ending)."""
    from llmkit.train.arguments import sharding_in_use
    from llmkit.train.ending import ending, start_weights
    from llmkit.train.trainer import evaluate_before_training, fit

    trainer, t = job.trainer, job.recipe.train
    args = trainer.args
    metrics: dict[str, Any] = {
        "global_batch_tokens": t.batch_size
        * args.world_size
        * t.grad_accum
        * job.recipe.data.block_size,
        "world_size": args.world_size,
        "sharding": sharding_in_use(trainer),
    }
    evaluation = None
    weights_before = None
    if job.resume:
        before = job.run.first_eval_loss()
    else:
        if args.load_best_model_at_end and not trainer.is_fsdp_enabled:
            weights_before = start_weights(trainer.model)  # a candidate for the kept best
        evaluation = evaluate_before_training(trainer)
        before = None if evaluation is None else evaluation["eval_loss"]
        if evaluation is None and job.main:
            print("validation perplexity before training: not measured under FSDP")
    if before is not None:
        metrics |= {"eval_loss_before": before, "eval_perplexity_before": perplexity(before)}
        if job.main and not job.resume:
            print(f"validation perplexity before training: {perplexity(before):,.1f}")
    interrupt.check()
    t0 = time.perf_counter()
    out = fit(trainer, job.run, resume=job.resume)
    end = ending(trainer, before=evaluation, weights_before=weights_before)
    after = end.evaluation["eval_loss"]
    return (
        metrics
        | end.metrics()
        | {
            "train_loss": out.training_loss,
            "steps": trainer.state.global_step,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "eval_loss": after,
            "eval_perplexity": perplexity(after),
        }
    )


def save(job: PretrainJob, metrics: dict[str, Any]) -> None:
    """The final model (safetensors + tokenizer) at the run root, metrics.json, LATEST."""
    from llmkit.models.card import TaskCard, write_card
    from llmkit.train.checkpoints import save_final_model
    from llmkit.train.ending import summary
    from llmkit.train.trackers import end_tracker_runs

    interrupt.check()  # the last checkpoint is kept; the final model would be a half-save
    run, causal = job.run, job.recipe.task == "causal_lm"
    save_final_model(job.trainer, run, generation_config=causal)
    if not job.main:
        return
    run.write_recipe(job.recipe.to_yaml())  # what trained it (a resume may extend max_steps)
    write_card(run.path, TaskCard(job.recipe.task, "causal" if causal else "masked"))
    run.write_metrics(metrics)
    run.mark_latest()
    end_tracker_runs(job.trainer.callback_handler.callbacks)  # after the last log
    if "eval_perplexity_before" in metrics:
        print(
            f"validation perplexity: {metrics['eval_perplexity_before']:,.1f} before -> "
            f"{metrics['eval_perplexity']:,.1f} after {metrics['steps']} steps "
            f"({metrics['train_seconds']:.0f}s)"
        )
    else:
        print(
            f"validation perplexity after {metrics['steps']} steps: "
            f"{metrics['eval_perplexity']:,.1f}"
        )
    print(summary(metrics))
    print(f"saved model to {run.path}")
    if causal:
        print(f'try it: llmkit generate --model {run.path} "ROMEO:"')
