"""Pretraining tokens/s: llmkit's default path vs a `run_clm.py`-style Trainer vs a plain loop.

    python benchmarks/bench_pretrain.py                 # 3 x (3 warmup + 10 timed steps) each
    python benchmarks/bench_pretrain.py --tiny          # smoke test, seconds
    python benchmarks/bench_pretrain.py --convergence 150   # + mean loss of 150 steps, fp32 vs bf16

Model: the default recipe's (recipes/pretrain/gpt-shakespeare.yaml): GPT-2, 4 layers, width 128,
block 128, batch 16 (2,048 tokens/step), GPT-2 tokenizer, Shakespeare.
  llmkit    `llmkit pretrain`'s setup(): prep cache, model, TrainingArguments, Trainer
  run_clm   HF run_clm.py's shape: datasets.map tokenize + group_texts, default_data_collator,
            Trainer with default TrainingArguments, unpadded 50,257-row vocabulary
  plain     a hand-written loop: AdamW, model(input_ids, labels).loss, backward, step (fp32)
  plain@llmkit  the same loop in llmkit's precision (isolates the Trainer's overhead)
Each variant runs `warmup` optimizer steps untimed, then `steps` timed steps; A B C D A B C D ...

MFU (PaLM appendix B): FLOPs/token = 6 * N + 12 * layers * width * block, N = non-embedding
parameters + the output projection (vocab x width; tied to the input embedding, whose lookup
is not a matmul). Peak = a 2048^3 matmul measured in the same run, in llmkit's precision.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common


class StepClock:
    """A TrainerCallback that records the wall time at the end of every optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        outer = self
        self.times: list[float] = []

        class _Cb(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                outer.times.append(time.perf_counter())

        self.callback = _Cb()

    def rate(self, warmup: int, tokens_per_step: int) -> float:
        timed = len(self.times) - warmup
        return timed * tokens_per_step / (self.times[-1] - self.times[warmup - 1])


def llmkit_recipe(overrides: list[str]) -> Any:
    from llmkit.config.loader import load_recipe
    from llmkit.config.pretrain import PretrainRecipe

    return load_recipe(PretrainRecipe, None, overrides)


def run_llmkit(recipe: Any, steps: int, warmup: int) -> tuple[float, float]:
    """tokens/s and final training loss through `llmkit pretrain`'s own setup (the command's
    run folder, prep cache, model, TrainingArguments and Trainer), timing only the steps."""
    from llmkit.commands.pretrain import setup

    with tempfile.TemporaryDirectory() as tmp:
        run_recipe = recipe.model_copy(
            update={
                "train": recipe.train.model_copy(
                    update={
                        "max_steps": warmup + steps,
                        "eval_every": None,
                        "save_every": None,
                        "output_dir": Path(tmp) / "run",
                    }
                )
            }
        )
        clock = StepClock()
        job = setup(run_recipe, callbacks=[clock.callback], disable_tqdm=True)
        out = job.trainer.train()
    tokens = recipe.train.batch_size * recipe.data.block_size
    return clock.rate(warmup, tokens), float(out.training_loss)


def run_clm_data(recipe: Any, tokenizer: Any) -> Any:
    """run_clm.py's data path: load_dataset("text") -> map(tokenize) -> map(group_texts)."""
    from datasets import load_dataset

    from llmkit import assets

    block = recipe.data.block_size
    files = [str(p) for p in assets.shakespeare_files()]
    raw = load_dataset("text", data_files={"train": files})["train"]
    tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // block) * block
        result = {
            k: [t[i : i + block] for i in range(0, total, block)] for k, t in concatenated.items()
        }
        result["labels"] = result["input_ids"].copy()
        return result

    return tokenized.map(group_texts, batched=True)


def gpt2_config(recipe: Any, vocab: int) -> Any:
    from transformers import GPT2Config

    m = recipe.model
    return GPT2Config(
        vocab_size=vocab,
        n_positions=m.max_position_embeddings,
        n_embd=m.hidden_size,
        n_layer=m.num_layers,
        n_head=m.num_heads,
        resid_pdrop=m.dropout,
        embd_pdrop=m.dropout,
        attn_pdrop=m.dropout,
    )


def run_clm(recipe: Any, dataset: Any, steps: int, warmup: int) -> tuple[float, float]:
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(recipe.train.seed)
    model = AutoModelForCausalLM.from_config(gpt2_config(recipe, 50257))
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=recipe.train.batch_size,
            max_steps=warmup + steps,
            report_to="none",
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=default_data_collator,
            callbacks=[clock.callback],
        )
        out = trainer.train()
    tokens = recipe.train.batch_size * recipe.data.block_size
    return clock.rate(warmup, tokens), float(out.training_loss)


