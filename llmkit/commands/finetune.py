"""`llmkit finetune`: setup -> evaluate -> train -> evaluate -> save (-> sample).

sft and text2text fine-tune a causal LM on rendered, prompt-masked examples (llmkit.data.sft);
classification puts a sequence-classification head on an encoder (BERT). LoRA (peft) is the
default; `lora.enabled: false` trains every weight. The run folder holds the PEFT adapter
(adapter_config.json + adapter_model.safetensors + tokenizer) or the full model.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Any

from llmkit.config.finetune import FinetuneRecipe
from llmkit.errors import UsageError
from llmkit.runs import RunDir
from llmkit.train.callbacks import eval_summary, perplexity

# LoRA targets when the recipe names none: every attention projection (the LoRA paper adapts
# q and v; QLoRA found adapting all of them closes most of the gap to full fine-tuning).
DEFAULT_LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "bert": ["query", "key", "value"],
}


@dataclass
class FinetuneResult:
    run: RunDir
    metrics: dict[str, Any]
    model: Any  # the trained model (a PeftModel under LoRA), still in memory


@dataclass
class FinetuneData:
    train: Any
    validation: Any
    collator: Any
    sample_prompt: str | None = None  # one held-out prompt, rendered, to show an answer to
    sample_shown: str = ""  # the same prompt as a person wrote it (the question)
    labels: list[str] | None = None  # classification: class names, id order
    eval_pairs: list[tuple[str, str]] | None = None  # text2text: (prompt, reference)


def run_finetune(
    recipe: FinetuneRecipe, *, resume: bool = False, overwrite: bool = False
) -> FinetuneResult:
    from llmkit.models import load_tokenizer
    from llmkit.train.arguments import training_arguments

    check_qlora(recipe)  # before anything slow: a missing GPU is known up front
    run = RunDir(recipe.output_dir)
    run.check(resume=resume, overwrite=overwrite)
    t = recipe.train
    metric = recipe.eval.metric_for_best_model.removeprefix("eval_")
    load_best = t.eval_every is not None
    args = training_arguments(
        t,
        run.path,
        load_best=load_best,
        metric_for_best_model=f"eval_{metric}" if load_best else None,
        greater_is_better=metric != "loss" if load_best else None,
        # Padded batches: count real tokens only; packed rows have no padding.
        include_num_input_tokens_seen="all" if recipe.packing else "non_padding",
        remove_unused_columns=False,
    )
    main = args.process_index == 0

    with args.main_process_first(desc="run folder and data"):
        if main:
            run.create(overwrite=overwrite and not resume)
            run.recipe_file.write_text(recipe.to_yaml())
        tokenizer = load_tokenizer(
            recipe.base_model, trust_remote_code=recipe.model.trust_remote_code
        )
        data = build_data(recipe, tokenizer)

    from transformers import set_seed

    set_seed(t.seed)  # LoRA's A matrices and a classification head start random
    model = load_model(recipe, tokenizer, data.labels)
    if recipe.lora.enabled:
        model = apply_lora(model, recipe)
    from llmkit.data.sft import SftCollator
    from llmkit.models import accepts_logits_to_keep

    if isinstance(data.collator, SftCollator) and not accepts_logits_to_keep(model):
        data.collator = replace(data.collator, scored_logits_only=False)
    if main:
        print(describe_model(model, recipe))
        print(
            f"data: {len(data.train):,} training / {len(data.validation):,} validation examples"
            f"{', packed' if recipe.packing else ''}"
        )

    from llmkit.train.trainer import build_trainer, fit

    trainer = build_trainer(
        model=model,
        tokenizer=tokenizer,
        args=args,
        train=t,
        run=run,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=data.collator,
        trainer_cls=_trainer_class(recipe, data, tokenizer),
        compute_metrics=classification_metrics if recipe.task == "classification" else None,
        show_ppl=recipe.task != "classification",
    )
    metrics: dict[str, Any] = {"task": recipe.task, "lora": recipe.lora.enabled}
    if not resume:
        before = trainer.evaluate()
        metrics |= {f"{k}_before": v for k, v in _scores(before).items()}
        if main:
            print(f"before training: {eval_summary(before, show_ppl=False)}")

    t0 = time.perf_counter()
    out = fit(trainer, run, resume=resume)
    train_seconds = time.perf_counter() - t0
    after = trainer.evaluate()
    metrics |= _scores(after) | {
        "train_loss": out.training_loss,
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 1),
        "tokens_seen": trainer.state.num_input_tokens_seen,
    }
    if data.labels is not None:
        metrics["majority_baseline_accuracy"] = majority_baseline(data.validation)
    if data.sample_prompt is not None:
        metrics["sample_prompt"] = data.sample_prompt
        metrics["sample_answer"] = sample_answer(model, tokenizer, data.sample_prompt)

    if hasattr(model, "config"):
        model.config.use_cache = True  # off while training (see llmkit.data.sft.pack_batch)
    trainer.save_model()  # main process only: adapter or model, + tokenizer, safetensors
    if main:
        if recipe.task != "classification":
            model.generation_config.save_pretrained(run.path)
        run.write_metrics(metrics)
        run.mark_latest()
        summary = eval_summary(after, show_ppl=False)
        print(f"after {metrics['steps']} steps ({train_seconds:.0f}s): {summary}")
        if "majority_baseline_accuracy" in metrics:
            print(f"majority-class baseline accuracy: {metrics['majority_baseline_accuracy']:.3f}")
        if data.sample_prompt is not None:
            print(
                f"sample answer to a held-out prompt:\n  prompt: {data.sample_shown}"
                f"\n  answer: {metrics['sample_answer']}"
            )
        kind = "LoRA adapter" if recipe.lora.enabled else "model"
        print(f"saved {kind} to {run.path}")
        if recipe.lora.enabled:
            print(f"merge it into a plain model: llmkit export {run.path}")
    return FinetuneResult(run=run, metrics=metrics, model=model)


# --- setup -------------------------------------------------------------------------------


def check_qlora(recipe: FinetuneRecipe) -> None:
    """QLoRA needs bitsandbytes' 4-bit CUDA kernels; say which piece is missing, in one line."""
    if not recipe.qlora:
        return
    import importlib.util

    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if missing:
        raise UsageError(
            f"qlora: 4-bit loading needs bitsandbytes and a CUDA GPU: "
            f"{'; '.join(missing)}; set qlora: false for LoRA in full precision"
        )


