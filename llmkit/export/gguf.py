"""A run as one GGUF file (llama.cpp, Ollama, LM Studio), proven by llama.cpp itself.

    run (LoRA adapter or full model) -> merged fp32 HF folder (temporary)
      -> llama.cpp's convert_hf_to_gguf.py (f32, f16, bf16)
      -> llama.cpp's quantizer from its f16 file (q8_0, q4_k_m, q6_k, ...)
      -> llama.cpp loads the file: greedy tokens vs transformers, perplexity vs f16
      -> Modelfile (Ollama) + gguf_check.json beside the file

Everything is built in a temporary sibling folder and renamed into place (llmkit.io.write),
so Ctrl-C, a kill or a full disk leaves the old export or none, never half a file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from llmkit.errors import UsageError
from llmkit.export.check import PPL_TOKENS, Agreement, agreement, open_gguf, perplexity
from llmkit.export.llama_cpp import (
    CONVERTER_TYPES,
    ConverterType,
    GgufType,
    QuantizerType,
    convert,
    converter_dir,
    llama_cpp_module,
    quantize,
)
from llmkit.export.modelfile import modelfile
from llmkit.io.write import write_json, write_text
from llmkit.models.card import KIND_USE, model_kind

N_CTX = 512  # llama.cpp context for the checks: perplexity windows of up to 512 tokens
MODELFILE = "Modelfile"
CHECK_FILE = "gguf_check.json"


@dataclass
class GgufReport:
    file: str
    quant: str
    size_bytes: int
    agreement: Agreement
    perplexity: float
    perplexity_f16: float | None
    ppl_tokens: int
    ppl_text: str
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [self.agreement.line()]
        ppl = f"perplexity on {self.ppl_text} ({self.ppl_tokens} tokens), llama.cpp: "
        ppl += f"{self.quant} {self.perplexity:.3f}"
        if self.perplexity_f16 is not None:
            ratio = 100 * (self.perplexity / self.perplexity_f16 - 1)
            ppl += f" vs f16 {self.perplexity_f16:.3f} ({ratio:+.2f}%)"
        return [*out, ppl]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "quant": self.quant,
            "size_bytes": self.size_bytes,
            **self.agreement.to_json(),
            "perplexity": self.perplexity,
            "perplexity_f16": self.perplexity_f16,
            "ppl_tokens": self.ppl_tokens,
            "ppl_text": self.ppl_text,
            "seconds": self.seconds,
        }


def check_exportable(run: Path) -> None:
    """Only causal LMs: llama.cpp generates text with decoder-only models. Refused in one
    line, before any work."""
    kind = model_kind(run)
    if kind is None:
        raise UsageError(f"{run} is not a model folder (no config.json or adapter_config.json)")
    if kind != "causal":
        raise UsageError(
            f"{run} is {KIND_USE[kind]}; GGUF export takes causal LMs (llama.cpp runs "
            "decoder-only text generation; llmkit exports no encoder or classifier head to it)"
        )
    converter_dir()  # the tools are there, or a one-line setup error
    llama_cpp_module()


def load_merged(run: Path) -> Any:
    """The run's model in fp32: a LoRA adapter merged into its base, or the full model."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmkit.io.files import read_json_object
    from llmkit.models.load import loading
    from llmkit.models.lora import merge_adapter

    adapter = run / "adapter_config.json"
    if adapter.is_file():
        return merge_adapter(run, read_json_object(adapter, "adapter config"))
    with loading("model", str(run)):
        return AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32)


def held_out_ids(tokenizer: Any, text_file: Path | None) -> tuple[list[int], str]:
    """The perplexity text's token ids (up to PPL_TOKENS) and how it is named in the output.
    Default: the opening of Shakespeare's Tempest, which no shipped recipe trains on (the
    tiny recipes train on Hamlet and Macbeth)."""
    from llmkit import assets
    from llmkit.io.files import read_text

    if text_file is not None:
        text, name = read_text(text_file), str(text_file)
    else:
        play = next(p for p in assets.shakespeare_files() if p.name.startswith("tempest"))
        text, name = play.read_text(encoding="utf-8")[:20_000], "The Tempest (held out)"
    # verbose=False: the text is longer than the model's context on purpose (it is scored in
    # windows), which transformers would warn about.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    ids = [int(i) for i in ids]
    if len(ids) < 16:
        raise UsageError(f"{name}: {len(ids)} tokens is too short to measure perplexity")
    return ids[:PPL_TOKENS], name


