"""Fine-tuning useful (non-padding) tokens/s on short chats: llmkit packing vs padded batches.

    python benchmarks/bench_finetune.py            # 3 x (2 warmup + 6 timed steps) each
    python benchmarks/bench_finetune.py --tiny     # smoke test

Data: the chatterbot question/answer pairs rendered with SmolLM2's chat template by llmkit's
sft code (recipes/finetune/lora-chatterbot.yaml: completion-only loss, max_length 128).
Model: a 4-layer, width-256 Llama built from a config with SmolLM2's tokenizer (49,152
tokens). SmolLM2-135M itself takes ~10 s a step on 2 cores, too slow for several repetitions;
packing's gain comes from the tokens it does not compute, which is independent of the width.
Both sides: the same Trainer, TrainingArguments (llmkit's), model, examples and batch order.
  packed  llmkit.data.collate.SftCollator(pack=True): a batch becomes one row, positions restart,
          the vocabulary projection runs only where a label is scored, and the cross-entropy
          is llmkit.train.loss's chunked one: llmkit's path
  packed_all_logits  the same rows with logits at every position and PyTorch's
          cross-entropy (llmkit's path before 2026-11-23)
  padded  transformers' DataCollatorForLanguageModeling(mlm=False), the Hugging Face default:
          right-padded to the longest example of the batch
Useful tokens = real (non-padding) tokens of the examples that went through the model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common


def build(batch_size: int) -> tuple[Any, Any, Any]:
    from llmkit.config.finetune import FinetuneRecipe
    from llmkit.config.loader import load_recipe
    from llmkit.data.finetune import build_data
    from llmkit.models.load import load_tokenizer

    recipe = load_recipe(
        FinetuneRecipe,
        "recipes/finetune/lora-chatterbot.yaml",
        [f"train.batch_size={batch_size}", "train.eval_every=null", "train.save_every=null"],
    )
    tokenizer = load_tokenizer(recipe.base_model)
    data = build_data(recipe, tokenizer)
    return recipe, tokenizer, data


def small_llama(tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


class HFExamples:
    """llmkit's encoded examples as the dicts HF collators take."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.items[i].input_ids}


def run(recipe: Any, tokenizer: Any, data: Any, mode: str, steps: int, warmup: int) -> float:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, set_seed

    from llmkit.train.arguments import training_arguments
    from llmkit.train.loss import use_chunked_loss

    t = recipe.train.model_copy(update={"max_steps": warmup + steps})
    useful: list[int] = []
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(time.perf_counter())

    if mode != "padded":
        pack = replace(data.collator, scored_logits_only=mode == "packed")

        def collator(batch: list[Any]) -> dict[str, Any]:
            useful.append(sum(len(e.input_ids) for e in batch))
            return dict(pack(batch))

        dataset: Any = data.train
    else:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        hf = DataCollatorForLanguageModeling(tokenizer, mlm=False)

        def collator(batch: list[Any]) -> dict[str, Any]:
            out = hf(batch)
            useful.append(int(out["attention_mask"].sum()))
            return dict(out)

        dataset = HFExamples(data.train.items)
    set_seed(0)
    model = small_llama(tokenizer)
    if mode == "packed":  # llmkit's Trainer factory gives causal LMs the chunked loss on CPU
        use_chunked_loss(model)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        args = training_arguments(
            t,
            Path(tmp),
            disable_tqdm=True,
            include_num_input_tokens_seen="no",
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[Clock()],
        )
        trainer.train()
    # The dataloader may prefetch; count the batches the timed steps consumed.
    timed_tokens = sum(useful[warmup : warmup + steps])
    return timed_tokens / (times[-1] - times[warmup - 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    if a.tiny:
        a.steps, a.warmup, a.repeats = 2, 1, 1
    common.pin_threads()
    load_before = common.header("finetune")
    recipe, tokenizer, data = build(a.batch_size)
    lengths = [len(e.input_ids) for e in data.train.items]
    print(
        f"  {len(lengths)} chats, {sum(lengths) / len(lengths):.1f} tokens on average "
        f"(min {min(lengths)}, max {max(lengths)}); batch {a.batch_size}",
        flush=True,
    )
    rates = common.interleave(
        {
            mode: lambda mode=mode: run(recipe, tokenizer, data, mode, a.steps, a.warmup)
            for mode in ("packed", "packed_all_logits", "padded")
        },
        a.repeats,
    )
    med = {k: common.median(v) for k, v in rates.items()}
    for k, v in med.items():
        print(f"   {k}: {v:,.0f} useful tokens/s (median of {a.repeats})")
    common.record(
        "finetune",
        {
            "useful_tokens_per_s_median": {k: round(v, 1) for k, v in med.items()},
            "useful_tokens_per_s_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "mean_example_tokens": round(sum(lengths) / len(lengths), 1),
        },
        ratios={
            "finetune_packed_vs_padded": med["packed"] / med["padded"],
            "finetune_scored_logits_vs_all": med["packed"] / med["packed_all_logits"],
        },
        targets={"finetune_packed_vs_padded": ">= 2.0"},
        config={
            "steps": a.steps,
            "warmup": a.warmup,
            "repeats": a.repeats,
            "tiny": a.tiny,
            "batch_size": a.batch_size,
            "model": "Llama 4x256 from config, SmolLM2 tokenizer",
        },
        load_before=load_before,
    )


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
