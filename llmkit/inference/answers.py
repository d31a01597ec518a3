"""Answers from a model being trained: greedy, switched to eval mode for the call and back,
for the text2text evaluation at each eval step and the sample answer at the end of a
fine-tune (built on `llmkit.inference.generate`)."""

from __future__ import annotations

from typing import Any

from llmkit.config.decoding import DecodingConfig
from llmkit.inference.generate import generate_with_stats
from llmkit.models.load import LoadedModel

# Answers per generate call during evaluation: on CPU a decode step reads every weight whatever
# the batch, so bigger batches are nearly free (see llmkit eval's batch size).
ANSWER_BATCH = 32


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    stop: list[str] | None = None,
) -> list[str]:
    """Greedy answers to `prompts` (see `answers_with_endings`)."""
    return [a for a, _ in answers_with_endings(model, tokenizer, prompts, max_new_tokens, stop)]


def answers_with_endings(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    stop: list[str] | None = None,
) -> list[tuple[str, bool]]:
    """Greedy answers (prompt text and leading whitespace not included, stopped at the first
    `stop` string once the answer has begun) from a model being trained: switched to eval
    mode for the call and back."""
    was_training = model.training
    model.eval()
    try:
        loaded = LoadedModel(model=model, tokenizer=tokenizer, description="")
        options = DecodingConfig(max_new_tokens=max_new_tokens, do_sample=False)
        out = generate_with_stats(
            loaded, prompts, options, batch_size=ANSWER_BATCH, progress=False, answer_stops=stop
        )
    finally:
        model.train(was_training)
    return [(c[0].strip(), e[0]) for c, e in zip(out.completions, out.ended_at_once, strict=True)]


def sample_answer(model: Any, tokenizer: Any, prompt: str) -> tuple[str, bool]:
    """The greedy answer to one held-out prompt, and whether the model ended it at once."""
    [(answer, at_once)] = answers_with_endings(model, tokenizer, [prompt], 48)
    return answer, at_once
