"""The one reader of user files: text, JSONL / JSON arrays, CSV, with errors that name the line.

Every command that reads a user's file goes through here, so a bad file reads the same
everywhere: `path:LINE: malformed JSON (...)`, `path:LINE: no field 'x' (fields: a, b)`.
Up to 10 bad lines are reported at once: enough to show a pattern without flooding a
terminal for a file of 10,000 bad lines. Messages name files and fields; the command layer
adds which flag picks them (the `hint` arguments).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.errors import UsageError

MAX_PROBLEMS = 10
TABLE_SUFFIXES = (".jsonl", ".json", ".csv")
Record = dict[str, Any]


def check_readable(path: Path) -> None:
    """A regular file, or one line that says what `path` is instead. Reading a FIFO or
    /dev/zero would hang or fill memory, so they are refused before any read."""
    if path.is_symlink() and not path.exists():
        raise UsageError(f"{path} is a broken symbolic link (or a loop of them)")
    if not path.exists():
        raise UsageError(f"file {path} does not exist")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a file")
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file (a FIFO, socket or device)")


def read_text(path: Path) -> str:
    """A UTF-8 text file; a bad byte is reported with its line and offset."""
    check_readable(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    return decode_utf8(raw, str(path), fix="re-encode the file, e.g. `iconv -f latin1 -t utf-8`")


def decode_utf8(raw: bytes, where: str, *, offset: int = 0, line: int = 1, fix: str = "") -> str:
    """`raw` as text, or one line naming `where`, the line and the byte offset of the first
    byte that is not UTF-8 (`offset`/`line`: where `raw` begins in what is being read)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line += raw[: e.start].count(b"\n")
        at = offset + e.start
        raise UsageError(
            f"{where}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {at})"
            + (f"; {fix}" if fix else "")
        ) from None


STDIN_FIX = "pipe UTF-8 text, e.g. through `iconv -f latin1 -t utf-8`"


def read_stdin() -> str:
    """Standard input as text (one trailing newline dropped), or one line naming the first
    byte that is not UTF-8. Read as bytes: under a C locale Python would decode stdin with
    surrogateescape, and the tokenizer later failed on the surrogates with a traceback."""
    import sys

    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream (tests, embedding): already str
        text = sys.stdin.read()
        decode_utf8(text_bytes(text), "stdin", fix=STDIN_FIX)
        return text.rstrip("\n")
    return decode_utf8(buffer.read(), "stdin", fix=STDIN_FIX).rstrip("\n")


def text_bytes(text: str) -> bytes:
    """The bytes a text stream decoded into `text`: bytes it could not decode come back as
    themselves (surrogateescape), any other lone surrogate as its UTF-8-like form, which
    `decode_utf8` then names."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


PARQUET_MAGIC = b"PAR1"


def open_parquet(path: Path) -> Any:
    """A pyarrow ParquetFile, or one line saying the file is not Parquet (a Parquet file
    begins and ends with the 4 bytes PAR1; pyarrow's own error was a traceback)."""
    import pyarrow.parquet as pq  # a dependency of datasets

    check_readable(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        return pq.ParquetFile(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # pyarrow.ArrowInvalid and kin: a damaged or foreign file
        seen = "it begins with PAR1" if head == PARQUET_MAGIC else f"it begins {head!r}"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path} is not a readable Parquet file ({seen}: {reason})") from None


def read_records(
    path: Path, check: Callable[[Record], str | None] | None = None
) -> list[tuple[str, Record]]:
    """(where, row) for every row of a .jsonl, .json (array or one object a line) or .csv
    file; `where` is `path:LINE` (or `path: item N`) for messages about that row.

    `check(row)` returns a problem with a row (a missing column, say) or None; malformed
    lines and failed checks are reported together, so one run shows every bad line.
    """
    check_kind(path)
    text = read_text(path)
    if path.suffix.lower() == ".csv":
        return _checked(_csv_rows(path, text), [], check)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        except RecursionError:
            raise UsageError(f"{path}: JSON nested too deeply") from None
        if not isinstance(items, list):  # `[1] x`-style text that json still calls a list
            raise UsageError(f"{path}: expected a JSON array of objects")
        return _checked([(f"{path}: item {i}", item) for i, item in enumerate(items)], [], check)
    parsed: list[tuple[str, Any]] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})")
        except RecursionError:
            problems.append(f"{path}:{lineno}: JSON nested too deeply")
    first = next((line for line in text.splitlines() if line.strip()), "")
    if problems and not parsed and not first.lstrip().startswith(("{", "[")):
        # Not one line is JSON, nor begins like a row: the file is something else (a CSV).
        raise UsageError(
            f"{path} does not hold JSON Lines: no line is JSON (line 1 begins {first[:40]!r})"
        )
    return _checked(parsed, problems, check)


