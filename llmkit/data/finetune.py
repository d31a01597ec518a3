"""A fine-tuning recipe's datasets: rows -> rendered, prompt-masked, tokenized examples
(llmkit.data.examples), the collator, a held-out prompt to show an answer to, and for
text2text the (prompt, reference) pairs generated at each evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.config.finetune import FinetuneRecipe
from llmkit.data import examples
from llmkit.data.collate import IGNORE_INDEX, Examples, SftCollator
from llmkit.errors import UsageError
from llmkit.models.card import PromptFormat, TaskCard


@dataclass
class FinetuneData:
    train: Any
    validation: Any
    collator: Any
    sample_prompt: str | None = None  # one held-out prompt, rendered, to show an answer to
    sample_shown: str = ""  # the same prompt as a person wrote it (the question)
    labels: list[str] | None = None  # classification: class names, id order
    eval_pairs: list[tuple[str, str]] | None = None  # text2text: (prompt, reference)
    # The validation examples as scored, for the run folder: classification {text, label},
    # text2text {source, target} (those answered at each evaluation), sft the rows as read.
    scored_rows: list[dict[str, Any]] | None = None


def build_data(recipe: FinetuneRecipe, tokenizer: Any, *, seq2seq: bool = False) -> FinetuneData:
    """`seq2seq`: an encoder-decoder reads the rendered prompt and is trained on the target
    alone (input_ids / labels of their own lengths); otherwise prompt and answer are one
    prompt-masked sequence."""
    train_rows, val_rows = recipe_rows(recipe)
    cap = recipe.data.max_eval_examples
    if cap and len(val_rows) > cap:
        # An even stride, not the first `cap`: chatterbot's rows come grouped by topic.
        val_rows = val_rows[:: len(val_rows) // cap][:cap]
    if recipe.task == "classification":
        return _classification_data(recipe, tokenizer, train_rows, val_rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if seq2seq:
        from transformers import DataCollatorForSeq2Seq

        if tokenizer.pad_token is None:  # GPT-2's vocabulary has none; EOS pads (and T5
            tokenizer.pad_token = tokenizer.eos_token  # starts each answer from the pad id)

        train: Any = examples.encode_seq2seq(train_rows, recipe, tokenizer, split="train")
        validation: Any = examples.encode_seq2seq(val_rows, recipe, tokenizer, split="validation")
        # Pads inputs with the pad id and labels with -100; T5 makes its decoder inputs by
        # shifting the labels right.
        collator: Any = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
    else:
        train = Examples(examples.encode_rows(train_rows, recipe, tokenizer, split="train"))
        validation = Examples(examples.encode_rows(val_rows, recipe, tokenizer, split="validation"))
        collator = SftCollator(pad_id=int(pad or 0), pack=recipe.packing)
    first = examples.row_segments(val_rows[0], recipe, tokenizer, "validation row 1")
    prompt = "".join(text for text, trained in first[: _first_trained(first)])
    eval_pairs = None
    scored: list[dict[str, Any]] = val_rows
    if recipe.task == "text2text":
        n = recipe.eval.generate_examples or len(val_rows)
        d = recipe.data
        scored = [
            {"source": str(r[d.source_column]), "target": str(r[d.target_column])}
            for r in val_rows[:n]
        ]
        eval_pairs = [(d.template.format(source=r["source"]), r["target"]) for r in scored]
    return FinetuneData(
        train=train,
        validation=validation,
        collator=collator,
        sample_prompt=prompt or None,
        sample_shown=_shown_prompt(val_rows[0], recipe, prompt),
        eval_pairs=eval_pairs,
        scored_rows=scored,
    )


def task_card(recipe: FinetuneRecipe, labels: list[str] | None, *, seq2seq: bool) -> TaskCard:
    """How the fine-tuned model is to be prompted: what `generate`, `eval` and `classify`
    apply to it by default (llmkit.models.card)."""
    d = recipe.data
    if recipe.task == "classification":
        return TaskCard("classification", "classifier", labels=labels)
    if recipe.task == "text2text":
        return TaskCard(
            "text2text",
            "seq2seq" if seq2seq else "causal",
            PromptFormat(template=d.template),
            max_new_tokens=recipe.eval.max_new_tokens,
            stop=list(recipe.eval.stop) or None,
            bleu_tokenize=recipe.eval.bleu_tokenize,
            rouge_tokenize=recipe.eval.rouge_tokenize,
        )
    task = "preference" if recipe.task == "preference" else "sft"
    if d.format == "chat":
        return TaskCard(task, "causal", PromptFormat(chat=True, system=d.system))
    if d.format == "alpaca":
        # What a user types is the instruction (rows without an input get this prompt).
        template = examples.ALPACA_NO_INPUT.replace("{instruction}", "{source}")
        return TaskCard("sft", "causal", PromptFormat(template=template))
    return TaskCard(task, "causal")  # text / prompt_completion: the prompt as it is


def _first_trained(segments: list[tuple[str, bool]]) -> int:
    return next((i for i, (_, trained) in enumerate(segments) if trained), len(segments))


def recipe_rows(recipe: FinetuneRecipe) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    d = recipe.data
    if len(d.sources) == 1 and d.sources[0] in examples.EMBEDDED_ROWS:
        return examples.EMBEDDED_ROWS[d.sources[0]]()
    unknown = [
        s for s in d.sources if s.startswith("embedded:") and s not in examples.EMBEDDED_ROWS
    ]
    if unknown:
        valid = ", ".join(examples.EMBEDDED_ROWS)
        raise UsageError(f"data.sources: unknown embedded dataset '{unknown[0]}' (valid: {valid})")
    if any(s.startswith("embedded:") for s in d.sources):
        raise UsageError(
            "data.sources: an embedded: dataset must be the only source "
            "(it brings its own held-out split)"
        )
    rows = examples.read_rows(d.sources)
    if isinstance(d.validation, str):
        return rows, examples.read_rows([d.validation])
    return examples.hash_split(rows, d.validation)


def _classification_data(
    recipe: FinetuneRecipe, tokenizer: Any, train_rows: list[Any], val_rows: list[Any]
) -> FinetuneData:
    from transformers import DataCollatorWithPadding

    d = recipe.data
    names = sorted(
        {
            examples.label_column(r, d.label_column, f"train row {i + 1}")
            for i, r in enumerate(train_rows)
        }
    )
    if len(names) < 2:
        # One class trains nothing (transformers would even make it a regression, and every
        # prediction would score accuracy 1.000).
        raise UsageError(
            f"data.label_column: the training rows hold {len(names)} label(s) "
            f"({', '.join(names) or 'none'}); classification needs at least 2"
        )
    ids = {name: i for i, name in enumerate(names)}

    scored: list[dict[str, Any]] = []

    def encode(rows: list[Any], split: str) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(rows):
            where = f"{split} row {i + 1}"
            label = examples.label_column(r, d.label_column, where)
            if label not in ids:
                raise UsageError(f"{where}: label '{label}' never occurs in the training rows")
            text = examples.text_column(r, d.text_column, "text_column", where)
            enc = tokenizer(text, truncation=True, max_length=d.max_length)
            out.append({**enc, "labels": ids[label]})
            if split == "validation":
                scored.append({"text": text, "label": label})
        return out

    return FinetuneData(
        train=encode(train_rows, "train"),
        validation=encode(val_rows, "validation"),
        collator=DataCollatorWithPadding(tokenizer),
        labels=names,
        scored_rows=scored,
    )


def _shown_prompt(row: dict[str, Any], recipe: FinetuneRecipe, rendered: str) -> str:
    """The user's words of a chat (not the template around them), else the prompt itself."""
    if recipe.task == "sft" and recipe.data.format == "chat":
        users = [
            m["content"]
            for m in examples.chat_messages(row, recipe.data.messages_column, "")
            if m["role"] == "user"
        ]
        return users[0] if users else rendered
    return rendered.strip()
