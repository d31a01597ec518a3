"""Sentence embeddings from a BERT-family encoder.

Pooling is what all-MiniLM-L6-v2 was trained with (its 1_Pooling/config.json says
`pooling_mode_mean_tokens`): the mean of the last hidden states over real tokens (the
attention mask keeps padding out), then L2 normalization, so cosine similarity is a dot product.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def embed_texts(
    model: Any, tokenizer: Any, texts: list[str], *, batch_size: int = 32, max_tokens: int = 512
) -> np.ndarray:
    """float32 [len(texts), hidden] unit vectors, in input order.

    Texts are embedded longest first in batches of similar length: a batch costs its longest
    text, so sorting cuts padding (and a batch's padding never changes a mean: it is masked).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
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