def check_kind(path: Path) -> None:
    """One line when a file's first bytes say it is not what its suffix says: Parquet data
    under a text suffix, or JSON under .csv (csv reads any text as one header of odd
    column names, so a JSONL file named .csv read as an empty table)."""
    suffix = path.suffix.lower()
    if suffix not in (*TABLE_SUFFIXES, ".txt"):
        return
    check_readable(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if head.startswith(PARQUET_MAGIC):
        raise UsageError(f"{path} holds Parquet data (it begins with PAR1): name it .parquet")
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    if suffix == ".csv" and first in (b"{", b"["):
        raise UsageError(
            f"{path} holds JSON, not CSV (it begins with {first.decode()}): name it .jsonl "
            "(one object a line) or .json"
        )


# A CSV cell may hold a whole document: Python's default limit (128 KiB) refused a long one.
csv.field_size_limit(1 << 30)


def _csv_rows(path: Path, text: str) -> list[tuple[str, Record]]:
    """Rows of a CSV file with a header, each `where` naming its first line (a quoted cell
    may span lines, so the file is parsed as a stream, not line by line)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    start = 2  # line 1 is the header
    try:
        for row in reader:
            rows.append((f"{path}:{start}", dict(row)))
            start = reader.line_num + 1
    except csv.Error as e:
        raise UsageError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return rows


def has_field(name: str, hint: str) -> Callable[[Record], str | None]:
    """A `check` for read_records: the row must have column `name`."""

    def check(row: Record) -> str | None:
        if name in row:
            return None
        return f"no field '{name}' (fields: {_names(row)})" + (f"; {hint}" if hint else "")

    return check


def raise_problems(problems: list[str]) -> None:
    if not problems:
        return
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more"]
    raise UsageError(problems[0], problems=problems)


def _checked(
    items: list[tuple[str, Any]],
    problems: list[str],
    check: Callable[[Record], str | None] | None,
) -> list[tuple[str, Record]]:
    for where, item in items:
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a JSON object, got {type(item).__name__}")
        elif check is not None and (problem := check(item)) is not None:
            problems.append(f"{where}: {problem}")
    # Report in file order, whichever pass found the problem.
    problems.sort(key=_line_of)
    raise_problems(problems)
    return items


def _line_of(problem: str) -> int:
    head = problem.split(": ", 1)[0]
    tail = head.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def read_json_object(path: Path, what: str = "JSON file") -> dict[str, Any]:
    """A file holding one JSON object (a config), or one line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UsageError(f"{path}: not a valid {what} ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a valid {what} (expected a JSON object)")
    return data


def read_document(path: Path) -> str:
    """The whole text of a file that must hold some (an empty file is an error)."""
    text = read_text(path)
    if not text.strip():
        raise UsageError(f"{path} is empty: it holds no texts")
    return text


def is_table(path: Path) -> bool:
    """Rows with named fields (.jsonl/.json/.csv, any case), rather than one text per line."""
    return path.suffix.lower() in TABLE_SUFFIXES


@dataclass(frozen=True)
class Texts:
    """One text per line of a text file, or one field per row of a table."""

    texts: list[str]
    records: list[Record]  # the whole row of each text (a text line: {default field: line})
    field: str | None  # the field read, None for a text file


def read_texts(
    path: Path,
    field: str | None = None,
    *,
    candidates: tuple[str, ...] = ("text",),
    blank_lines: Literal["skip", "keep"] = "skip",
    hint: str = "",
) -> Texts:
    """Texts from a .txt file (one per line) or a table (`field`, else the first of
    `candidates` that the first row has).

    `blank_lines="skip"` is for inputs (prompts, texts to embed): blank lines are passed over
    and a table's text must not be empty. `"keep"` is for outputs being scored: an empty
    prediction is still a prediction, and line N must stay line N. `hint` ends the message
    about a missing field (which option picks another one).
    """
    text = read_document(path)
    tail = f"; {hint}" if hint else ""
    if not is_table(path):
        # Not splitlines(): it also splits at \f, \x1c, U+2028, ..., so line N of the
        # file would not be text N.
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        if lines[-1] == "":
            lines.pop()
        if blank_lines == "skip":
            lines = [line for line in lines if line.strip()]
        key = field or candidates[0]
        return Texts(lines, [{key: line} for line in lines], None)
    known = field or (candidates[0] if len(candidates) == 1 else None)
    # A known field is checked with the JSON, so one run reports every bad line of either kind.
    rows = read_records(path, has_field(known, hint) if known else None)
    key = known or _first_present(rows[0], candidates, tail)
    texts = field_texts(rows, key, blank_lines=blank_lines, hint=hint)
    return Texts(texts, [row for _, row in rows], key)


def field_texts(
    rows: list[tuple[str, Record]],
    key: str,
    *,
    blank_lines: Literal["skip", "keep"] = "skip",
    numbers: bool = True,
    hint: str = "",
) -> list[str]:
    """Field `key` of every row as text; every bad row is reported at once. Lists, objects,
    null and booleans are refused (str() would turn them into text nobody wrote); numbers
    are written as text unless `numbers` is false (training text)."""
    tail = f"; {hint}" if hint else ""
    problems = []
    texts = []
    allowed = (str, int, float) if numbers else (str,)
    for where, row in rows:
        value = row.get(key)
        if key not in row:
            problems.append(f"{where}: no field '{key}' (fields: {_names(row)}){tail}")
        elif isinstance(value, bool) or not isinstance(value, allowed):
            kind = "text" if numbers else "a string"
            problems.append(f"{where}: field '{key}' must be {kind}, got {value!r:.80}")
        elif blank_lines == "skip" and not str(value).strip():
            problems.append(f"{where}: field '{key}' must be non-empty text, got {value!r}")
        else:
            texts.append(str(value))
    raise_problems(problems)
    return texts


def _first_present(first: tuple[str, Record], candidates: tuple[str, ...], tail: str) -> str:
    where, row = first
    for name in candidates:
        if name in row:
            return name
    raise UsageError(
        f"{where}: none of the fields {', '.join(candidates)} (fields: {_names(row)}){tail}"
    )


def _names(row: Record) -> str:
    return ", ".join(map(str, row)) or "none"
