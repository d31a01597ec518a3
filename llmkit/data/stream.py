"""Sources as a stream of *pieces*, cleaned and deduplicated in bounded memory, for `llmkit prep`.

A piece is the unit of the validation split and of resuming:
- a JSONL/CSV/Parquet/hub row is one piece and one document;
- a text file (one document) is cut into pieces of >= PIECE_CHARS cleaned characters at line
  ends, so a 100 MB single-file corpus still has ~100,000 pieces to split by hash instead of
  one document landing wholly in train or in validation.

Each piece carries the position right after it (source number, byte offset or row number),
so a killed prep resumes by seeking there instead of re-reading what is done, and the 64-bit
hashes of the lines (rows) it kept, so the dedupe state can be saved with each shard.

Cleaning is today's (`sources.read_corpus`): strip, drop lines shorter than `min_chars`,
drop exact duplicates, keeping the first. Bad input is reported by the whole-file readers in
`llmkit.io.files` (every bad line at once, with line numbers): the stream falls back to them
only when it meets a problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash  # a dependency of datasets: xxh3 hashes ~10 GB/s, blake2b ~1 GB/s

from llmkit.data import sources
from llmkit.errors import UsageError
from llmkit.io import files

# ~250 GPT-2 tokens: fine enough that the 38 KB tiny corpus has ~38 pieces to split.
PIECE_CHARS = 1024
# Raw bytes read per block of lines: the hashing and dedupe lookups run once per block.
READ_BYTES = 1 << 20
PARQUET_SUFFIX = ".parquet"


@dataclass
class Piece:
    lines: list[str]  # cleaned lines; a row is one item (its text, newlines inside)
    doc_end: bool  # the last piece of its document: an EOS (causal) or a block end follows
    after: tuple[int, int]  # (source number, byte offset or rows read) to resume after it
    n_read: int  # raw lines (rows) consumed since the previous piece, dropped ones included
    n_bytes: int  # raw bytes consumed since the previous piece (progress only)
    hashes: list[int] = field(default_factory=list)  # dedupe hashes of the kept lines
    joiner: str = "\n"  # what joins it to the next piece of its document
    resumable: bool = True  # `after` is a place to resume (not inside a row cut in pieces)
    n_kept: int | None = None  # lines (rows) kept; None: len(lines). A cut one counts once.
    rows: bool = False  # `n_read`/`n_kept` count rows of a table, not lines of a text file
    n_null: int = 0  # rows with a null text among `n_read` (read, and dropped)

    @property
    def kept(self) -> int:
        return len(self.lines) if self.n_kept is None else self.n_kept

    @property
    def text(self) -> str:
        # Pieces of one document join back to its text: "\n".join(kept lines) for a file.
        body = "\n".join(self.lines)
        return body if self.doc_end else body + self.joiner


def line_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode())


class SeenHashes:
    """Exact-duplicate filter over 64-bit hashes (a collision, ~1e-8 at 1e6 lines, drops one
    line). Recent hashes live in a set (~70 B each); every FOLD of them are folded into a
    sorted uint64 array (8 B each), so 25M distinct lines cost ~200 MB, not ~1.7 GB."""

    FOLD = 1 << 20

    def __init__(self, known: np.ndarray | None = None) -> None:
        self.frozen = np.unique(known) if known is not None else np.empty(0, np.uint64)
        self.live: set[int] = set()

    def first_seen(self, hashes: list[int]) -> list[bool]:
        """For each hash in order: True the first time it is seen (and remember it)."""
        old = [False] * len(hashes)
        if len(self.frozen) and hashes:
            arr = np.array(hashes, dtype=np.uint64)
            at = np.minimum(np.searchsorted(self.frozen, arr), len(self.frozen) - 1)
            old = (self.frozen[at] == arr).tolist()
        out = []
        live = self.live
        for h, was in zip(hashes, old, strict=True):
            new = not was and h not in live
            if new:
                live.add(h)
            out.append(new)
        if len(live) >= self.FOLD:
            fresh = np.fromiter(live, dtype=np.uint64, count=len(live))
            self.frozen = np.union1d(self.frozen, fresh)
            live.clear()
        return out


def pieces(
    paths: list[str],
    start: tuple[int, int],
    *,
    text_column: str,
    min_chars: int,
    seen: SeenHashes | None,
) -> Iterator[Piece]:
    """Every piece of `paths` (expanded sources) from position `start`. A piece with no
    lines only reports lines consumed and a position (a source whose lines were all dropped)."""
    first, offset = start
    for i in range(first, len(paths)):
        src, at = paths[i], offset if i == first else 0
        if src.startswith(sources.HUB_PREFIX) or files.is_table(Path(src)) or _is_parquet(src):
            yield from _row_pieces(src, i, at, text_column, min_chars, seen)
        else:
            yield from _text_pieces(Path(src), i, at, min_chars, seen)


def _is_parquet(src: str) -> bool:
    return src.lower().endswith(PARQUET_SUFFIX)


def _line_blocks(path: Path, offset: int) -> Iterator[list[tuple[int, str]]]:
    """Blocks of (byte offset after the line, line) from `offset` on."""
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        while raws := f.readlines(READ_BYTES):
            block = []
            for raw in raws:
                pos += len(raw)
                try:
                    block.append((pos, raw.decode("utf-8")))
                except UnicodeDecodeError:
                    files.read_text(path)  # raises with the line number and byte
                    raise
            yield block


def _keep(texts: list[str], min_chars: int, seen: SeenHashes | None) -> list[int | None]:
    """The dedupe hash of each text to keep (0 when not deduplicating), None to drop."""
    long_enough = [len(t) >= min_chars for t in texts]
    if seen is None:
        return [0 if ok else None for ok in long_enough]
    hashes = [line_hash(t) for t, ok in zip(texts, long_enough, strict=True) if ok]
    first = iter(zip(hashes, seen.first_seen(hashes), strict=True))
    out: list[int | None] = []
    for ok in long_enough:
        if not ok:
            out.append(None)
            continue
        h, new = next(first)
        out.append(h if new else None)
    return out


def _text_pieces(
    path: Path, source: int, offset: int, min_chars: int, seen: SeenHashes | None
) -> Iterator[Piece]:
    # One piece is held back until the next one exists: only then is it known whether it is
    # the document's last (doc_end).
    held: Piece | None = None
    lines: list[str] = []
    hashes: list[int] = []
    chars = n_read = n_bytes = 0
    pos = offset
    for block in _line_blocks(path, offset):
        stripped = [line.strip() for _, line in block]
        for (end, _), text, h in zip(
            block, stripped, _keep(stripped, min_chars, seen), strict=True
        ):
            start = pos
            n_read += 1
            n_bytes += end - pos
            pos = end
            if h is None:
                continue
            ready: list[Piece] = []
            if len(text) > 2 * PIECE_CHARS:
                # A line longer than two pieces (a text8-style corpus is one 100 MB line) is
                # cut by size, as a long row is: otherwise the whole file is one piece, all
                # of it in train or in validation ("too short" for one of them).
                if lines:
                    ready.append(Piece(lines, False, (source, start), 0, 0, hashes))
                parts = cut_long(text)
                for k, (part, joiner) in enumerate(parts):
                    last = k == len(parts) - 1
                    ready.append(
                        Piece(
                            [part],
                            False,
                            (source, end),
                            n_read if last else 0,
                            n_bytes if last else 0,
                            [h] if last else [],
                            "\n" if last else joiner,
                            resumable=last,
                            n_kept=int(last),
                        )
                    )
                lines, hashes, chars, n_read, n_bytes = [], [], 0, 0, 0
            else:
                lines.append(text)
                hashes.append(h)
                chars += len(text) + 1
                if chars >= PIECE_CHARS:
                    ready.append(Piece(lines, False, (source, end), n_read, n_bytes, hashes))
                    lines, hashes, chars, n_read, n_bytes = [], [], 0, 0, 0
            for piece in ready:
                if held is not None:
                    yield held
                held = piece
    if lines:
        if held is not None:
            yield held
        held = Piece(lines, False, (source, pos), 0, 0, hashes)
    after = (source + 1, 0)
    if held is None:
        yield Piece([], False, after, n_read, n_bytes)
        return
    held.doc_end, held.after = True, after
    held.n_read += n_read
    held.n_bytes += n_bytes
    yield held


def _row_pieces(
    src: str, source: int, start: int, column: str, min_chars: int, seen: SeenHashes | None
) -> Iterator[Piece]:
    n_read = n_bytes = n_null = 0
    for after, text in _rows(src, start, column):
        n_read += 1
        if text is None:  # counted as read and dropped, so the row counts add up
            n_null += 1
            continue
        n_bytes += len(text)
        text = text.strip()
        (h,) = _keep([text], min_chars, seen)
        if h is None:
            continue
        parts = cut_long(text)
        for k, (part, joiner) in enumerate(parts):
            last = k == len(parts) - 1
            yield Piece(
                part.split("\n"),
                last,
                (source, after),
                n_read,
                n_bytes,
                [h] if k == 0 else [],
                joiner,
                resumable=last,
                n_kept=int(last),  # one row, however many lines or parts it has
                rows=True,
                n_null=n_null,
            )
            n_read = n_bytes = n_null = 0
    yield Piece([], False, (source + 1, 0), n_read, n_bytes, rows=True, n_null=n_null)


def cut_long(text: str) -> list[tuple[str, str]]:
    """(part, joiner) pieces of a long row or line, ~PIECE_CHARS each: cut at a line end,
    else before a space (where GPT-2-style pre-tokenizers split anyway, so the ids match
    the uncut text's), else (text with no spaces for 3 KB: Chinese, Japanese, Thai) after
    PIECE_CHARS characters, so a 350 KB CSV cell is ~350 pieces to split, not one."""
    parts = []
    start = 0
    while len(text) - start > 2 * PIECE_CHARS:
        window = start + 4 * PIECE_CHARS
        newline = text.find("\n", start + PIECE_CHARS, window)
        if newline != -1:
            parts.append((text[start:newline], "\n"))
            start = newline + 1
            continue
        space = text.find(" ", start + PIECE_CHARS, min(window, len(text) - PIECE_CHARS))
        cut = space if space != -1 else start + PIECE_CHARS
        parts.append((text[start:cut], ""))
        start = cut
    parts.append((text[start:], ""))
    return parts


def _rows(src: str, start: int, column: str) -> Iterator[tuple[int, str | None]]:
    """(position after the row, its text, None for a null one) for each row; JSONL
    positions are byte offsets, others row numbers."""
    if src.startswith(sources.HUB_PREFIX):
        yield from _hub_rows(src.removeprefix(sources.HUB_PREFIX), start, column)
        return
    path = Path(src)
    suffix = path.suffix.lower()
    files.check_kind(path)
    if _is_parquet(src):
        yield from _parquet_rows(path, start, column)
    elif suffix == ".csv":
        yield from _csv_rows(path, start, column)
    elif suffix == ".json" and _starts_with_bracket(path):
        # A JSON array has to be parsed whole; positions are its item numbers.
        texts = _whole_file_texts(path, column)
        yield from ((i + 1, t) for i, t in enumerate(texts) if i >= start)
    else:
        yield from _jsonl_rows(path, start, column)


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4096).lstrip().startswith(b"[")


def _whole_file_texts(path: Path, column: str) -> list[str | None]:
    """Today's whole-file reader: reports every bad row at once, with its line; None for a
    null text."""
    rows = files.read_records(path, files.has_field(column, hint="set data.text_column"))
    present = [(where, row) for where, row in rows if row[column] is not None]
    texts = iter(
        files.field_texts(
            present, column, blank_lines="keep", numbers=False, hint="set data.text_column"
        )
    )
    return [None if row[column] is None else next(texts) for _, row in rows]


def _text_of(row: Any, column: str) -> str | None:
    """The row's text, None for a null one; ValueError for anything the whole-file reader
    reports (not an object, no such field, not a string)."""
    if not isinstance(row, dict) or column not in row:
        raise ValueError
    value = row[column]
    if value is not None and not isinstance(value, str):
        raise ValueError
    return value


def _bad_file(path: Path, column: str) -> UsageError:
    _whole_file_texts(path, column)  # raises the full report
    return UsageError(f"{path}: cannot read column '{column}'")


def _jsonl_rows(path: Path, start: int, column: str) -> Iterator[tuple[int, str | None]]:
    for block in _line_blocks(path, start):
        for end, line in block:
            if not line.strip():
                continue
            try:
                text = _text_of(json.loads(line), column)
            except (ValueError, RecursionError):
                raise _bad_file(path, column) from None
            yield end, text


def _csv_rows(path: Path, start: int, column: str) -> Iterator[tuple[int, str | None]]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for i, row in enumerate(reader):
                if i < start:
                    continue
                yield i + 1, _text_of(row, column)
        except (csv.Error, ValueError, UnicodeDecodeError):
            raise _bad_file(path, column) from None


def _parquet_rows(path: Path, start: int, column: str) -> Iterator[tuple[int, str | None]]:
    table = files.open_parquet(path)
    if column not in table.schema_arrow.names:
        raise UsageError(
            f"{path}: no column '{column}' (columns: {', '.join(table.schema_arrow.names)}); "
            "set data.text_column"
        )
    i = 0
    for batch in table.iter_batches(batch_size=4096, columns=[column]):
        for value in batch.column(0).to_pylist():
            i += 1
            if i <= start:
                continue
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{path}: row {i}: column '{column}' must be a string")
            yield i, value


def _hub_rows(name: str, start: int, column: str) -> Iterator[tuple[int, str | None]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split="train", streaming=True)
    except Exception as e:  # datasets raises many types when the hub is unreachable
        raise UsageError(f"data.sources: cannot load hub dataset '{name}': {e}") from e
    for i, row in enumerate(ds.skip(start) if start else ds, start=start + 1):
        if column not in row:
            raise UsageError(f"hub dataset {name}: no column '{column}' (columns: {list(row)})")
        value = row[column]
        yield i, None if value is None else str(value)
