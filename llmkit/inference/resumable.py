"""Long generation jobs that survive interruption.

Each batch's results are appended to `<output>.partial` as the batch finishes (flushed and
fsynced); Ctrl-C or SIGTERM finishes the batch in flight, keeps the file and exits 130/143;
resuming skips the batches already there, and the file written at the end, in input order,
is byte-identical to an uninterrupted run's: batches are fixed by the prompts and the batch
size, and each samples from its own seed (llmkit.inference.generate.generate_batches). 42
minutes of generation were once lost to one SIGTERM because the output was written only at
the end.

`.partial` holds a header line, then one `{"index": i, "row": {...}, "xxh3": ...}` line per
finished prompt, in the order they finished. The header records everything that decides the
output (the model, the prompt format, every decoding option, the answer stops, the batch size
and a digest of the input): a resume with any of them changed is refused, naming what changed
(a resume with another max_new_tokens once mixed both settings in one output, exit 0). The
header is also how llmkit knows the file is its own: a `.partial` without it (a user's file
of that name, or one damaged at its head) is never resumed, replaced or called llmkit's.
A line whose checksum fails (a damaged byte) is dropped with a note: its batch runs again,
giving the same rows (each batch samples from its own seed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from llmkit.config.decoding import DecodingConfig
from llmkit.errors import Fix, UsageError
from llmkit.inference.generate import generate_batches
from llmkit.io.interrupt import StopFlag
from llmkit.io.write import write_jsonl, write_text
from llmkit.models.card import RAW, PromptFormat
from llmkit.models.load import LoadedModel

Row = dict[str, Any]
HEADER_KEY = "llmkit_partial"
VERSION = 2  # 2: the whole job in the header, a checksum per line


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def check_resumable(output: Path, *, resume: bool) -> None:
    """Before any work: an interrupted run's file is continued only when asked, and a file
    of that name that llmkit did not write is never taken for one."""
    partial = partial_path(output)
    if not (partial.exists() or partial.is_symlink()):
        return
    _read_header(partial)  # refuses a file that is not llmkit's
    if not resume:
        raise UsageError(f"{partial} holds an interrupted run", fix=Fix.RESUME_PARTIAL)


def _read_header(partial: Path) -> dict[str, Any]:
    """The header of an llmkit partial file, or a UsageError that does not call it ours."""
    try:
        with partial.open("rb") as f:
            first = f.readline(1 << 20)
    except OSError as e:
        raise UsageError(f"{partial} cannot be read: {e.strerror}") from e
    header = _json(first.decode("utf-8", errors="replace"))
    if not (isinstance(header, dict) and isinstance(header.get(HEADER_KEY), int)):
        raise UsageError(
            f"{partial} is in the way: llmkit keeps an unfinished job's results under that "
            "name, and this file does not begin with the header llmkit writes, so it is not "
            "one of them; move it or choose another output"
        )
    return header


def job_header(
    loaded: LoadedModel,
    prompts: list[str],
    records: list[Row],
    options: DecodingConfig,
    *,
    batch_size: int,
    prompt_format: PromptFormat,
    answer_stops: list[str] | None,
) -> dict[str, Any]:
    """Everything that decides a job's output, as the partial file's first line records it."""
    digest = xxhash.xxh3_64_hexdigest(
        json.dumps([prompts, records], ensure_ascii=False, sort_keys=True).encode()
    )
    job: dict[str, Any] = {
        "model": loaded.description,
        "prompt_format": prompt_format.describe(),
        "answer_stops": answer_stops or [],
        "batch_size": batch_size,
        "prompts": len(prompts),
        "input_digest": digest,
    }
    job |= options.model_dump(mode="json")
    return {HEADER_KEY: VERSION, "job": job}


def _changes(written: dict[str, Any], now: dict[str, Any]) -> list[str]:
    if written.get(HEADER_KEY) != VERSION or not isinstance(written.get("job"), dict):
        return [f"format {written.get(HEADER_KEY)} (an older llmkit), {VERSION} now"]
    then = written["job"]
    changed = [k for k in now["job"] if then.get(k) != now["job"][k]]
    return [
        "the input" if k == "input_digest" else f"{k} {then.get(k)!r} then, {now['job'][k]!r} now"
        for k in changed
    ]


def _line_checksum(index: int, row: Row) -> str:
    return xxhash.xxh3_64_hexdigest(
        json.dumps([index, row], ensure_ascii=False, sort_keys=True).encode()
    )


def generate_to_jsonl(
    loaded: LoadedModel,
    prompts: list[str],
    records: list[Row],
    options: DecodingConfig,
    output: Path,
    row: Callable[[Row, list[str]], Row],
    *,
    batch_size: int,
    resume: bool,
    prompt_format: PromptFormat = RAW,
    answer_stops: list[str] | None = None,
) -> tuple[list[Row], int, float]:
    """Write `row(record, completions)` for every prompt to `output` (JSONL, input order),
    resumably. Returns (every row in input order, new tokens generated now, seconds now)."""
    check_resumable(output, resume=resume)
    partial = partial_path(output)
    header = job_header(
        loaded, prompts, records, options,
        batch_size=batch_size, prompt_format=prompt_format, answer_stops=answer_stops,
    )  # fmt: skip
    finished = _finished_rows(partial, records, header)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not partial.exists():  # the header appears whole or not at all
        write_text(partial, json.dumps(header, ensure_ascii=False) + "\n")
    new_tokens, start = 0, time.perf_counter()
    with StopFlag("this batch") as stop, partial.open("ab") as f:
        for indices, completions, n, _ in generate_batches(
            loaded,
            prompts,
            options,
            batch_size=batch_size,
            prompt_format=prompt_format,
            answer_stops=answer_stops,
            done=finished.keys(),
        ):
            done = {i: row(records[i], c) for i, c in zip(indices, completions, strict=True)}
            lines = (
                json.dumps({"index": i, "row": r, "xxh3": _line_checksum(i, r)}, ensure_ascii=False)
                for i, r in done.items()
            )
            f.write("".join(line + "\n" for line in lines).encode())
            f.flush()
            os.fsync(f.fileno())
            finished |= done
            new_tokens += n
            stop.stop(
                f"stopped after {len(finished)} of {len(prompts)} prompts; the finished ones "
                f"are in {partial}"
            )
    rows = [finished[i] for i in range(len(prompts))]
    write_jsonl(output, rows)
    partial.unlink()
    return rows, new_tokens, time.perf_counter() - start


def _finished_rows(partial: Path, records: list[Row], header: Row) -> dict[int, Row]:
    """{index: row} an interrupted run finished, checked against this run's job; a line cut
    by a crash mid-write, or damaged, is dropped (the batch it belongs to runs again)."""
    if not (partial.exists() or partial.is_symlink()):
        return {}
    written = _read_header(partial)
    changes = _changes(written, header)
    if changes:
        raise UsageError(
            f"{partial} was written by another job ({'; '.join(changes)}): resume with what "
            "it was written with, or delete it to start over"
        )
    raw = partial.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    if len(whole) != len(raw):  # a line cut mid-write: drop it from the file too
        with partial.open("r+b") as f:
            f.truncate(len(whole))
    lines = whole.split(b"\n")[1:-1]
    finished: dict[int, Row] = {}
    damaged = 0
    for line in lines:
        entry = _json(line.decode("utf-8", errors="replace"))
        index = entry.get("index") if isinstance(entry, dict) else None
        row = entry.get("row") if isinstance(entry, dict) else None
        if (
            isinstance(index, int)
            and isinstance(row, dict)
            and 0 <= index < len(records)
            and entry.get("xxh3") == _line_checksum(index, row)
        ):
            finished[index] = row
        else:
            damaged += 1
    if damaged:
        print(
            f"note: {partial}: {damaged} damaged line{'s' if damaged > 1 else ''} dropped; "
            "their prompts run again",
            file=sys.stderr,
        )
    return finished


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
