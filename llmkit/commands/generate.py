"""`llmkit generate`: complete one prompt, stdin, or a file of prompts with a causal LM.

Everything cheap is checked before the model loads (seconds): options (model
generation_config < --recipe < flags), prompts, and flag combinations. Completions go to
stdout (or --output as JSONL); status lines go to stderr, so stdout is pipe- and --json-safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmkit.config.decoding import DecodingConfig, layered
from llmkit.config.inference import GenerateRequest
from llmkit.errors import UsageError
from llmkit.inference.generate import (
    ENDED_AT_ONCE,
    GenerationResult,
    answer_stops_for,
    generate_with_stats,
)
from llmkit.inference.resumable import check_resumable, generate_to_jsonl
from llmkit.inference.stops import make_streamer
from llmkit.io.console import note
from llmkit.io.files import read_stdin, read_texts
from llmkit.io.runs import hold_writer_lock
from llmkit.io.write import check_output
from llmkit.models.card import RAW, PromptFormat, prompt_format_for
from llmkit.models.load import LoadedModel, folder_kind

DEFAULT_PROMPT = "Once upon a time"


def run_generate(req: GenerateRequest) -> None:
    """Validate everything cheap first, then load the model once and generate."""
    from llmkit.models.load import DEFAULT_CAUSAL_LM, load_generator

    prompts, records = _collect_prompts(req)
    if req.model is not None and folder_kind(req.model) == "masked":
        return _fill_masks(req, prompts, records)
    options = layered(req.recipe, req.decoding())
    _check_modes(req, options)
    if req.output is not None:
        check_output(req.output, [req.input, req.recipe], overwrite=req.overwrite)
        hold_writer_lock(req.output)
        check_resumable(req.output, resume=req.resume)
    elif req.resume:
        raise UsageError("--resume continues an --input/--output job: give both")
    loaded = load_generator(req.model or DEFAULT_CAUSAL_LM, trust_remote_code=req.trust_remote_code)
    note(f"model: {loaded.description}")
    fmt = prompt_format_for(loaded.card, chat=req.chat, template=req.template, system=req.system)
    job = Job(loaded, fmt, answer_stops_for(loaded, options))
    if loaded.card is not None or fmt != RAW:
        own = loaded.card is not None and fmt == loaded.card.prompt
        note(f"prompt format: {fmt.describe()}{' (as the run was trained)' if own else ''}")
    if req.input is None:
        _generate_one(job, prompts[0], options, req)
    else:
        _generate_file(job, prompts, records, options, req)


def _fill_masks(req: GenerateRequest, prompts: list[str], records: list[dict[str, Any]]) -> None:
    """A masked LM (a BERT run) fills each [MASK] with its top-k tokens instead of continuing
    the prompt: a line per mask, or with --input/--json one JSON object per prompt."""
    from llmkit.inference.fill_mask import (
        DEFAULT_TOP_K,
        fill_masks,
        fills_json,
        fills_text,
        masked_prompt,
    )
    from llmkit.models.load import load_masked_lm, load_tokenizer

    if req.output is not None or req.stream or req.resume:
        raise UsageError("a masked LM fills [MASK] on stdout: drop --output/--stream/--resume")
    assert req.model is not None
    words = load_tokenizer(req.model)
    for prompt in prompts:  # every prompt checked before the model loads
        masked_prompt(words, prompt)
    model, tokenizer, description = load_masked_lm(req.model)
    note(f"model: {description}")
    k = req.top_k or DEFAULT_TOP_K
    fills = [fill_masks(model, tokenizer, p, k) for p in prompts]  # all filled, then printed
    for record, filled in zip(records, fills, strict=True):
        if req.input is not None or req.json_:
            print(json.dumps({**record, "fills": fills_json(filled)}, ensure_ascii=False))
        else:
            print(fills_text(filled))


@dataclass(frozen=True)
class Job:
    loaded: LoadedModel
    fmt: PromptFormat
    answer_stops: list[str] | None  # a text2text run's answers end at these once begun


def _collect_prompts(req: GenerateRequest) -> tuple[list[str], list[dict[str, Any]]]:
    if req.input is not None:
        if req.prompt is not None:
            raise UsageError("give either a PROMPT or --input FILE, not both")
        read = read_texts(
            req.input, req.field, candidates=("prompt",), hint="pick one with --field"
        )
        return read.texts, read.records
    if req.field is not None or req.output is not None:
        raise UsageError("--field and --output go with --input FILE")
    if req.prompt is None:  # every command runs with no arguments (README): a demo prompt
        note(f"prompt: {DEFAULT_PROMPT} (the default; give a PROMPT, '-' for stdin, or --input)")
    prompt = DEFAULT_PROMPT if req.prompt is None else req.prompt
    prompt = read_stdin() if prompt == "-" else prompt
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return [prompt], [{"prompt": prompt}]


def _check_modes(req: GenerateRequest, options: DecodingConfig) -> None:
    """Flag clashes found before the model loads (seconds) rather than after."""
    if req.system is not None and req.chat is False:
        raise UsageError("--system is part of a chat template: drop --no-chat or --system")
    if not req.stream:
        return
    if req.input is not None or req.json_:
        raise UsageError("--stream prints one completion as it comes: drop --input/--json")
    if (options.num_beams or 1) > 1 or (options.num_return_sequences or 1) > 1:
        raise UsageError("--stream needs one sequence: drop --num-beams/--num-return-sequences")


def _generate_one(job: Job, prompt: str, options: DecodingConfig, req: GenerateRequest) -> None:
    loaded = job.loaded
    stops = options.stop or job.answer_stops or []
    streamer = make_streamer(loaded.tokenizer, stops) if req.stream else None
    result = generate_with_stats(
        loaded,
        [prompt],
        options,
        prompt_format=job.fmt,
        answer_stops=job.answer_stops,
        progress=False,
        streamer=streamer,
    )
    completions = result.completions[0]
    if req.json_:
        print(json.dumps(_json_record({"prompt": prompt}, completions, loaded, result)))
    elif not req.stream:
        _print_completions(completions)
    _note_ended_at_once(result, completions)
    note(_speed(result.new_tokens, result.seconds))


def _note_ended_at_once(result: GenerationResult, completions: list[str] | None = None) -> None:
    """An empty answer is not left unexplained: say the model ended it at once (EOS first),
    as an undertrained model does, rather than print nothing. `completions`: one prompt's."""
    if completions is not None:
        flags = result.ended_at_once[0] if result.ended_at_once else []
        empty = sum(f and not c for f, c in zip(flags, completions, strict=False))
        total = len(flags)
    else:
        empty = result.n_ended_at_once()
        total = sum(len(row) for row in result.ended_at_once)
    if empty and total == 1:
        note(f"note: the answer is empty: {ENDED_AT_ONCE}")
    elif empty:
        note(f"note: {empty} of {total} answers are empty: {ENDED_AT_ONCE}")


