"""Long generation jobs that survive interruption.

Results are appended to `<output>.partial` one chunk of prompts at a time (flushed and
fsynced); Ctrl-C or SIGTERM finishes the chunk in flight, keeps the file and exits 130/143;
resuming continues after the last finished chunk, and the file renamed into place at the end
is byte-identical to an uninterrupted run's (chunks sample from their own seeds:
llmkit.inference.generate.generate_chunks). 42 minutes of generation were once lost to one
SIGTERM because the output was written only at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.config.decoding import DecodingConfig
from llmkit.errors import Fix, UsageError
from llmkit.inference.generate import chunk_size, generate_chunks
from llmkit.io.interrupt import StopFlag
from llmkit.models.load import LoadedModel

Row = dict[str, Any]


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def check_resumable(output: Path, *, resume: bool) -> None:
    """Before any work: an interrupted run's file is continued only when asked."""
    if partial_path(output).exists() and not resume:
        raise UsageError(f"{partial_path(output)} holds an interrupted run", fix=Fix.RESUME_PARTIAL)


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
    chat: bool = False,
    system: str | None = None,
) -> tuple[list[Row], int, float]:
    """Write `row(record, completions)` for every prompt to `output` (JSONL, input order),
    resumably. Returns (every row, new tokens generated now, seconds spent now)."""
    partial = partial_path(output)
    rows = _finished_rows(partial, records, resume=resume, chunk=chunk_size(batch_size))
    new_tokens, seconds = 0, 0.0
    with StopFlag("this chunk of prompts") as stop, partial.open("ab") as f:
        for first, result in generate_chunks(
            loaded,
            prompts,
            options,
            batch_size=batch_size,
            chat=chat,
            system=system,
            start=len(rows),
        ):
            done = [row(records[first + i], c) for i, c in enumerate(result.completions)]
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done).encode())
            f.flush()
            os.fsync(f.fileno())
            rows += done
            new_tokens += result.new_tokens
            seconds += result.seconds
            stop.stop(
                f"stopped after {len(rows)} of {len(prompts)} prompts; the finished ones are in "
                f"{partial}"
            )
    os.replace(partial, output)
    return rows, new_tokens, seconds


def _finished_rows(partial: Path, records: list[Row], *, resume: bool, chunk: int) -> list[Row]:
    """The rows an interrupted run finished, checked against this run's inputs; a line cut by
    a crash mid-write is dropped (and cut from the file)."""
    if not partial.exists():
        return []
    check_resumable(partial.with_name(partial.name.removesuffix(".partial")), resume=resume)
    raw = partial.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    if len(whole) != len(raw):
        with partial.open("r+b") as f:
            f.truncate(len(whole))
    rows = []
    for n, line in enumerate(whole.decode("utf-8", errors="replace").splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if (
            n >= len(records)
            or not isinstance(row, dict)
            or any(row.get(k) != v for k, v in records[n].items())
        ):
            raise UsageError(
                f"{partial}:{n + 1} is not this input's row {n + 1}: it was written for another "
                "input; delete it to start over"
            )
        rows.append(row)
    if len(rows) % chunk and len(rows) != len(records):
        raise UsageError(
            f"{partial} holds {len(rows)} rows, not whole chunks of {chunk}: resume with the "
            "batch size it was written with"
        )
    return rows
