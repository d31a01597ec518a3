"""`llmkit generate`: complete one prompt, stdin, or a file of prompts with a causal LM.

Flow: options (model generation_config < recipe < flags) -> one GenerationConfig -> prompts
tokenized once -> length-sorted, left-padded batches -> `model.generate` -> completions put
back in input order, cut at the first stop string.

`generate_texts` is the reusable entry point (`llmkit eval` calls it); `run_generate` is the
command. Nothing runs per token in Python except the streamer, and only with `--stream`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmkit.config.decoding import (
    SAMPLING_FIELDS,
    DecodingConfig,
    decoding_from_mapping,
    load_decoding_from_yaml,
)
from llmkit.data.records import has_field, read_records, read_text
from llmkit.errors import UsageError
from llmkit.models import LoadedModel

# When neither the model's generation_config nor the user names a length, transformers stops
# at max_length=20 tokens *including* the prompt: a 15-token prompt would get 5 new tokens.
# 128 new tokens is ~9 s for SmolLM2-135M on 2 CPU cores (~15 tokens/s at batch 1).
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class GenerationResult:
    completions: list[list[str]]  # per prompt, in input order: num_return_sequences strings
    new_tokens: int  # tokens generated over all sequences, padding after EOS excluded
    seconds: float


# --- decoding options -> transformers GenerationConfig ------------------------------------


def generation_config_for(loaded: LoadedModel, options: DecodingConfig) -> Any:
    """The model's generation_config with the set options on top, checked as a whole."""
    import copy

    config = copy.deepcopy(loaded.model.generation_config)
    config.update(**_hf_updates(options))
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
        # --greedy beats a recipe's temperature: drop the knobs instead of letting
        # transformers warn that they are ignored.
        for name in SAMPLING_FIELDS:
            updates.pop(name, None)
    if "stop" in updates:
        updates["stop_strings"] = updates.pop("stop")
    return updates


def _check_combination(config: Any) -> None:
    beams = config.num_beams or 1
    n = config.num_return_sequences or 1
    if not config.do_sample and n > beams:
        raise UsageError(
            f"num_return_sequences={n} needs sampling (--sample) or num_beams >= {n}: "
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


def encode_prompts(
    tokenizer: Any, prompts: list[str], *, chat: bool = False, system: str | None = None
) -> list[list[int]]:
    """Token ids per prompt, unpadded. With `chat`, each prompt becomes a user turn."""
    if system is not None and not chat:
        raise UsageError("--system needs --chat (a system prompt is part of a chat template)")
    if chat:
        texts = [_chat_text(tokenizer, p, system) for p in prompts]
        # The template already holds BOS and role markers: adding special tokens would double them.
        ids: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompts)["input_ids"]
    empty = [i + 1 for i, row in enumerate(ids) if not row]
    if empty:
        raise UsageError(f"prompt {empty[0]} is empty: there is nothing to continue")
    return ids


def _chat_text(tokenizer: Any, prompt: str, system: str | None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "--chat: this model's tokenizer has no chat template (an instruction-tuned model "
            "such as embedded:smollm2 has one); drop --chat to continue raw text"
        )
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja2 TemplateError, e.g. a template that rejects system turns
        raise UsageError(f"--chat: the chat template failed: {e}") from None
    return str(text)


