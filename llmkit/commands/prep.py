"""`llmkit prep`: prepare (and cache) a recipe's data without training."""

from __future__ import annotations

from llmkit.config.schema import Recipe
from llmkit.data.prep import PreparedData, load_tokenizer_for, prepare


def run_prep(recipe: Recipe) -> PreparedData:
    tokenizer = load_tokenizer_for(recipe)
    return prepare(recipe, tokenizer, verbose=True)
