"""`llmkit finetune`: setup -> train (evaluate, fit, evaluate) -> save (-> sample).

sft and text2text fine-tune a causal LM on rendered, prompt-masked examples
(llmkit.data.finetune); classification puts a sequence-classification head on an encoder
(BERT). LoRA (peft) is the default; `lora.enabled: false` trains every weight. The run folder
holds the PEFT adapter (adapter_config.json + adapter_model.safetensors + tokenizer) or the
full model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from llmkit.config.finetune import FinetuneRecipe
from llmkit.data.finetune import FinetuneData
from llmkit.io import interrupt
from llmkit.io.runs import RunDir
from llmkit.train.callbacks import eval_summary, perplexity


@dataclass
class FinetuneJob:
    recipe: FinetuneRecipe
    run: RunDir
    trainer: Any  # transformers.Trainer
    data: FinetuneData
    resume: bool
    main: bool  # the process that prints and saves (rank 0)
    last_eval: dict[str, Any] = field(default_factory=dict)  # evaluate() after training


@dataclass
class FinetuneResult:
    run: RunDir
    metrics: dict[str, Any]
    model: Any  # the trained model (a PeftModel under LoRA), still in memory


def run_finetune(
    recipe: FinetuneRecipe, *, resume: bool = False, overwrite: bool = False
) -> FinetuneResult:
    job = setup(recipe, resume=resume, overwrite=overwrite)
    metrics = train(job)
    save(job, metrics)
    return FinetuneResult(job.run, metrics, job.trainer.model)


def setup(
    recipe: FinetuneRecipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **args_overrides: Any,
) -> FinetuneJob:
    """Run folder, tokenizer, examples, base model (+ LoRA) and Trainer."""
    from transformers import set_seed

    from llmkit.data.collate import SftCollator
    from llmkit.data.finetune import build_data
    from llmkit.evaluation.metrics import classification_scores
    from llmkit.models.load import (
        accepts_logits_to_keep,
        check_qlora,
        is_seq2seq,
        load_for_finetuning,
        load_tokenizer,
    )
    from llmkit.models.lora import apply_lora, describe_model
    from llmkit.train.arguments import training_arguments
    from llmkit.train.checkpoints import check_resume_processes
    from llmkit.train.ending import check_finished
    from llmkit.train.trainer import build_trainer, generation_eval_trainer

    check_qlora(recipe)  # before anything slow: a missing GPU is known up front
    run = RunDir(recipe.output_dir)
    run.check(resume=resume, overwrite=overwrite)
    t = recipe.train
    if resume:
        check_finished(run, t)  # "already finished at step N": exit 0 before any loading
    metric = recipe.eval.metric_for_best_model.removeprefix("eval_")
    load_best = t.eval_every is not None
    if recipe.task == "preference":  # TRL's config class and fields (llmkit.train.preference)
        from llmkit.train.preference import method_arguments, trl_classes

        cls = trl_classes(recipe.preference.method)[0]
        args_overrides = {"args_cls": cls, **method_arguments(recipe), **args_overrides}
    args = training_arguments(
        t,
        run.path,
        load_best=load_best,
        metric_for_best_model=f"eval_{metric}" if load_best else None,
        greater_is_better=metric != "loss" if load_best else None,
        # Padded batches: count real tokens only; packed rows have no padding.
        include_num_input_tokens_seen="all" if recipe.packing else "non_padding",
        remove_unused_columns=False,
        **args_overrides,
    )
    main = args.process_index == 0
    if resume:
        check_resume_processes(run, args.world_size)  # an FSDP checkpoint: the count it had
    with args.main_process_first(desc="data"):
        tokenizer = load_tokenizer(
            recipe.tokenizer_ref, trust_remote_code=recipe.model.trust_remote_code
        )
    if recipe.task == "preference":
        from llmkit.train.preference import setup_preference

        trainer, pdata = setup_preference(recipe, run, args, tokenizer, resume, overwrite)
        return FinetuneJob(recipe, run, trainer, pdata, resume, main)
    with args.main_process_first(desc="data"):
        seq2seq = is_seq2seq(recipe)
        data = build_data(recipe, tokenizer, seq2seq=seq2seq)
    interrupt.check()  # phase boundaries: a Ctrl-C whose exception a library lost stops here

    set_seed(t.seed)  # LoRA's A matrices and a classification head start random
    model = load_for_finetuning(recipe, tokenizer, data.labels, seq2seq=seq2seq)
    if recipe.lora.enabled:
        model = apply_lora(model, recipe)
    if isinstance(data.collator, SftCollator) and not accepts_logits_to_keep(model):
        data.collator = replace(data.collator, scored_logits_only=False)
    interrupt.check()
    if main:
        print(describe_model(model, recipe))
        print(
            f"data: {len(data.train):,} training / {len(data.validation):,} validation examples"
            f"{', packed' if recipe.packing else ''}"
        )
        if data.eval_pairs is not None:
            print(
                f"evaluation: loss on {len(data.validation):,} validation examples; BLEU/ROUGE "
                f"on greedy answers to {len(data.eval_pairs):,} of them (<= "
                f"{recipe.eval.max_new_tokens} tokens, stop at {recipe.eval.stop or 'EOS'})"
            )
    with args.main_process_first(desc="run folder"):  # made once the inputs have loaded
        if main:
            run.start(recipe.to_yaml(), resume=resume, overwrite=overwrite)
    trainer = build_trainer(
        model,
        tokenizer,
        args,
        run,
        t,
        (data.train, data.validation, data.collator),
        trainer_cls=generation_eval_trainer(
            data.eval_pairs,
            tokenizer,
            max_new_tokens=recipe.eval.max_new_tokens,
            stop=recipe.eval.stop,
            bleu_tokenize=recipe.eval.bleu_tokenize,
            rouge_tokenize=recipe.eval.rouge_tokenize,
        ),
        compute_metrics=classification_scores if recipe.task == "classification" else None,
        show_ppl=recipe.task != "classification",
    )
    return FinetuneJob(recipe, run, trainer, data, resume, main)


def train(job: FinetuneJob) -> dict[str, Any]:
    """Task metrics before (unless resuming), training, task metrics after, and an answer to
    one held-out prompt."""
    from llmkit.evaluation.classes import majority_baseline
    from llmkit.inference.answers import sample_answer
    from llmkit.inference.generate import ENDED_AT_ONCE
    from llmkit.train.ending import ending, start_weights
    from llmkit.train.trainer import evaluate_before_training, fit

    trainer, data = job.trainer, job.data
    metrics: dict[str, Any] = {"task": job.recipe.task, "lora": job.recipe.lora.enabled}
    # The run keeps its best weights: the ones it starts from are a candidate too.
    # (Not under FSDP: there is no evaluation before training to compare with.)
    keep_best = trainer.args.load_best_model_at_end and not job.resume
    keep_best = keep_best and not trainer.is_fsdp_enabled
    weights_before = start_weights(trainer.model) if keep_best else None
    before = None if job.resume else evaluate_before_training(trainer)
    if before is not None:
        metrics |= {f"{k}_before": v for k, v in _scores(before).items()}
        if job.main:
            print(f"before training: {eval_summary(before, show_ppl=False)}")
    interrupt.check()
    t0 = time.perf_counter()
    out = fit(trainer, job.run, resume=job.resume)
    metric = "eval_" + job.recipe.eval.metric_for_best_model.removeprefix("eval_")
    # The kept weights' evaluation, run once; against the model before training.
    end = ending(trainer, before=before, weights_before=weights_before, metric=metric)
    job.last_eval = end.evaluation
    metrics |= end.metrics()
    metrics |= _scores(job.last_eval) | {
        "train_loss": out.training_loss,
        "steps": trainer.state.global_step,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "tokens_seen": trainer.state.num_input_tokens_seen,
    }
    if data.labels is not None:
        metrics["majority_baseline_accuracy"] = majority_baseline(
            [int(r["labels"]) for r in data.validation]
        )
    if data.sample_prompt is not None:
        metrics["sample_prompt"] = data.sample_prompt
        answer, at_once = sample_answer(trainer.model, trainer.processing_class, data.sample_prompt)
        metrics["sample_answer"] = answer
        if at_once and not answer:
            metrics["sample_answer_note"] = ENDED_AT_ONCE
    return metrics


def save(job: FinetuneJob, metrics: dict[str, Any]) -> None:
    """The adapter or model (safetensors + tokenizer) at the run root, metrics.json, LATEST."""
    interrupt.check()  # the last checkpoint is kept; the final model would be a half-save
    model, recipe, run = job.trainer.model, job.recipe, job.run
    if hasattr(model, "config"):
        model.config.use_cache = True  # off while training (see llmkit.data.collate.pack_batch)
    from llmkit.data.finetune import task_card
    from llmkit.io.write import write_jsonl
    from llmkit.models.card import write_card
    from llmkit.train.checkpoints import save_final_model
    from llmkit.train.ending import summary
    from llmkit.train.trackers import end_tracker_runs

    save_final_model(job.trainer, run, generation_config=recipe.task != "classification")
    if not job.main:
        return
    run.write_recipe(job.recipe.to_yaml())  # what trained it (a resume may extend max_steps)
    if job.data.scored_rows is not None:
        write_jsonl(run.validation_jsonl, job.data.scored_rows)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    write_card(run.path, task_card(recipe, job.data.labels, seq2seq=seq2seq))
    run.write_metrics(metrics)
    run.mark_latest()
    end_tracker_runs(job.trainer.callback_handler.callbacks)  # after the last log
    print(
        f"after {metrics['steps']} steps ({metrics['train_seconds']:.0f}s): "
        f"{eval_summary(job.last_eval, show_ppl=False)}"
    )
    print(summary(metrics))
    if "majority_baseline_accuracy" in metrics:
        print(f"majority-class baseline accuracy: {metrics['majority_baseline_accuracy']:.3f}")
    if job.data.sample_prompt is not None:
        print(
            f"sample answer to a held-out prompt:\n  prompt: {job.data.sample_shown}"
            f"\n  answer: {metrics['sample_answer'] or '(empty)'}"
            + (f" ({metrics['sample_answer_note']})" if "sample_answer_note" in metrics else "")
        )
    print(f"saved {'LoRA adapter' if recipe.lora.enabled else 'model'} to {run.path}")
    if recipe.lora.enabled:
        print(f"merge it into a plain model: llmkit export {run.path}")


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """eval_* numbers from an evaluate() dict, named without the prefix; loss gets perplexity."""
    skip: tuple[str, ...] = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    # "perplexity" is added below; TRL's own: a timing and a token count
    skip += ("perplexity", "preparation_time", "num_tokens")
    out = {
        k.removeprefix("eval_"): v
        for k, v in metrics.items()
        if k.startswith("eval_") and not k.endswith(skip)
    }
    if "loss" in out:
        out = {"eval_loss": out.pop("loss"), **out}
        if "rewards/margins" not in out and "kl" not in out:  # a preference loss is no NLL
            out["eval_perplexity"] = perplexity(out["eval_loss"])
    return out
