"""`llmkit embed`: sentence embeddings from a BERT-family encoder.

Pooling is what all-MiniLM-L6-v2 was trained with (its 1_Pooling/config.json says
`pooling_mode_mean_tokens`): the mean of the last hidden states over real tokens (the
attention mask keeps padding out), then L2 normalization, so cosine similarity is a dot product.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.errors import UsageError

DEFAULT_ENCODER = "embedded:minilm"
OUTPUT_SUFFIXES = (".npy", ".jsonl")


def load_encoder(ref: str = DEFAULT_ENCODER) -> tuple[Any, Any, int]:
    """(model, tokenizer, max_tokens) for an encoder folder, in eval mode."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from llmkit.models import resolve_ref

    hf_logging.disable_progress_bar()
    path = resolve_ref(ref)
    try:
        model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load encoder {ref}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, tokenizer, _max_tokens(Path(path), model, tokenizer)


def _max_tokens(path: Path, model: Any, tokenizer: Any) -> int:
    """Truncation length: sentence-transformers' max_seq_length when the folder has one
    (256 for all-MiniLM-L6-v2: it was trained on that), else the position table (512)."""
    st_config = path / "sentence_bert_config.json"
    if st_config.exists():
        length = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(length, int) and length > 0:
            return length
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min(int(x) for x in limits if isinstance(x, int) and x > 0)


def embed_texts(
    model: Any, tokenizer: Any, texts: list[str], *, batch_size: int = 32, max_tokens: int = 512
) -> np.ndarray:
    """float32 [len(texts), hidden] unit vectors, in input order.

    Texts are embedded longest first in batches of similar length: a batch costs its longest
    text, so sorting cuts padding (and a batch's padding never changes a mean: it is masked).
    """
    import torch

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    hidden = int(model.config.hidden_size)
    out = np.zeros((len(texts), hidden), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
            ).to(model.device)
            states = model(**enc).last_hidden_state  # [batch, tokens, hidden]
            out[idx] = mean_pool_normalized(states, enc["attention_mask"]).float().cpu().numpy()
    return out


def mean_pool_normalized(states: Any, mask: Any) -> Any:
    """[batch, tokens, hidden] x [batch, tokens] -> [batch, hidden], each row of norm 1."""
    import torch

    weights = mask.unsqueeze(-1).to(states.dtype)  # [batch, tokens, 1]
    summed = (states * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


def run_embed(
    file: Path,
    output: Path,
    *,
    model: str = DEFAULT_ENCODER,
    field: str | None = None,
    batch_size: int = 32,
) -> None:
    from llmkit.commands.generate import read_text_records

    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {output}: use a .npy or .jsonl file name")
    _, texts = read_text_records(file, field, default_field="text")
    encoder, tokenizer, max_tokens = load_encoder(model)
    n_params = sum(p.numel() for p in encoder.parameters())
    _note(f"model: {model} ({type(encoder).__name__}, {n_params / 1e6:.1f}M params)")
    start = time.perf_counter()
    vectors = embed_texts(encoder, tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens)
    seconds = time.perf_counter() - start
    write_embeddings(output, texts, vectors)
    n, dim = vectors.shape
    _note(
        f"embedded {n} texts (dim {dim}) in {seconds:.2f} s ({n / seconds:.0f} texts/s) -> {output}"
    )


def write_embeddings(path: Path, texts: list[str], vectors: np.ndarray) -> None:
    """.npy: the float32 matrix; .jsonl: {"text", "embedding"} per line. Written to a temp
    file and renamed, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    if path.suffix.lower() == ".npy":
        np.save(tmp, vectors.astype(np.float32))
    else:
        with tmp.open("w", encoding="utf-8") as f:
            for text, vec in zip(texts, vectors, strict=True):
                row = {"text": text, "embedding": [round(float(x), 7) for x in vec]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
