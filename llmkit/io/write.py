"""The one atomic writer: every file and folder llmkit writes appears whole or not at all,
and nothing llmkit did not make is ever replaced or deleted.

Each output is written to a temporary sibling (same folder, so the same filesystem) and
renamed into place: `os.replace` is atomic on POSIX, so a crash, Ctrl-C or full disk leaves
either the old file or the new one, never half of one, and readers never see a partial file.

Before any work, `check_output` makes sure the destination can be written, is of the right
kind and is none of the inputs (generating from q.txt into q.txt once replaced the
prompts). Folders llmkit makes (runs, exports, evaluations) carry a marker file; only
folders with one are ever replaced (`remove_owned`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.errors import Fix, UsageError

MARKER = ".llmkit"  # {"kind": "run" | "export" | "eval"} in every folder llmkit makes


# --- before any work -----------------------------------------------------------------------------


def check_output(
    path: Path,
    inputs: Iterable[Path | None] = (),
    *,
    folder: bool = False,
    overwrite: bool = True,
) -> None:
    """Refuse, in one line and before any work, an output that cannot be written where
    asked, is the wrong kind (a folder for a file, or the reverse), is one of `inputs` (the
    same path, or another name for the same file), or (unless `overwrite`) is a file that
    exists: a file carries no marker, so replacing one needs the user's word."""
    if path.exists() or path.is_symlink():
        if folder and not path.is_dir():
            raise UsageError(f"output {path} exists and is not a folder")
        if not folder and path.is_dir():
            raise UsageError(f"output {path} is a folder; give a file name")
        if not folder and not path.is_file():
            raise UsageError(f"output {path} is not a regular file")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise UsageError(
                f"output {path} is also an input ({source}): llmkit never overwrites its "
                "inputs; write the output elsewhere"
            )
    if not folder and not overwrite and path.exists():
        raise UsageError(f"output {path} already exists", fix=Fix.OVERWRITE)
    _check_writable(path if folder and path.is_dir() else _nearest_folder(path.parent))


def same_file(a: Path, b: Path) -> bool:
    """The same file or folder under either name (symlinks, `..`, hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist
        return False


def _nearest_folder(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path) -> None:
    """A real probe (create and delete a file): permission bits say nothing for root, and a
    read-only filesystem refuses root too."""
    if not folder.is_dir():
        raise UsageError(f"cannot write under {folder}: it is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".llmkit-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write in {folder}: {e.strerror}") from None


# --- folders llmkit owns ---------------------------------------------------------------------


def mark_owned(folder: Path, kind: str) -> None:
    """Mark a folder llmkit has just made as its own (the only kind it may replace later)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / MARKER, {"kind": kind})


def owner_kind(folder: Path) -> str | None:
    """The kind in a folder's marker ("run", "export", "eval"), or None if llmkit did not
    make it."""
    try:
        kind = json.loads((folder / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def check_replaceable(folder: Path, kind: str) -> None:
    """Raise unless `folder` is a `kind` folder llmkit made and is neither the working folder
    nor one of its parents: what overwriting may delete."""
    resolved, cwd = folder.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"{folder} is the working folder or one of its parents: never replaced")
    found = owner_kind(folder)
    if found != kind:
        made = f"an llmkit {found} folder" if found else f"not made by llmkit (no {MARKER} file)"
        raise UsageError(
            f"{folder} is {made}, so llmkit will not replace it; choose another folder "
            "(or delete it yourself)"
        )


def remove_owned(folder: Path, kind: str) -> None:
    check_replaceable(folder, kind)
    shutil.rmtree(folder)


# --- writing -------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to; renamed onto `path` when the block ends
    without an error, removed when it raises. The temporary name keeps the suffix, so
    writers that add one (np.save adds .npy) write where we expect."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    """Strict JSON: NaN and infinity (which `json` writes as bare NaN/Infinity, invalid JSON
    that other tools reject) become null."""
    write_text(path, json.dumps(finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def finite(data: Any) -> Any:
    """`data` with every non-finite float replaced by None, for strict JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, non-ASCII kept as is (readable, and ~half the size for CJK)."""
    lines = (json.dumps(finite(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    write_text(path, "".join(lines))


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


# Temporary siblings llmkit makes while writing a folder: `.<name>.<pid>.<random>.llmkit-tmp`
# (the new folder being built) and `.<name>.<pid>.llmkit-old` (the folder it replaces, for
# the instant between two renames). A kill -9 leaves them behind; the name (ours, with the
# writer's pid) is how a later writer knows them, so a user's own hidden folder never matches.
TMP_SUFFIX = ".llmkit-tmp"
OLD_SUFFIX = ".llmkit-old"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def clear_stale(target: Path) -> list[str]:
    """Remove the temporaries that killed llmkit writers left beside `target` (their pid is
    gone); an old folder set aside with no new one in its place is put back. Returns what
    was done, one phrase each, and says it on stderr."""
    parent = target.parent
    if not parent.is_dir():
        return []
    name = re.escape(target.name)
    stale = re.compile(rf"\.{name}\.(\d+)\.(?:[^/]+{re.escape(TMP_SUFFIX)}|llmkit-old)")
    done = []
    for entry in sorted(parent.iterdir()):
        found = stale.fullmatch(entry.name)
        if found is None or not entry.is_dir() or _pid_alive(int(found.group(1))):
            continue
        if entry.name.endswith(OLD_SUFFIX) and not target.exists():
            entry.rename(target)  # killed between the two renames: the old folder is whole
            done.append(f"restored {target} from {entry.name}")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry.name}")
    if done:
        print(
            f"note: cleaned up after a killed llmkit process in {parent}: {'; '.join(done)}",
            file=sys.stderr,
            flush=True,
        )
    return done


def _temp_folder(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(target)
    return Path(
        tempfile.mkdtemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=target.parent
        )
    )


def atomic_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` in a temporary sibling folder and rename it to `target` (which must
    not exist; see `replace_folder`).

    A crash or a concurrent process never leaves a half-written folder behind; if another
    process won the race, its folder is kept and ours dropped.
    """
    tmp = _temp_folder(target)
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def replace_folder(target: Path, build: Callable[[Path], None], *, kind: str) -> Path:
    """Build a new `kind` folder in a temporary sibling, then swap it for `target`: an old
    `target` (which must be llmkit's own, `check_replaceable`) is deleted only after the new
    one is whole, so a kill -9 or full disk mid-way leaves the old folder, never half a new one.
    """
    clear_stale(target)
    if target.exists():
        check_replaceable(target, kind)

    def build_marked(tmp: Path) -> None:
        build(tmp)
        mark_owned(tmp, kind)

    if not target.exists():
        return atomic_folder(target, build_marked)
    old = target.with_name(f".{target.name}.{os.getpid()}{OLD_SUFFIX}")
    tmp = _temp_folder(target)
    try:
        build_marked(tmp)
        target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return target
