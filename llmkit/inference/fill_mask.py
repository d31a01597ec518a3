"""Fill `[MASK]` with a masked LM (BERT): the top-k tokens and their probabilities per mask.

`llmkit generate` on a BERT run, prompt "to be or not to [MASK] .", prints for each mask its k
most likely tokens. Several masks in one prompt are predicted together in one forward pass,
each from the others still masked (BERT's own training setup), not one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.errors import UsageError

DEFAULT_TOP_K = 5
MASK = "[MASK]"  # what users type; a tokenizer whose mask is spelled otherwise (<mask>) gets it


@dataclass(frozen=True)
class Fill:
    token: str  # the token as text (a WordPiece continuation keeps its ##)
    probability: float


def masked_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt with the tokenizer's own mask spelling; one line if it has no mask."""
    mask = tokenizer.mask_token
    if mask is None:
        raise UsageError("the model's tokenizer has no mask token: it is not a masked LM")
    text = prompt.replace(MASK, mask) if mask != MASK else prompt
    if mask not in text:
        raise UsageError(
            f"the prompt has no {mask} to fill: a masked LM predicts the token at each {mask} "
            f'(e.g. "to be or not to {mask} .")'
        )
    return text


def fill_masks(model: Any, tokenizer: Any, prompt: str, top_k: int) -> list[list[Fill]]:
    """For each mask in `prompt`, in order: its top_k fills, most likely first."""
    import torch

    text = masked_prompt(tokenizer, prompt)
    limit = model.config.max_position_embeddings
    enc = tokenizer(text, return_tensors="pt")
    if enc["input_ids"].shape[1] > limit:
        raise UsageError(
            f"the prompt is {enc['input_ids'].shape[1]} tokens; the model reads at most {limit}"
        )
    with torch.no_grad():
        logits = model(**enc).logits[0]
    at = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    probs = torch.softmax(logits[at].float(), dim=-1)
    # Rows past the tokenizer (the embedding is padded to a multiple of 64) are never words.
    probs[:, len(tokenizer) :] = 0.0
    k = min(top_k, len(tokenizer))
    best = probs.topk(k, dim=-1)
    return [
        [
            Fill(tokenizer.convert_ids_to_tokens(int(i)), float(p))
            for p, i in zip(values, indices, strict=True)
        ]
        for values, indices in zip(best.values, best.indices, strict=True)
    ]


def fills_json(fills: list[list[Fill]]) -> list[list[dict[str, Any]]]:
    return [[{"token": f.token, "probability": round(f.probability, 6)} for f in m] for m in fills]


def fills_text(fills: list[list[Fill]]) -> str:
    """One line per mask: `[MASK] 1: be 0.412  do 0.101 ...`."""
    lines = []
    for n, options in enumerate(fills, start=1):
        label = f"{MASK} {n}:" if len(fills) > 1 else f"{MASK}:"
        lines.append(label + "".join(f"  {f.token} {f.probability:.3f}" for f in options))
    return "\n".join(lines)