def run_plain(recipe: Any, blocks: Any, steps: int, warmup: int, bf16: bool) -> tuple[float, float]:
    """A hand-written loop over the same cached blocks and the same model as llmkit."""
    import numpy as np
    import torch

    from llmkit.data.prep import load_tokenizer_for
    from llmkit.models.build import build_model

    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe, load_tokenizer_for(recipe))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr)
    bs = recipe.train.batch_size
    order = np.random.default_rng(0).permutation(len(blocks))
    loss = torch.zeros(())
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        idx = np.sort(order[step * bs : (step + 1) * bs])
        ids = torch.from_numpy(blocks[idx].astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    float(loss)  # one sync at the end, as a training loop would log
    elapsed = time.perf_counter() - t0
    return steps * bs * blocks.shape[1] / elapsed, float(loss)


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul (best of `repeats`)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def flops_per_token(recipe: Any, vocab: int) -> float:
    m = recipe.model
    d, layers, block = m.hidden_size, m.num_layers, recipe.data.block_size
    inner = m.intermediate_size or 4 * d
    per_layer = 4 * d * d + 2 * d * inner  # qkv + proj + mlp (biases and norms are noise)
    n = layers * per_layer + vocab * d  # + the output projection
    return 6 * n + 12 * layers * d * block


def convergence(steps: int) -> dict[str, float]:
    """Training loss of llmkit's default recipe after `steps` steps, fp32 vs bf16."""
    out = {}
    for precision in ("fp32", "bf16"):
        recipe = llmkit_recipe(
            [f"train.precision={precision}", f"train.max_steps={steps}", "train.log_every=10000"]
        )
        rate, loss = run_llmkit(recipe, steps - 2, 2)
        out[f"{precision}_final_mean_train_loss"] = round(loss, 4)
        out[f"{precision}_tokens_per_s"] = round(rate, 1)
        print(
            f"  convergence {precision}: mean train loss over {steps} steps {loss:.4f}, "
            f"{rate:,.0f} tok/s",
            flush=True,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="smoke test: 2 steps, 1 repeat")
    p.add_argument("--convergence", type=int, default=0, help="steps for the fp32/bf16 check")
    p.add_argument("--skip-speed", action="store_true", help="only the convergence check")
    a = p.parse_args()
    if a.tiny:
        a.steps, a.warmup, a.repeats = 2, 1, 1
    common.pin_threads()
    load_before = common.header("pretrain")
    if a.skip_speed:
        figures = {"convergence": convergence(a.convergence or 60)}
        conv = figures["convergence"]
        common.record(
            "pretrain_convergence",
            figures,
            ratios={
                "bf16_vs_fp32_tokens_per_s": conv["bf16_tokens_per_s"] / conv["fp32_tokens_per_s"]
            },
            config={
                "steps": a.convergence or 60,
                "tiny": False,
            },
            load_before=load_before,
        )
        return

    from llmkit.data.prep import load_tokenizer_for, prepare
    from llmkit.train.arguments import resolve_precision

    recipe = llmkit_recipe([])
    precision = resolve_precision(recipe.train.precision)
    tokenizer = load_tokenizer_for(recipe)
    data = prepare(recipe, tokenizer, verbose=False)
    print(f"  llmkit precision: {precision}; building the run_clm-style dataset ...", flush=True)
    clm_data = run_clm_data(recipe, tokenizer)

    losses: dict[str, float] = {}

    def variant(name: str, fn: Any) -> Any:
        def call() -> float:
            rate, loss = fn()
            losses[name] = loss
            return rate

        return call

    s, w = a.steps, a.warmup
    other = "fp32" if precision == "bf16" else "bf16"
    other_recipe = llmkit_recipe([f"train.precision={other}"])
    rates = common.interleave(
        {
            "llmkit": variant("llmkit", lambda: run_llmkit(recipe, s, w)),
            "run_clm": variant("run_clm", lambda: run_clm(recipe, clm_data, s, w)),
            # The same llmkit path in the other precision (bf16 autocast <-> fp32).
            f"llmkit_{other}": variant(f"llmkit_{other}", lambda: run_llmkit(other_recipe, s, w)),
            "plain_fp32": variant("plain_fp32", lambda: run_plain(recipe, data.train, s, w, False)),
            "plain_llmkit_precision": variant(
                "plain_llmkit_precision",
                lambda: run_plain(recipe, data.train, s, w, precision == "bf16"),
            ),
        },
        a.repeats,
    )
    med = {k: common.median(v) for k, v in rates.items()}
    peaks = {"fp32": matmul_peak("fp32")}
    if precision == "bf16":
        peaks["bf16"] = matmul_peak("bf16")
    mult = recipe.model.pad_vocab_to_multiple_of
    vocab = -(-len(tokenizer) // mult) * mult
    fpt = flops_per_token(recipe, vocab)
    achieved = med["llmkit"] * fpt / 1e9
    mfu = achieved / peaks[precision]
    for k, v in med.items():
        print(f"   {k}: {v:,.0f} tokens/s (median of {a.repeats})")
    print(
        f"   FLOPs/token {fpt / 1e6:.1f} M -> {achieved:.1f} GFLOP/s; matmul peak "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items())
        + f"; MFU {100 * mfu:.1f}% of the {precision} peak"
    )
    figures: dict[str, Any] = {
        "tokens_per_s_median": {k: round(v, 1) for k, v in med.items()},
        "tokens_per_s_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "train_loss_last_repeat": {k: round(v, 4) for k, v in losses.items()},
        "llmkit_precision": precision,
        "flops_per_token": fpt,
        "achieved_gflops": round(achieved, 1),
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "mfu_percent": round(100 * mfu, 1),
    }
    if a.convergence:
        figures["convergence"] = convergence(a.convergence)
    common.record(
        "pretrain",
        figures,
        ratios={
            "pretrain_vs_run_clm": med["llmkit"] / med["run_clm"],
            "pretrain_vs_plain_fp32": med["llmkit"] / med["plain_fp32"],
            "pretrain_vs_plain_same_precision": med["llmkit"] / med["plain_llmkit_precision"],
            f"pretrain_{other}_vs_{precision}": med[f"llmkit_{other}"] / med["llmkit"],
            "mfu_fraction_of_peak": mfu,
        },
        targets={
            "pretrain_vs_run_clm": ">= 1.3",
            "pretrain_vs_plain_fp32": ">= 1.0",
            "mfu_fraction_of_peak": ">= 0.40",
        },
        config={
            "steps": s,
            "warmup": w,
            "repeats": a.repeats,
            "tiny": a.tiny,
        },
        load_before=load_before,
    )


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
