"""Reading and cleaning corpora: text files, JSONL/JSON/CSV columns, hub datasets.

A *document* is one text file, or one row of a JSONL/CSV file. Cleaning works on lines
(rows for tabular data): strip, drop lines shorter than `min_chars`, drop exact duplicates.
Documents are kept apart so packing can put an EOS between them.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit import assets
from llmkit.errors import UsageError
from llmkit.io import files

TEXT_SUFFIXES = (".txt", ".md")
TABLE_SUFFIXES = files.TABLE_SUFFIXES
HUB_PREFIX = "hub:"


@dataclass(frozen=True)
class Corpus:
    documents: list[str]
    n_lines_read: int
    n_lines_kept: int

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def expand_sources(sources: Iterable[str]) -> list[str]:
    """Files (sorted, de-duplicated) for local sources; `hub:` names are kept as they are."""
    out: list[str] = []
    for src in sources:
        if assets.is_embedded(src):
            corpora = {
                "shakespeare": assets.shakespeare_files,
                "shakespeare-excerpt": assets.shakespeare_excerpt_files,
                "peoples-daily": assets.peoples_daily_files,
            }
            name = assets.embedded_name(src)
            if name not in corpora:
                valid = ", ".join(assets.EMBEDDED_PREFIX + n for n in corpora)
                raise UsageError(f"data.sources: unknown embedded corpus '{src}' (valid: {valid})")
            out += [str(p) for p in corpora[name]()]
        elif src.startswith(HUB_PREFIX):
            out.append(src)
        elif Path(src).is_dir():
            found = sorted(str(p) for p in _walk(Path(src)) if _is_corpus_file(p))
            if not found:
                raise UsageError(
                    f"data.sources: folder {src} holds no .txt/.jsonl/.json/.csv/.parquet file"
                )
            out += found
        elif any(ch in src for ch in "*?["):
            found = sorted(glob.glob(src, recursive=True))
            if not found:
                raise UsageError(f"data.sources: no file matches {src}")
            out += found
        else:
            out.append(src)
    for path in out:
        if not path.startswith(HUB_PREFIX):
            files.check_readable(Path(path))  # missing, broken link, FIFO: one line each
    return list(dict.fromkeys(out))


def _is_corpus_file(path: Path) -> bool:
    return path.suffix.lower() in (*TEXT_SUFFIXES, *TABLE_SUFFIXES, ".parquet")


def _walk(folder: Path) -> Iterator[Path]:
    """Every file under `folder`, following links to files but never into linked folders (a
    link loop would recurse forever); broken links are yielded, to be reported by name."""
    for root, dirs, names in os.walk(folder, onerror=_walk_error):
        dirs.sort()
        yield from (Path(root) / name for name in names)


def _walk_error(error: OSError) -> None:
    raise UsageError(f"data.sources: cannot read folder {error.filename}: {error.strerror}")


def read_corpus(
    sources: Iterable[str], *, text_column: str, min_chars: int, dedupe: bool
) -> Corpus:
    paths = expand_sources(sources)
    seen: set[str] = set()
    documents: list[str] = []
    n_read = n_kept = 0
    for src in paths:
        if src.startswith(HUB_PREFIX) or files.is_table(Path(src)):
            # One document per row: clean the row as a whole.
            for text in _read_rows(src, text_column):
                n_read += 1
                text = text.strip()
                if len(text) < min_chars or (dedupe and text in seen):
                    continue
                seen.add(text)
                n_kept += 1
                documents.append(text)
        else:
            kept = []
            for line in _read_text_lines(Path(src)):
                n_read += 1
                line = line.strip()
                if len(line) < min_chars or (dedupe and line in seen):
                    continue
                if dedupe:
                    seen.add(line)
                kept.append(line)
            n_kept += len(kept)
            if kept:
                documents.append("\n".join(kept))
    if not documents:
        raise UsageError(
            f"data.sources: the corpus is empty after cleaning ({n_read} lines read from "
            f"{len(paths)} source(s); min_chars={min_chars})"
        )
    return Corpus(documents, n_read, n_kept)


def fingerprint(srcs: Iterable[str]) -> str:
    """sha256 over the path and raw bytes of every source file (hub sources: their name)."""
    digest = hashlib.sha256()
    for src in expand_sources(srcs):
        digest.update(src.encode() if src.startswith(HUB_PREFIX) else _file_digest(src))
    return digest.hexdigest()


def _file_digest(path: str) -> bytes:
    h = hashlib.sha256(path.encode())
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise UsageError(f"data.sources: cannot read {path}: {e.strerror}") from None
    return h.digest()


def _read_text_lines(path: Path) -> list[str]:
    return files.read_text(path).splitlines()


def _read_rows(src: str, column: str) -> Iterator[str]:
    if src.startswith(HUB_PREFIX):
        yield from _read_hub(src.removeprefix(HUB_PREFIX), column)
        return
    rows = files.read_records(Path(src), files.has_field(column, hint="set data.text_column"))
    # null is a row without text (dropped by cleaning, like an empty one); a list or number
    # is not text, and str() of it would train on a Python repr nobody wrote.
    texts = [(where, row) for where, row in rows if row[column] is not None]
    yield from files.field_texts(
        texts, column, blank_lines="keep", numbers=False, hint="set data.text_column"
    )


def _read_hub(name: str, column: str) -> Iterator[str]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split="train")
    except Exception as e:  # datasets raises many types when the hub is unreachable
        raise UsageError(f"data.sources: cannot load hub dataset '{name}': {e}") from e
    if column not in ds.column_names:
        raise UsageError(f"hub dataset {name}: no column '{column}' (columns: {ds.column_names})")
    yield from (str(t or "") for t in ds[column])