def check_context(model: Any, ids: list[list[int]], max_new_tokens: int | None) -> None:
    """Refuse prompts that cannot fit: past the position table a GPT-2 fails mid-batch."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
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
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
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


def generate_texts(
    loaded: LoadedModel,
    prompts: list[str],
    options: DecodingConfig,
    *,
    batch_size: int = 8,
    chat: bool = False,
    system: str | None = None,
    progress: bool = True,
) -> list[list[str]]:
    """Completions only (no prompt text), in input order: one list of
    num_return_sequences strings per prompt."""
    result = generate_with_stats(
        loaded,
        prompts,
        options,
        batch_size=batch_size,
        chat=chat,
        system=system,
        progress=progress,
    )
    return result.completions


def generate_with_stats(
    loaded: LoadedModel,
    prompts: list[str],
    options: DecodingConfig,
    *,
    batch_size: int = 8,
    chat: bool = False,
    system: str | None = None,
    progress: bool = True,
    streamer: Any = None,
) -> GenerationResult:
    """`generate_texts` plus token count and time; `streamer` needs a single prompt."""
    import torch

    if not prompts:
        return GenerationResult(completions=[], new_tokens=0, seconds=0.0)
    config = generation_config_for(loaded, options)
    ids = encode_prompts(loaded.tokenizer, prompts, chat=chat, system=system)
    check_context(loaded.model, ids, config.max_new_tokens)
    batches = length_sorted_batches([len(r) for r in ids], batch_size)
    if options.seed is not None:
        torch.manual_seed(options.seed)  # seeds CPU and every CUDA device

    completions: list[list[str]] = [[] for _ in prompts]
    new_tokens = 0
    start = time.perf_counter()
    # A bar only helps a person watching: in a log file it is noise.
    show_bar = progress and len(batches) > 1 and sys.stderr.isatty()
    with torch.inference_mode(), _ProgressBar(len(prompts), show_bar) as bar:
        for batch in batches:
            texts, n = _generate_batch(loaded, [ids[i] for i in batch], config, streamer)
            per_prompt = len(texts) // len(batch)  # generate returns n sequences per row, grouped
            for j, i in enumerate(batch):
                completions[i] = texts[j * per_prompt : (j + 1) * per_prompt]
            new_tokens += n
            bar(len(batch))
    return GenerationResult(completions, new_tokens, time.perf_counter() - start)


def _generate_batch(
    loaded: LoadedModel, rows: list[list[int]], config: Any, streamer: Any
) -> tuple[list[str], int]:
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids, mask = left_pad(rows, config.pad_token_id)
    device = model.device
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        generation_config=config,
        # stop_strings are matched on token *strings*, so generate needs the tokenizer.
        tokenizer=tokenizer if config.stop_strings else None,
        streamer=streamer,
    )
    new = out[:, input_ids.shape[1] :]
    n_tokens = int((new != config.pad_token_id).sum())
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    stops = _as_list(config.stop_strings)
    return [cut_at_stop(t, stops) for t in texts], n_tokens


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text before the earliest stop string (the stop string itself is dropped)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _as_list(stops: str | list[str] | None) -> list[str]:
    if stops is None:
        return []
    return [stops] if isinstance(stops, str) else list(stops)


class _ProgressBar:
    """Advance a rich progress bar on stderr; a no-op when off."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.progress: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("generating"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.progress.add_task("generate", total=total)

    def __enter__(self) -> _ProgressBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, advance: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, advance)


