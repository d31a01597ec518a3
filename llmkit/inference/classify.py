"""Sequence classification: a fine-tuned classifier's label and class probabilities per text.

Texts are run longest first in batches of similar length (a batch costs its longest text),
truncated to the length the model was trained with, and returned in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.models.card import read_card, require_kind
from llmkit.models.load import adapter_base, encoder_max_tokens, folder_kind, loading, resolve_ref


@dataclass
class Classifier:
    model: Any
    tokenizer: Any
    labels: list[str]  # class names in id order
    max_tokens: int
    description: str


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # the probability of `label`
    scores: dict[str, float]  # every class, in id order


def load_classifier(ref: str) -> Classifier:
    """A sequence classifier (a full model or a LoRA adapter on its base) in eval mode; other
    kinds of model are refused in one line."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_ref(ref)
    require_kind(ref, folder_kind(ref), ("classifier",), "classification")
    base = adapter_base(path)
    with loading("classifier", ref):
        if base is None:
            model: Any = AutoModelForSequenceClassification.from_pretrained(path)
        else:
            from llmkit.io.files import read_json_object
            from llmkit.models.lora import merge_adapter

            model = merge_adapter(Path(path), read_json_object(Path(path) / "adapter_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    card = read_card(path)
    names = model.config.id2label
    labels = (
        card.labels
        if card is not None and card.labels
        else [str(names[i]) for i in range(len(names))]
    )
    n = sum(p.numel() for p in model.parameters())
    desc = f"{ref} ({type(model).__name__}, {n / 1e6:.1f}M params, {len(labels)} classes)"
    return Classifier(
        model, tokenizer, labels, encoder_max_tokens(Path(path), model, tokenizer), desc
    )


def classify_texts(clf: Classifier, texts: list[str], *, batch_size: int = 32) -> list[Prediction]:
    """One prediction per text, in input order (softmax over the classifier's logits)."""
    import torch

    from llmkit.inference.generate import length_sorted_batches

    probs: list[list[float]] = [[] for _ in texts]
    with torch.inference_mode():
        for idx in length_sorted_batches([len(t) for t in texts], batch_size):
            enc = clf.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=clf.max_tokens,
                return_tensors="pt",
            ).to(clf.model.device)
            batch = clf.model(**enc).logits.float().softmax(dim=-1).cpu().tolist()
            for i, row in zip(idx, batch, strict=True):
                probs[i] = row
    out = []
    for row in probs:
        best = max(range(len(row)), key=row.__getitem__)
        scores = {name: round(p, 6) for name, p in zip(clf.labels, row, strict=True)}
        out.append(Prediction(clf.labels[best], round(row[best], 6), scores))
    return out
