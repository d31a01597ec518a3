"""Preference rows -> the text TRL's trainers read, checked in one pass.

Rows are paired (`prompt`, `chosen`, `rejected`) or, for KTO, unpaired (`prompt`,
`completion`, `label`: true = desirable). Each of prompt/chosen/rejected/completion is text
or a list of chat messages (OpenAI role/content or ShareGPT from/value).

With `data.format: chat` (the default) every row goes through the tokenizer's chat template
exactly as SFT's chat rows do (llmkit.data.examples.chat_segments): the prompt is the rendered
chat up to "<|im_start|>assistant\\n", the answer is the assistant turn up to its end-of-turn
token, so a preference run continues an SFT run without a format change. With
`data.format: prompt_completion` text is used as it is (TRL appends EOS to each answer).

Every problem in every row is collected before anything is tokenized for training, and
reported together (one line each): missing or non-text fields, chosen identical to rejected,
prompts that fill `data.max_length` on their own (TRL would drop them silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.data import examples
from llmkit.errors import UsageError

Row = dict[str, Any]
MAX_LISTED = 20  # problems shown in full; the rest are counted


@dataclass
class PreferenceData:
    train: Any  # datasets.Dataset with prompt/chosen/rejected (KTO: prompt/completion/label)
    validation: Any
    sample_prompt: str  # one held-out prompt, rendered, to show an answer to
    sample_shown: str  # the same prompt as a person wrote it
    pairs: list[Row]  # the held-out pairs as read (prompt/chosen/rejected)


def build_preference_data(recipe: Any, tokenizer: Any, method: str) -> PreferenceData:
    """Read, check and render the recipe's rows; KTO gets each pair as two unpaired rows."""
    from datasets import Dataset

    from llmkit.data.finetune import recipe_rows

    train_rows, val_rows = recipe_rows(recipe)
    cap = recipe.data.max_eval_examples
    if cap and len(val_rows) > cap:
        val_rows = val_rows[:: len(val_rows) // cap][:cap]  # even stride: rows come by topic
    problems: list[str] = []
    train = render_rows(train_rows, recipe, tokenizer, "train", problems)
    validation = render_rows(val_rows, recipe, tokenizer, "validation", problems)
    if problems:
        shown = problems[:MAX_LISTED]
        if len(problems) > MAX_LISTED:
            shown.append(f"... and {len(problems) - MAX_LISTED} more problems")
        raise UsageError(shown[0], problems=shown)
    d, p = recipe.data, recipe.preference
    # The held-out pairs as written (text or messages), for validation.jsonl: `llmkit eval`
    # of the run renders them again for whichever model it scores.
    paired = [
        {
            "prompt": r[d.prompt_column],
            "chosen": r[p.chosen_column],
            "rejected": r[p.rejected_column],
        }
        for r in val_rows
        if p.chosen_column in r
    ]
    if method == "kto":
        train, validation = unpair(train), unpair(validation)
    elif len(paired) < len(validation) or any("chosen" not in r for r in train):
        raise UsageError(
            f"preference.method {method}: needs prompt/chosen/rejected pairs; unpaired "
            "prompt/completion/label rows are for kto"
        )
    question = val_rows[0].get(recipe.data.prompt_column)
    return PreferenceData(
        train=Dataset.from_list(train),
        validation=Dataset.from_list(validation),
        sample_prompt=validation[0]["prompt"],
        sample_shown=question if isinstance(question, str) else validation[0]["prompt"],
        pairs=paired,
    )


def render_rows(
    rows: list[Row], recipe: Any, tokenizer: Any, split: str, problems: list[str]
) -> list[Row]:
    """Each row rendered to strings; problems are appended (never raised) so that one pass
    lists them all."""
    p = recipe.preference
    d = recipe.data
    max_length = d.max_length
    out: list[Row] = []
    for i, row in enumerate(rows, 1):
        where = f"{split} row {i}"
        if not isinstance(row, dict):
            problems.append(f"{where}: not an object with named fields")
            continue
        paired = p.chosen_column in row or p.rejected_column in row
        names = (
            [d.prompt_column, p.chosen_column, p.rejected_column]
            if paired
            else [d.prompt_column, d.completion_column, d.label_column]
        )
        missing = [n for n in names if row.get(n) in (None, "", [])]
        if missing:
            valid = (
                f"{d.prompt_column}/{p.chosen_column}/{p.rejected_column} (pairs) or "
                f"{d.prompt_column}/{d.completion_column}/{d.label_column} (kto)"
            )
            problems.append(f"{where}: missing {', '.join(missing)} (rows need {valid})")
            continue
        try:
            if paired:
                prompt, chosen = render(row[d.prompt_column], row[p.chosen_column], d, tokenizer)
                prompt2, rejected = render(
                    row[d.prompt_column], row[p.rejected_column], d, tokenizer
                )
                if prompt2 != prompt:
                    raise UsageError("chosen and rejected continue different prompts")
                if chosen.strip() == rejected.strip():
                    problems.append(f"{where}: chosen and rejected are identical")
                    continue
                rendered: Row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            else:
                label = row[d.label_column]
                if not isinstance(label, bool):
                    raise UsageError(
                        f"{d.label_column} must be true (desirable) or false, got {label!r:.40}"
                    )
                prompt, completion = render(
                    row[d.prompt_column], row[d.completion_column], d, tokenizer
                )
                rendered = {"prompt": prompt, "completion": completion, "label": label}
        except UsageError as e:
            problems.append(f"{where}: {e.message}")
            continue
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n_prompt >= max_length:
            problems.append(
                f"{where}: the prompt alone is {n_prompt} tokens, data.max_length is "
                f"{max_length} (no answer token would be trained)"
            )
            continue
        out.append(rendered)
    return out


def render(prompt: Any, answer: Any, data: Any, tokenizer: Any) -> tuple[str, str]:
    """(prompt text, answer text) for one prompt and one answer, each text or messages."""
    prompt_msgs = _messages(prompt, "user", "prompt")
    answer_msgs = _messages(answer, "assistant", "answer")
    if data.format == "prompt_completion":
        if len(prompt_msgs) > 1 or len(answer_msgs) > 1:
            raise UsageError("data.format prompt_completion takes text; use format chat")
        return prompt_msgs[0]["content"], answer_msgs[0]["content"]
    if data.format != "chat":
        raise UsageError(
            f"data.format {data.format}: preference rows use chat or prompt_completion"
        )
    if [m["role"] for m in answer_msgs] != ["assistant"]:
        raise UsageError("an answer must be one assistant turn")
    segments = examples.chat_segments(tokenizer, prompt_msgs + answer_msgs, data.system)
    *before, (answer_text, trained) = segments
    assert trained  # chat_segments ends on the assistant turn it was given last
    # The turn's text ends "<|im_end|>\n": TRL appends EOS to an answer that does not end
    # with it, so the newline after the end-of-turn token is left out (generation stops at
    # the token anyway).
    eos = tokenizer.eos_token or ""
    if eos and answer_text.rstrip("\n").endswith(eos):
        answer_text = answer_text.rstrip("\n")
    return "".join(text for text, _ in before), answer_text


def _messages(value: Any, role: str, what: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and role == "user":
        return examples.chat_turns(value, what)  # a prompt: no assistant turn needed
    if isinstance(value, list) and value:  # an answer: its turns must include the assistant's
        return examples.chat_messages({what: value}, what, what)
    raise UsageError(f"{what} must be text or a list of chat messages, got {value!r:.40}")


def unpair(rows: list[Row]) -> list[Row]:
    """KTO's rows: each pair becomes a desirable and an undesirable completion."""
    out: list[Row] = []
    for r in rows:
        if "chosen" in r:
            out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
            out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
        else:
            out.append(r)
    return out