def make_streamer(tokenizer: Any, stops: list[str]) -> Any:
    """A TextStreamer that prints to stdout but never shows a stop string or what follows.

    Text that could be the start of a stop string is held back until the next token shows it
    is not (stop "\\n\\n": a lone "\\n" waits one token).
    """
    from transformers import TextStreamer

    class StopAwareStreamer(TextStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.text = ""
            self.shown = 0

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.text += text
            visible = cut_at_stop(self.text, stops)
            if len(visible) == len(self.text) and not stream_end:
                visible = visible[: len(visible) - _partial_stop(visible, stops)]
            sys.stdout.write(visible[self.shown :])
            self.shown = max(self.shown, len(visible))
            if stream_end:
                sys.stdout.write("\n")
            sys.stdout.flush()

    return StopAwareStreamer()


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


# --- reading prompts -----------------------------------------------------------------------


def read_text_records(
    path: Path, field: str | None, *, default_field: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, texts) from a .txt (one text per non-blank line) or .jsonl file.

    A JSONL record keeps all its keys (ids, references) so outputs can be joined back;
    its text is `field` (default `default_field`). Every bad line is reported at once.
    """
    key = field or default_field
    if path.suffix.lower() in (".jsonl", ".json"):
        has_key = has_field(key, "pick one with --field")

        def check(record: dict[str, Any]) -> str | None:
            value = record.get(key)
            if (problem := has_key(record)) is None and not (
                isinstance(value, str) and value.strip()
            ):
                problem = f"field '{key}' must be non-empty text, got {value!r}"
            return problem

        kept = [record for _, record in read_records(path, check)]
        texts = [r[key] for r in kept]
    else:
        texts = [line for line in read_text(path).splitlines() if line.strip()]
        kept = [{default_field: t} for t in texts]
    if not texts:
        raise UsageError(f"input file {path} holds no texts")
    return kept, texts


# --- the command -----------------------------------------------------------------------------


@dataclass
class GenerateRequest:
    """What the CLI collected; `flags` holds only the decoding flags the user typed."""

    prompt: str | None = None
    model: str | None = None
    trust_remote_code: bool = False
    recipe: Path | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    chat: bool = False
    system: str | None = None
    stream: bool = False
    input: Path | None = None
    output: Path | None = None
    prompt_field: str | None = None  # --field
    batch_size: int = 8
    json: bool = False


def resolve_options(recipe: Path | str | None, flags: dict[str, Any]) -> DecodingConfig:
    """recipe `generate:` < CLI flags (the model's generation_config sits under both)."""
    base = load_decoding_from_yaml(recipe) if recipe is not None else DecodingConfig()
    set_flags = {k: v for k, v in flags.items() if v is not None}
    if "stop" in set_flags:
        set_flags["stop"] = [_unescape(s) for s in set_flags["stop"]]
    from_flags = decoding_from_mapping(set_flags, where="", flag_names=True)
    try:
        return from_flags.over(base)
    except ValidationError as e:  # each part is valid, but flags and recipe clash
        raise UsageError(f"decoding options: {e.errors()[0]['msg']}") from None


def _unescape(stop: str) -> str:
    """`--stop '\\n'` arrives as backslash + n from a shell; users mean a newline."""
    return stop.replace("\\n", "\n").replace("\\t", "\t")


def run_generate(req: GenerateRequest) -> None:
    """Validate everything cheap first, then load the model once and generate."""
    options = resolve_options(req.recipe, req.flags)
    prompts, records = _collect_prompts(req)
    _check_modes(req, options)
    loaded = _load(req.model, trust_remote_code=req.trust_remote_code)
    if req.input is None:
        _generate_one(loaded, prompts[0], options, req)
    else:
        _generate_file(loaded, prompts, records, options, req)


def _collect_prompts(req: GenerateRequest) -> tuple[list[str], list[dict[str, Any]]]:
    if req.input is not None:
        if req.prompt is not None:
            raise UsageError("give either a PROMPT or --input FILE, not both")
        records, prompts = read_text_records(req.input, req.prompt_field, default_field="prompt")
        return prompts, records
    if req.prompt_field is not None or req.output is not None:
        raise UsageError("--field and --output go with --input FILE")
    if req.prompt is None:
        raise UsageError("give a PROMPT, '-' to read it from stdin, or --input FILE")
    prompt = sys.stdin.read().rstrip("\n") if req.prompt == "-" else req.prompt
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return [prompt], [{"prompt": prompt}]


def _check_modes(req: GenerateRequest, options: DecodingConfig) -> None:
    """Flag clashes found before the model loads (seconds) rather than after."""
    if req.system is not None and not req.chat:
        raise UsageError("--system needs --chat (a system prompt is part of a chat template)")
    if not req.stream:
        return
    if req.input is not None or req.json:
        raise UsageError("--stream prints one completion as it comes: drop --input/--json")
    if (options.num_beams or 1) > 1 or (options.num_return_sequences or 1) > 1:
        raise UsageError("--stream needs one sequence: drop --num-beams/--num-return-sequences")


def _load(ref: str | None, *, trust_remote_code: bool = False) -> LoadedModel:
    from transformers.utils import logging as hf_logging

    from llmkit.models import DEFAULT_CAUSAL_LM, load_causal_lm

    # The "Loading weights" bar would bury the one line that says which model answers.
    hf_logging.disable_progress_bar()
    loaded = load_causal_lm(ref or DEFAULT_CAUSAL_LM, trust_remote_code=trust_remote_code)
    _note(f"model: {loaded.description}")
    return loaded


def _generate_one(
    loaded: LoadedModel, prompt: str, options: DecodingConfig, req: GenerateRequest
) -> None:
    streamer = make_streamer(loaded.tokenizer, options.stop or []) if req.stream else None
    result = generate_with_stats(
        loaded,
        [prompt],
        options,
        chat=req.chat,
        system=req.system,
        progress=False,
        streamer=streamer,
    )
    completions = result.completions[0]
    if req.json:
        print(json.dumps(_json_record({"prompt": prompt}, completions, loaded, result)))
    elif not req.stream:
        _print_completions(completions)
    _note(_speed(result))


def _print_completions(completions: list[str]) -> None:
    if len(completions) == 1:
        print(completions[0])
        return
    for k, text in enumerate(completions, start=1):
        print(f"--- {k}/{len(completions)} ---")
        print(text)


def _generate_file(
    loaded: LoadedModel,
    prompts: list[str],
    records: list[dict[str, Any]],
    options: DecodingConfig,
    req: GenerateRequest,
) -> None:
    result = generate_with_stats(
        loaded, prompts, options, batch_size=req.batch_size, chat=req.chat, system=req.system
    )
    lines = [
        json.dumps({**record, "completion": c[0], "completions": c}, ensure_ascii=False)
        for record, c in zip(records, result.completions, strict=True)
    ]
    if req.output is None:
        print("\n".join(lines))
    else:
        _write_lines(req.output, lines)
        _note(f"wrote {len(lines)} lines to {req.output}")
    _note(f"{_speed(result)}, batch size {req.batch_size}")


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write via a temp file and rename, so a crash never leaves half an output file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


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


def _speed(result: GenerationResult) -> str:
    rate = result.new_tokens / result.seconds if result.seconds > 0 else 0.0
    return f"{result.new_tokens} new tokens in {result.seconds:.2f} s ({rate:.1f} tokens/s)"


def _note(message: str) -> None:
    """Status lines go to stderr: stdout carries only completions (pipe- and --json-safe)."""
    print(message, file=sys.stderr, flush=True)
