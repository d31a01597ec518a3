"""Generation: decoding options -> one GenerationConfig -> length-sorted, left-padded batches
-> `model.generate` -> completions in input order, cut at the first stop string.

`generate_texts` is the entry point for commands (`generate`, `eval`) and for evaluation
during fine-tuning (`llmkit.inference.answers`). Nothing runs per token in Python except the
streamer, and only when streaming.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmkit.config.decoding import SAMPLING_FIELDS, DecodingConfig
from llmkit.errors import UsageError
from llmkit.inference.stops import AnswerStop, GeneratedStop, cut_at_stop, without_stop_strings
from llmkit.io.console import ProgressBar
from llmkit.models.card import RAW, PromptFormat
from llmkit.models.load import LoadedModel

# When neither the model's generation_config nor the user names a length, transformers stops
# at max_length=20 tokens *including* the prompt: a 15-token prompt would get 5 new tokens.
# 128 new tokens is ~9 s for SmolLM2-135M on 2 CPU cores (~15 tokens/s at batch 1).
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class GenerationResult:
    completions: list[list[str]]  # per prompt, in input order: num_return_sequences strings
    new_tokens: int  # tokens generated over all sequences, padding after EOS excluded
    seconds: float
    # Per prompt, per sequence: the model's first new token was EOS, so the answer is empty
    # because the model ended it at once (an undertrained T5 does; not a bug in llmkit).
    ended_at_once: list[list[bool]] = field(default_factory=list)

    def n_ended_at_once(self) -> int:
        return sum(sum(row) for row in self.ended_at_once)


ENDED_AT_ONCE = "the model ended its answer at once (its first new token was EOS)"


# --- decoding options -> transformers GenerationConfig ------------------------------------


def generation_config_for(loaded: LoadedModel, options: DecodingConfig) -> Any:
    """The model's generation_config with the set options on top, checked as a whole."""
    import copy

    config = copy.deepcopy(loaded.model.generation_config)
    try:
        config.update(**_hf_updates(options))  # transformers 5.24 validates as it updates
    except ValueError as e:
        raise UsageError(f"decoding options: {str(e).strip().splitlines()[0]}") from None
    if config.max_new_tokens is None and config.max_length is None:
        config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    if config.pad_token_id is None:
        config.pad_token_id = pad_token_id(loaded.tokenizer)
    _check_combination(config)
    return config


def _hf_updates(options: DecodingConfig) -> dict[str, Any]:
    """DecodingConfig fields under their transformers names; seed is applied separately."""
    updates = options.is_set()
    updates.pop("seed", None)
    sample = options.sampling_implied()
    if sample is not None:
        updates["do_sample"] = sample
    if sample is False:
        # Greedy (do_sample false) beats a recipe's temperature: drop the knobs rather than let
        # transformers warn that they are ignored.
        for name in SAMPLING_FIELDS:
            updates.pop(name, None)
    # Carried as stop_strings, but every generate call takes them out (`without_stop_strings`)
    # and matches them itself: see `llmkit.inference.stops.GeneratedStop` for why.
    if "stop" in updates:
        updates["stop_strings"] = updates.pop("stop")
    return updates


def _check_combination(config: Any) -> None:
    beams = config.num_beams or 1
    n = config.num_return_sequences or 1
    if not config.do_sample and n > beams:
        raise UsageError(
            f"num_return_sequences={n} needs sampling or num_beams >= {n}: "
            "greedy decoding gives one answer per prompt"
        )
    try:
        config.validate()
    except ValueError as e:
        raise UsageError(f"decoding options: {str(e).splitlines()[0]}") from None


def pad_token_id(tokenizer: Any) -> int:
    """The pad id for left padding: the tokenizer's, else EOS (GPT-2 has no pad token)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0  # masked out anyway; without an EOS, rows never finish early


# --- prompts -> token ids -> batches ----------------------------------------------------------


def encode_prompts(tokenizer: Any, prompts: list[str], fmt: PromptFormat = RAW) -> list[list[int]]:
    """Token ids per prompt, unpadded, rendered by `fmt`: through its text template, then
    (with chat) as the user turn of the chat template."""
    texts = [fmt.apply_template(p) for p in prompts]
    if fmt.chat:
        texts = [_chat_text(tokenizer, t, fmt.system) for t in texts]
        # The template already holds BOS and role markers: adding special tokens would double them.
        ids: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(texts)["input_ids"]
    empty = [i + 1 for i, row in enumerate(ids) if not row]
    if empty:
        raise UsageError(f"prompt {empty[0]} is empty: there is nothing to continue")
    return ids


def _chat_text(tokenizer: Any, prompt: str, system: str | None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "this model's tokenizer has no chat template (an instruction-tuned model such as "
            "embedded:smollm2 has one): continue the raw text instead"
        )
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja2 TemplateError, e.g. a template that rejects system turns
        raise UsageError(f"the chat template failed: {e}") from None
    return str(text)


def context_size(model: Any) -> int | None:
    """Positions the model can attend over (prompt + answer), if its config says."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(limit) if limit else None


def check_context(model: Any, ids: list[list[int]], max_new_tokens: int | None) -> None:
    """Refuse prompts that cannot fit: past the position table a GPT-2 fails mid-batch."""
    limit = context_size(model)
    if not limit or max_new_tokens is None:
        return
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    if len(ids[longest]) + max_new_tokens > limit:
        raise UsageError(
            f"prompt {longest + 1} is {len(ids[longest])} tokens; with max_new_tokens="
            f"{max_new_tokens} it exceeds the model's context of {limit} tokens"
        )


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped in batches, longest prompts first.

    Similar lengths share a batch, so little compute goes to padding (a batch of 8 with one
    200-token prompt among 10-token ones would run ~20x the tokens it needs), and the
    biggest batch runs first, so an out-of-memory shows up in seconds, not at the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep order
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask), both [batch, longest]. Decoder-only models continue from
    the last position, so padding must go on the left."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return input_ids, mask


