"""Long generation jobs that survive interruption.

Each batch's results are appended to `<output>.partial` as the batch finishes (flushed and
fsynced); Ctrl-C or SIGTERM finishes the batch in flight, keeps the file and exits 130/143;
resuming skips the batches already there, and the file written at the end, in input order,
is byte-identical to an uninterrupted run's: batches are fixed by the prompts and the batch
size, and each samples from its own seed (llmkit.inference.generate.generate_batches). 42
minutes of generation were once lost to one SIGTERM because the output was written only at
the end.

`.partial` holds a header line (the batch size and prompt count it was written for), then one
`{"index": i, "row": {...}}` line per finished prompt, in the order they finished.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.config.decoding import DecodingConfig
from llmkit.errors import Fix, UsageError
from llmkit.inference.generate import generate_batches
from llmkit.io.interrupt import StopFlag
from llmkit.io.write import write_jsonl
from llmkit.models.card import RAW, PromptFormat
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
    prompt_format: PromptFormat = RAW,
    answer_stops: list[str] | None = None,
) -> tuple[list[Row], int, float]:
    """Write `row(record, completions)` for every prompt to `output` (JSONL, input order),
    resumably. Returns (every row in input order, new tokens generated now, seconds now)."""
    check_resumable(output, resume=resume)
    partial = partial_path(output)
    header = {"llmkit_partial": 1, "batch_size": batch_size, "prompts": len(prompts)}
    finished = _finished_rows(partial, records, header)
    output.parent.mkdir(parents=True, exist_ok=True)
    new_tokens, start = 0, time.perf_counter()
    with StopFlag("this batch") as stop, partial.open("ab") as f:
        if not finished:
            f.write((json.dumps(header) + "\n").encode())
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
                json.dumps({"index": i, "row": r}, ensure_ascii=False) for i, r in done.items()
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
    """{index: row} an interrupted run finished, checked against this run's inputs; a line
    cut by a crash mid-write is dropped (the batch it belongs to runs again)."""
    if not partial.exists():
        return {}
    raw = partial.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    if len(whole) != len(raw):  # a line cut mid-write: drop it from the file too
        with partial.open("r+b") as f:
            f.truncate(len(whole))
    lines = [line for line in whole.decode("utf-8", errors="replace").split("\n") if line]
    written = _json(lines[0]) if lines else None
    if written != header:
        raise UsageError(
            f"{partial} was written for another job ({written}); give the same input, "
            f"batch size and options, or delete it to start over"
        )
    finished: dict[int, Row] = {}
    for n, line in enumerate(lines[1:], start=2):
        entry = _json(line)
        index = entry.get("index") if isinstance(entry, dict) else None
        row = entry.get("row") if isinstance(entry, dict) else None
        if (
            not isinstance(index, int)
            or not 0 <= index < len(records)
            or not isinstance(row, dict)
            or any(row.get(k) != v for k, v in records[index].items())
        ):
            raise UsageError(f"{partial}:{n} does not match this input; delete it to start over")
        finished[index] = row
    return finished


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