def build_data(recipe: FinetuneRecipe, tokenizer: Any) -> FinetuneData:
    from llmkit.data import sft

    train_rows, val_rows = _rows(recipe)
    cap = recipe.data.max_eval_examples
    if cap and len(val_rows) > cap:
        # An even stride, not the first `cap`: chatterbot's rows come grouped by topic.
        val_rows = val_rows[:: len(val_rows) // cap][:cap]
    if recipe.task == "classification":
        return _classification_data(recipe, tokenizer, train_rows, val_rows)
    train = sft.encode_rows(train_rows, recipe, tokenizer, split="train")
    validation = sft.encode_rows(val_rows, recipe, tokenizer, split="validation")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    first = sft.row_segments(val_rows[0], recipe, tokenizer, "validation row 1")
    prompt = "".join(text for text, trained in first[: _first_trained(first)])
    eval_pairs = None
    if recipe.task == "text2text":
        n = recipe.eval.generate_examples
        eval_pairs = [
            (
                recipe.data.template.format(source=r[recipe.data.source_column]),
                str(r[recipe.data.target_column]),
            )
            for r in val_rows[:n]
        ]
    return FinetuneData(
        train=sft.Examples(train),
        validation=sft.Examples(validation),
        collator=sft.SftCollator(pad_id=int(pad or 0), pack=recipe.packing),
        sample_prompt=prompt or None,
        sample_shown=_shown_prompt(val_rows[0], recipe, prompt),
        eval_pairs=eval_pairs,
    )


def _first_trained(segments: list[tuple[str, bool]]) -> int:
    return next((i for i, (_, trained) in enumerate(segments) if trained), len(segments))


def _rows(recipe: FinetuneRecipe) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from llmkit.data import sft

    d = recipe.data
    if d.sources == ["embedded:chatterbot"]:
        return sft.chatterbot_rows()
    if any(s.startswith("embedded:") for s in d.sources):
        raise UsageError(
            "data.sources: embedded:chatterbot must be the only source "
            "(it brings its own held-out split)"
        )
    rows = sft.read_rows(d.sources)
    if isinstance(d.validation, str):
        return rows, sft.read_rows([d.validation])
    return sft.hash_split(rows, d.validation)


def _classification_data(
    recipe: FinetuneRecipe, tokenizer: Any, train_rows: list[Any], val_rows: list[Any]
) -> FinetuneData:
    from transformers import DataCollatorWithPadding

    from llmkit.data.sft import column

    d = recipe.data
    names = sorted(
        {
            str(column(r, d.label_column, "label_column", f"train row {i + 1}"))
            for i, r in enumerate(train_rows)
        }
    )
    ids = {name: i for i, name in enumerate(names)}

    def encode(rows: list[Any], split: str) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(rows):
            where = f"{split} row {i + 1}"
            label = str(column(r, d.label_column, "label_column", where))
            if label not in ids:
                raise UsageError(f"{where}: label '{label}' never occurs in the training rows")
            text = str(column(r, d.text_column, "text_column", where))
            enc = tokenizer(text, truncation=True, max_length=d.max_length)
            out.append({**enc, "labels": ids[label]})
        return out

    return FinetuneData(
        train=encode(train_rows, "train"),
        validation=encode(val_rows, "validation"),
        collator=DataCollatorWithPadding(tokenizer),
        labels=names,
    )


def load_model(recipe: FinetuneRecipe, tokenizer: Any, labels: list[str] | None) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llmkit.models import _torch_dtype, check_vocab, resolve_ref

    m = recipe.model
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype("auto"),
        "attn_implementation": m.attn_implementation,
        "trust_remote_code": m.trust_remote_code,
    }
    if recipe.qlora:
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if labels is not None:
        auto: Any = AutoModelForSequenceClassification
        kwargs |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    else:
        auto = AutoModelForCausalLM
    try:
        model = auto.from_pretrained(resolve_ref(recipe.base_model), **kwargs)
    except (OSError, ValueError) as e:
        raise UsageError(
            f"model.init: cannot load {recipe.base_model}: {str(e).splitlines()[0]}"
        ) from e
    check_vocab(model, tokenizer, "model.init")
    if labels is None:
        # Packed rows need it off (llmkit.data.sft.pack_batch); no training step reuses a cache.
        model.config.use_cache = False
    if recipe.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


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
    from peft import LoraConfig, get_peft_model

    lo = recipe.lora
    config = LoraConfig(
        task_type="SEQ_CLS" if recipe.task == "classification" else "CAUSAL_LM",
        r=lo.r,
        lora_alpha=lo.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=lo.dropout,
        target_modules=lora_targets(model, lo.target_modules),
        # GPT-2's Conv1D stores weights transposed (in x out); peft needs telling.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`: not ours to fix.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return get_peft_model(model, config)


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


# --- evaluation --------------------------------------------------------------------------


def classification_metrics(pred: Any) -> dict[str, float]:
    """Accuracy and macro-F1 (the unweighted mean of per-class F1, so rare topics count)."""
    import numpy as np

    guess = np.asarray(pred.predictions).argmax(-1)
    gold = np.asarray(pred.label_ids)
    f1s = []
    for c in np.unique(np.concatenate([gold, guess])):
        tp = float(np.sum((guess == c) & (gold == c)))
        denom = float(np.sum(guess == c) + np.sum(gold == c))
        f1s.append(2 * tp / denom if denom else 0.0)
    return {"accuracy": float(np.mean(guess == gold)), "macro_f1": float(np.mean(f1s))}


def majority_baseline(validation: list[dict[str, Any]]) -> float:
    """Accuracy of always answering the most common validation label."""
    from collections import Counter

    counts = Counter(int(r["labels"]) for r in validation)
    return counts.most_common(1)[0][1] / len(validation)


def generation_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """BLEU and chrF (sacreBLEU, 0-100) and ROUGE F-measures (x100), via llmkit.metrics."""
    from llmkit import metrics

    scores = {"bleu": metrics.bleu(preds, refs).score, "chrf": metrics.chrf(preds, refs).score}
    rouge = metrics.rouge(preds, refs)
    scores |= {k: float(rouge[k]) for k in ("rouge1", "rouge2", "rougeL")}
    return scores


def _trainer_class(recipe: FinetuneRecipe, data: FinetuneData, tokenizer: Any) -> Any:
    from transformers import Trainer

    if data.eval_pairs is None:
        return Trainer
    pairs = data.eval_pairs
    max_new_tokens = recipe.eval.max_new_tokens

    class GenerationEvalTrainer(Trainer):
        """Adds BLEU/chrF/ROUGE of greedy generations on validation prompts to every
        evaluation, inside `evaluation_loop`, so checkpoint selection and early stopping
        (which read the returned metrics) can use them."""

        def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix", "eval")
            preds = generate_answers(
                self.model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new_tokens
            )
            scores = generation_scores(preds, [r for _, r in pairs])
            assert output.metrics is not None  # a dict: the loop always reports the loss
            output.metrics.update({f"{prefix}_{k}": round(v, 3) for k, v in scores.items()})
            return output

    return GenerationEvalTrainer


def generate_answers(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int
) -> list[str]:
    """Greedy completions (prompt text not included), via `llmkit generate`'s batching."""
    from llmkit.commands.generate import generate_texts
    from llmkit.config.decoding import DecodingConfig
    from llmkit.models import LoadedModel

    was_training = model.training
    model.eval()
    try:
        loaded = LoadedModel(model=model, tokenizer=tokenizer, description="")
        options = DecodingConfig(max_new_tokens=max_new_tokens, do_sample=False)
        out = generate_texts(loaded, prompts, options, progress=False)
    finally:
        model.train(was_training)
    return [c[0].strip() for c in out]


def sample_answer(model: Any, tokenizer: Any, prompt: str) -> str:
    return generate_answers(model, tokenizer, [prompt], max_new_tokens=48)[0]


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """eval_* numbers from an evaluate() dict, named without the prefix; loss gets perplexity."""
    skip = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    out = {
        k.removeprefix("eval_"): v
        for k, v in metrics.items()
        if k.startswith("eval_") and not k.endswith(skip)
    }
    if "loss" in out:
        out = {"eval_loss": out.pop("loss"), **out}
        out["eval_perplexity"] = perplexity(out["eval_loss"])
    return out


def _shown_prompt(row: dict[str, Any], recipe: FinetuneRecipe, rendered: str) -> str:
    """The user's words of a chat (not the template around them), else the prompt itself."""
    from llmkit.data.sft import chat_messages

    if recipe.task == "sft" and recipe.data.format == "chat":
        users = [
            m["content"]
            for m in chat_messages(row, recipe.data.messages_column, "")
            if m["role"] == "user"
        ]
        return users[0] if users else rendered
    return rendered.strip()