def _print_completions(completions: list[str]) -> None:
    if len(completions) == 1:
        print(completions[0])
        return
    for k, text in enumerate(completions, start=1):
        print(f"--- {k}/{len(completions)} ---")
        print(text)


def _generate_file(
    job: Job,
    prompts: list[str],
    records: list[dict[str, Any]],
    options: DecodingConfig,
    req: GenerateRequest,
) -> None:
    loaded = job.loaded
    kwargs: dict[str, Any] = {
        "batch_size": req.batch_size,
        "prompt_format": job.fmt,
        "answer_stops": job.answer_stops,
    }
    if req.output is None:  # stdout, in input order
        result = generate_with_stats(loaded, prompts, options, **kwargs)
        for record, c in zip(records, result.completions, strict=True):
            print(json.dumps(_row(record, c), ensure_ascii=False))
        _note_ended_at_once(result)
        new_tokens, seconds = result.new_tokens, result.seconds
    else:
        rows, new_tokens, seconds = generate_to_jsonl(
            loaded, prompts, records, options, req.output, _row, resume=req.resume, **kwargs
        )
        note(f"wrote {len(rows)} lines to {req.output}")
    note(f"{_speed(new_tokens, seconds)}, batch size {req.batch_size}")


def _row(record: dict[str, Any], completions: list[str]) -> dict[str, Any]:
    return {**record, "completion": completions[0], "completions": completions}


def _json_record(
    record: dict[str, Any], completions: list[str], loaded: LoadedModel, result: GenerationResult
) -> dict[str, Any]:
    return {
        **record,
        "completion": completions[0],
        "completions": completions,
        "model": loaded.description,
        "new_tokens": result.new_tokens,
        "seconds": round(result.seconds, 3),
    }


def _speed(new_tokens: int, seconds: float) -> str:
    rate = new_tokens / seconds if seconds > 0 else 0.0
    return f"{new_tokens} new tokens in {seconds:.2f} s ({rate:.1f} tokens/s)"