# --- generation ----------------------------------------------------------------------------


def answer_stops_for(loaded: LoadedModel, options: DecodingConfig) -> list[str] | None:
    """A text2text run answers one line and then rambles (it was trained to end at EOS but
    stops there rarely after few steps): stop it as its training evaluation did, unless the
    user gave their own stop strings."""
    card = loaded.card
    if card is None or not card.stop or options.stop is not None:
        return None
    return card.stop


def generate_texts(
    loaded: LoadedModel, prompts: list[str], options: DecodingConfig, **kwargs: Any
) -> list[list[str]]:
    """Completions only (no prompt text), in input order: one list of
    num_return_sequences strings per prompt. Options as `generate_batches`."""
    return generate_with_stats(loaded, prompts, options, **kwargs).completions


def generate_with_stats(
    loaded: LoadedModel, prompts: list[str], options: DecodingConfig, **kwargs: Any
) -> GenerationResult:
    """`generate_texts` plus token count and time (options as `generate_batches`; a
    `streamer` needs a single prompt)."""
    completions: list[list[str]] = [[] for _ in prompts]
    ended: list[list[bool]] = [[] for _ in prompts]
    new_tokens = 0
    start = time.perf_counter()
    for indices, texts, n, at_once in generate_batches(loaded, prompts, options, **kwargs):
        for i, completion, flags in zip(indices, texts, at_once, strict=True):
            completions[i] = completion
            ended[i] = flags
        new_tokens += n
    return GenerationResult(completions, new_tokens, time.perf_counter() - start, ended)


def generate_batches(
    loaded: LoadedModel,
    prompts: list[str],
    options: DecodingConfig,
    *,
    batch_size: int = 8,
    prompt_format: PromptFormat = RAW,
    done: Collection[int] = (),
    progress: bool = True,
    streamer: Any = None,
    answer_stops: list[str] | None = None,
) -> Iterator[tuple[list[int], list[list[str]], int, list[list[bool]]]]:
    """(prompt indices, their completions, new tokens, whether each completion ended at once
    with EOS) per batch as each finishes, skipping batches whose prompts are all `done` (a
    resumed job).

    Every prompt is encoded and checked against the context first, so a bad one fails before
    any generation. Batches are fixed by the prompts and the batch size alone, and with a seed
    batch k samples from seed + k: a job resumed at any batch gives exactly what one run
    through would have.
    """
    import torch

    config = generation_config_for(loaded, options)
    ids = encode_prompts(loaded.tokenizer, prompts, prompt_format)
    if not loaded.is_encoder_decoder:  # an encoder's input does not share the answer's positions
        check_context(loaded.model, ids, config.max_new_tokens)
    batches = length_sorted_batches([len(r) for r in ids], batch_size)
    finished = set(done)
    bar = ProgressBar("generating", len(prompts), enabled=progress and len(batches) > 1)
    bar(len(finished & set(range(len(prompts)))))
    with torch.inference_mode(), bar:
        for k, batch in enumerate(batches):
            if all(i in finished for i in batch):
                continue
            if options.seed is not None:
                torch.manual_seed(options.seed + k)  # seeds CPU and every CUDA device
            rows = [ids[i] for i in batch]
            texts, n, ended = _generate_batch(loaded, rows, config, streamer, answer_stops)
            per_prompt = len(texts) // len(batch)  # n sequences per row, grouped
            yield (
                batch,
                [texts[j * per_prompt : (j + 1) * per_prompt] for j in range(len(batch))],
                n,
                [ended[j * per_prompt : (j + 1) * per_prompt] for j in range(len(batch))],
            )
            bar(len(batch), tokens=n)


def _generate_batch(
    loaded: LoadedModel,
    rows: list[list[int]],
    config: Any,
    streamer: Any,
    answer_stops: list[str] | None = None,
) -> tuple[list[str], int, list[bool]]:
    from transformers import StoppingCriteriaList

    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids, mask = left_pad(rows, config.pad_token_id)
    device = model.device
    config, stops = without_stop_strings(config)
    start = 1 if loaded.is_encoder_decoder else input_ids.shape[1]
    criteria = StoppingCriteriaList()
    if answer_stops:
        criteria.append(AnswerStop(tokenizer, answer_stops, start))
    elif stops:
        criteria.append(GeneratedStop(tokenizer, stops, start))
    try:
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            streamer=streamer,
            stopping_criteria=criteria,
        )
    except ValueError as e:  # generate's own checks of an option combination
        raise UsageError(f"decoding options: {str(e).strip().splitlines()[0]}") from None
    # A decoder-only model returns prompt + answer; an encoder-decoder only the decoder's
    # tokens, which begin with its start token (T5: the pad id, dropped when counting).
    new = out[:, 1:] if loaded.is_encoder_decoder else out[:, input_ids.shape[1] :]
    n_tokens = int((new != config.pad_token_id).sum())
    eos = config.eos_token_id
    eos_ids = {e for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
    firsts = new[:, 0].tolist() if new.shape[1] else [None] * len(new)
    ended = [t in eos_ids for t in firsts]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    if answer_stops:
        return [cut_at_stop(t.lstrip(), answer_stops) for t in texts], n_tokens, ended
    return [cut_at_stop(t, stops) for t in texts], n_tokens, ended
