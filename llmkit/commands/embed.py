"""`llmkit embed FILE --output OUT`: sentence embeddings from a BERT-family encoder
(mean-pooled, L2-normalized: llmkit.inference.embed), as .npy or .jsonl."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from llmkit.config.requests import EmbedRequest
from llmkit.errors import UsageError
from llmkit.io.console import note
from llmkit.io.files import read_texts
from llmkit.io.write import check_output, save_npy, write_jsonl

OUTPUT_SUFFIXES = (".npy", ".jsonl")


def run_embed(req: EmbedRequest) -> None:
    from llmkit.inference.embed import embed_texts
    from llmkit.models.load import load_encoder

    if req.output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {req.output}: use a .npy or .jsonl file name")
    check_output(req.output, [req.file], overwrite=req.overwrite)
    texts = read_texts(req.file, req.field, hint="pick one with --field").texts
    encoder, tokenizer, max_tokens = load_encoder(req.model)
    n_params = sum(p.numel() for p in encoder.parameters())
    note(f"model: {req.model} ({type(encoder).__name__}, {n_params / 1e6:.1f}M params)")
    start = time.perf_counter()
    vectors = embed_texts(
        encoder, tokenizer, texts, batch_size=req.batch_size, max_tokens=max_tokens
    )
    seconds = time.perf_counter() - start
    write_embeddings(req.output, texts, vectors)
    n, dim = vectors.shape
    note(
        f"embedded {n} texts (dim {dim}) in {seconds:.2f} s ({n / seconds:.0f} texts/s) "
        f"-> {req.output}"
    )


def write_embeddings(path: Path, texts: list[str], vectors: np.ndarray) -> None:
    """.npy: the float32 [n, dim] matrix; .jsonl: {"text", "embedding"} per line."""
    if path.suffix.lower() == ".npy":
        save_npy(path, vectors.astype(np.float32))
        return
    rows = (
        {"text": t, "embedding": [round(float(x), 7) for x in v]}
        for t, v in zip(texts, vectors, strict=True)
    )
    write_jsonl(path, rows)
