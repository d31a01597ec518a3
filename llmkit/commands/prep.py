"""`llmkit prep`: prepare (and cache) a recipe's data without training; `llmkit prep
tokenizer`: train a tokenizer on files."""

from __future__ import annotations

from pathlib import Path

from llmkit.config.pretrain import PretrainRecipe
from llmkit.config.requests import TokenizerRequest
from llmkit.data.prep import PreparedData, load_tokenizer_for, prepare
from llmkit.errors import UsageError
from llmkit.io.write import check_output


def run_prep(recipe: PretrainRecipe) -> PreparedData:
    tokenizer = load_tokenizer_for(recipe)
    return prepare(recipe, tokenizer, verbose=True)


def run_tokenizer(req: TokenizerRequest) -> None:
    from llmkit.data.tokenizer import train_tokenizer

    if req.output.exists() and (not req.output.is_dir() or any(req.output.iterdir())):
        raise UsageError(f"--output {req.output} is not empty; choose a new folder")
    check_output(req.output, [Path(s) for s in req.sources], folder=True)
    train_tokenizer(
        req.sources,
        req.output,
        kind=req.kind,
        vocab_size=req.vocab_size,
        min_frequency=req.min_frequency,
        text_column=req.field,
    )