def build_gguf(
    folder: Path,
    run: Path,
    quant: GgufType,
    ppl_text: Path | None = None,
    *,
    progress: Any = print,
) -> GgufReport:
    """Write `<run>-<quant>.gguf`, its Modelfile and gguf_check.json into `folder` (a
    temporary folder the caller renames into place)."""
    from llmkit.io import interrupt
    from llmkit.models.card import read_card
    from llmkit.models.load import load_tokenizer

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_merged(run).eval()
    tokenizer = load_tokenizer(str(run))
    card = read_card(run)
    # The merged fp32 folder the converter reads (deleted below), named as the run: the
    # converter takes general.name/finetune from the folder's name.
    hf = folder / ".hf" / run.name
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    prepare_for_converter(hf)
    seconds["merge"] = time.perf_counter() - t0
    interrupt.check()

    t0 = time.perf_counter()
    name = f"{run.name}-{quant}.gguf"
    target = folder / name
    reference: Path | None = None
    if quant in CONVERTER_TYPES:
        convert(hf, target, cast(ConverterType, quant), run.name)
    else:
        reference = folder / ".reference-f16.gguf"
        convert(hf, reference, "f16", run.name)
    seconds["convert"] = time.perf_counter() - t0
    interrupt.check()
    if reference is not None:
        t0 = time.perf_counter()
        quantize(reference, target, cast(QuantizerType, quant))
        seconds["quantize"] = time.perf_counter() - t0
    _remove_tree(hf.parent)
    progress(f"wrote {name} ({target.stat().st_size / 2**20:.1f} MiB); checking it in llama.cpp")

    t0 = time.perf_counter()
    ids, text_name = held_out_ids(tokenizer, ppl_text)
    n_ctx = min(N_CTX, int(getattr(model.config, "max_position_embeddings", 0) or N_CTX))
    llm = open_gguf(target, n_ctx)
    agree = agreement(llm, model, tokenizer)
    ppl = perplexity(llm, ids, n_ctx)
    del llm
    ppl_f16 = None
    if reference is not None:
        ref = open_gguf(reference, n_ctx)
        ppl_f16 = perplexity(ref, ids, n_ctx)
        del ref
        reference.unlink()
    seconds["check"] = time.perf_counter() - t0
    report = GgufReport(
        name,
        quant,
        target.stat().st_size,
        agree,
        ppl,
        ppl_f16,
        len(ids),
        text_name,
        {k: round(v, 2) for k, v in seconds.items()},
    )
    write_text(folder / MODELFILE, modelfile(name, card, tokenizer))
    write_json(folder / CHECK_FILE, report.to_json())
    return report


def prepare_for_converter(hf: Path) -> None:
    """The one thing llama.cpp's converter reads that transformers 5 no longer writes: GPT-2's
    `n_ctx` (the converter's gpt2.py reads hparams["n_ctx"]; transformers 5 saves only
    `n_positions`, the same number). And what it cannot express: it writes GPT-2's
    feed-forward width as 4 x n_embd, so a model built with another `n_inner` is refused."""
    from llmkit.io.files import read_json_object

    path = hf / "config.json"
    config = read_json_object(path, "model config")
    if config.get("model_type") != "gpt2":
        return
    width, inner = int(config["n_embd"]), config.get("n_inner")
    if inner is not None and int(inner) != 4 * width:
        raise UsageError(
            f"llama.cpp's GPT-2 has a feed-forward width of 4 x n_embd ({4 * width}); this "
            f"model's is {inner} (model.intermediate_size), which GGUF's gpt2 cannot hold"
        )
    write_json(path, {**config, "n_ctx": config["n_positions"]})


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
