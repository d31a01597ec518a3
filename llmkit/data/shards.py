"""Append-only, resumable storage of a prep cache entry under construction.

Each output array (`train_blocks.npy`, `validation_index.npy`, ...) is one file opened for
appending, with 128 bytes reserved in front for its .npy header: written last, once its
shape is known, so the finished entry is plain .npy files that `np.load(mmap_mode="r")`
maps (nanoGPT's train.bin, with a header). Work happens in `.<key>.partial/` next to the
entry and is renamed to `<key>/` when whole.

A shard is what one tokenizer batch adds to every file. After each shard the files are
flushed and fsync'd, then `manifest.json` is replaced atomically with the new file sizes,
each file's xxh3 checksum up to that size, the input position after the shard and the
counters. A kill -9 at any moment leaves a manifest that names only whole shards: a rerun
truncates every file to the manifest's sizes (dropping half a shard) and reads on from its
position, so it writes the same bytes an uninterrupted run does. The dedupe hashes a shard
added are saved beside it (8 bytes a line, checksummed too), so a resumed run drops the same
duplicates.

A resume is verified, never trusted: a manifest that is not JSON, a file missing or shorter
than its recorded size, or bytes whose checksum differs (a disk error, a hand edit) make the
partial entry `Damaged`; the caller sets its files aside and builds it again. Sizes alone once
let damaged tokens through into training. Checking costs one read of what was written (xxh3
runs at ~10 GB/s; the running checksums are kept as the shards are written, not re-read).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from llmkit.io.write import save_npy, write_json

HEADER = 128  # .npy v1 header bytes: magic, version, length and a ~60-90 character dict
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: xxh3 checksums of every file
READ_CHUNK = 1 << 24  # 16 MiB per read while verifying


class Damaged(Exception):
    """A partial entry that fails a check on resume; the message names the file and why."""


class Column:
    """One array file growing by rows of `row_shape`, with a running xxh3 of its rows."""

    def __init__(self, path: Path, dtype: Any, row_shape: tuple[int, ...] = ()) -> None:
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
        if not path.exists():
            path.write_bytes(b"\0" * HEADER)
        self.file = open(path, "r+b")  # noqa: SIM115 (closed by Store.close)
        self.file.seek(0, os.SEEK_END)
        self.checksum = xxhash.xxh3_64()

    def append(self, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        self.checksum.update(data)
        self.file.write(data)

    def resume(self, nbytes: int, checksum: str | None) -> None:
        """Keep the first `nbytes` (a whole shard's end), checking them against `checksum`,
        and continue the running checksum from there (raises Damaged)."""
        size = os.fstat(self.file.fileno()).st_size
        if nbytes == HEADER:  # nothing recorded: start the file over
            self.truncate(HEADER)
            return
        if size < nbytes:
            raise Damaged(f"{self.path.name}: {size:,} bytes, {nbytes:,} recorded")
        self.file.seek(HEADER)
        left = nbytes - HEADER
        while left > 0:
            chunk = self.file.read(min(READ_CHUNK, left))
            self.checksum.update(chunk)
            left -= len(chunk)
        if checksum is not None and self.checksum.hexdigest() != checksum:
            raise Damaged(f"{self.path.name}: checksum differs from the manifest's")
        self.truncate(nbytes)

    @property
    def nbytes(self) -> int:
        return self.file.tell()

    @property
    def n_rows(self) -> int:
        row = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        return (self.nbytes - HEADER) // row

    def truncate(self, nbytes: int) -> None:
        self.file.truncate(nbytes)
        self.file.seek(nbytes)

    def finish(self, shape: tuple[int, ...]) -> None:
        """Write the .npy header for the first prod(shape) items and cut the rest (the causal
        tail shorter than one block)."""
        buf = io.BytesIO()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(buf, {**header, "shape": shape})
        assert len(buf.getvalue()) == HEADER, "a .npy header outgrew its reserved bytes"
        self.file.seek(0)
        self.file.write(buf.getvalue())
        self.truncate(HEADER + int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize)
        self.file.close()


class Store:
    """The columns of a partial entry and its manifest; raises Damaged when a resumed entry
    fails a check (its files are left as they were, for the caller to set aside)."""

    def __init__(self, work: Path, columns: dict[str, tuple[Any, tuple[int, ...]]]) -> None:
        self.work = work
        found = _read_manifest(work / MANIFEST)
        fresh = found is None or found.get("version") != MANIFEST_VERSION
        self.manifest: dict[str, Any] = found if found is not None and not fresh else {}
        if fresh:  # none yet, or an older llmkit's: start over
            self.manifest = {"version": MANIFEST_VERSION, "shards": 0, "sizes": {}, "state": {}}
            self.manifest |= {"checksums": {}, "dedupe": {}}
        sizes, sums = self.manifest["sizes"], self.manifest["checksums"]
        if not fresh:
            missing = [f"{n}.npy" for n in columns if n in sizes and not _exists(work, n)]
            if missing:
                raise Damaged(f"{missing[0]} is missing")
        self.columns: dict[str, Column] = {}
        try:
            for name, (dtype, shape) in columns.items():
                col = self.columns[name] = Column(work / f"{name}.npy", dtype, shape)
                # Drop whatever a killed run wrote after its last whole shard.
                col.resume(sizes.get(name, HEADER), sums.get(name))
            self._check_dedupe()
        except Damaged:
            self.close()
            raise

    def _check_dedupe(self) -> None:
        for name, checksum in self.manifest["dedupe"].items():
            path = self.work / "dedupe" / name
            try:
                data = path.read_bytes()
            except OSError:
                raise Damaged(f"dedupe/{name} is missing") from None
            if xxhash.xxh3_64_hexdigest(data) != checksum:
                raise Damaged(f"dedupe/{name}: checksum differs from the manifest's")

    @property
    def shards(self) -> int:
        return int(self.manifest["shards"])

    @property
    def state(self) -> dict[str, Any]:
        """Position, counters and packer carry as of the last whole shard."""
        return dict(self.manifest["state"])

    def known_hashes(self, phase: int) -> np.ndarray | None:
        """The dedupe hashes of this phase's shards (checked against the manifest already)."""
        names = sorted(n for n in self.manifest["dedupe"] if n.startswith(f"{phase}-"))
        parts = [np.load(self.work / "dedupe" / name) for name in names]
        return np.concatenate(parts) if parts else None

    def commit(self, state: dict[str, Any], hashes: list[int], phase: int) -> None:
        if hashes:
            name = f"{phase}-{self.shards:06d}.npy"
            save_npy(self.work / "dedupe" / name, np.array(hashes, dtype=np.uint64))
            data = (self.work / "dedupe" / name).read_bytes()
            self.manifest["dedupe"][name] = xxhash.xxh3_64_hexdigest(data)
        for col in self.columns.values():
            col.file.flush()
            os.fsync(col.file.fileno())
        self.manifest["shards"] += 1
        self.manifest["sizes"] = {name: col.nbytes for name, col in self.columns.items()}
        self.manifest["checksums"] = {n: c.checksum.hexdigest() for n, c in self.columns.items()}
        self.manifest["state"] = state
        self.manifest["self"] = _manifest_checksum(self.manifest)
        write_json(self.work / MANIFEST, self.manifest)

    def close(self) -> None:
        for col in self.columns.values():
            if not col.file.closed:
                col.file.close()

    def finish(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            self.columns[name].finish(shape)
        self.close()
        shutil.rmtree(self.work / "dedupe", ignore_errors=True)  # ours; not needed once whole


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest, None when there is none; Damaged when it is not a JSON object."""
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise Damaged(f"{MANIFEST} is not JSON ({type(e).__name__})") from None
    keys = {"version": int, "shards": int, "sizes": dict, "state": dict}
    if not isinstance(manifest, dict) or any(
        not isinstance(manifest.get(k), t) for k, t in keys.items()
    ):
        raise Damaged(f"{MANIFEST} is not a manifest llmkit wrote")
    if manifest["version"] == MANIFEST_VERSION and manifest.get("self") != _manifest_checksum(
        manifest
    ):
        # The input position and counters are checked too: a digit changed in them would
        # resume from another place in the corpus and keep whatever that gives.
        raise Damaged(f"{MANIFEST}: checksum differs from its contents")
    return manifest


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "self"}
    return xxhash.xxh3_64_hexdigest(json.dumps(body, sort_keys=True).encode())


def _exists(work: Path, name: str) -> bool:
    return (work / f"{name}.npy").is_file()


def set_aside(work: Path) -> Path:
    """Move a damaged partial entry's files (all but the lock, which its holder keeps) into a
    sibling folder `<work>.damaged[-N]`; returns that folder."""
    aside = work.with_name(work.name + ".damaged")
    n = 2
    while aside.exists():
        aside = work.with_name(f"{work.name}.damaged-{n}")
        n += 1
    aside.mkdir()
    for item in work.iterdir():
        if item.name != ".lock":
            item.rename(aside / item.name)
    return aside


def work_folder(entry: Path) -> Path:
    return entry.parent / f".{entry.name}.partial"


@contextmanager
def locked(work: Path) -> Iterator[None]:
    """One writer per partial entry (a kernel lock: a killed process frees it). A second
    prep of the same data waits for the first, saying whose it is, and then finds the entry
    whole: failing instead would make two runs on one corpus (distinct output folders, or
    the ranks of one run) fail for no reason of their own."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            who = f"llmkit process {pid}" if pid.isdigit() else "another llmkit process"
            print(f"prep: waiting for {who}, which is preparing the same data", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish(work: Path, entry: Path) -> None:
    """Rename the finished work folder into place (atomic); a racing twin's entry is kept."""
    (work / ".lock").unlink(missing_ok=True)
    try:
        work.rename(entry)
    except OSError:
        if not entry.exists():
            raise
        shutil.rmtree(work, ignore_errors=True)
