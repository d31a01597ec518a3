"""Append-only, resumable storage of a prep cache entry under construction.

Each output array (`train_blocks.npy`, `validation_index.npy`, ...) is one file opened for
appending, with 128 bytes reserved in front for its .npy header: written last, once its
shape is known, so the finished entry is plain .npy files that `np.load(mmap_mode="r")`
maps (nanoGPT's train.bin, with a header). Work happens in `.<key>.partial/` next to the
entry and is renamed to `<key>/` when whole.

A shard is what one tokenizer batch adds to every file. After each shard the files are
flushed and fsync'd, then `manifest.json` is replaced atomically with the new file sizes, the
input position after the shard and the counters. A kill -9 at any moment leaves a manifest
that names only whole shards: a rerun truncates every file to the manifest's sizes (dropping
half a shard) and reads on from its position, so it writes the same bytes an uninterrupted
run does. The dedupe hashes a shard added are saved beside it (8 bytes a line), so a resumed
run drops the same duplicates.
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

from llmkit.io.write import save_npy, write_json

HEADER = 128  # .npy v1 header bytes: magic, version, length and a ~60-90 character dict
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class Column:
    """One array file growing by rows of `row_shape`."""

    def __init__(self, path: Path, dtype: Any, row_shape: tuple[int, ...] = ()) -> None:
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
        if not path.exists():
            path.write_bytes(b"\0" * HEADER)
        self.file = open(path, "r+b")  # noqa: SIM115 (closed by Store.close)
        self.file.seek(0, os.SEEK_END)

    def append(self, rows: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())

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
    """The columns of a partial entry and its manifest."""

    def __init__(self, work: Path, columns: dict[str, tuple[Any, tuple[int, ...]]]) -> None:
        self.work = work
        self.manifest: dict[str, Any] = {}
        path = work / MANIFEST
        if path.exists():
            self.manifest = json.loads(path.read_text())
        if self.manifest.get("version") != MANIFEST_VERSION:
            self.manifest = {"version": MANIFEST_VERSION, "shards": 0, "sizes": {}, "state": {}}
        self.columns = {
            name: Column(work / f"{name}.npy", dtype, shape)
            for name, (dtype, shape) in columns.items()
        }
        for name, col in self.columns.items():
            # Drop whatever a killed run wrote after its last whole shard.
            col.truncate(self.manifest["sizes"].get(name, HEADER))

    @property
    def shards(self) -> int:
        return int(self.manifest["shards"])

    @property
    def state(self) -> dict[str, Any]:
        """Position, counters and packer carry as of the last whole shard."""
        return dict(self.manifest["state"])

    def known_hashes(self, phase: int) -> np.ndarray | None:
        parts = [
            np.load(self.work / "dedupe" / f"{phase}-{i:06d}.npy")
            for i in range(self.shards)
            if (self.work / "dedupe" / f"{phase}-{i:06d}.npy").exists()
        ]
        return np.concatenate(parts) if parts else None

    def commit(self, state: dict[str, Any], hashes: list[int], phase: int) -> None:
        if hashes:
            save_npy(
                self.work / "dedupe" / f"{phase}-{self.shards:06d}.npy",
                np.array(hashes, dtype=np.uint64),
            )
        for col in self.columns.values():
            col.file.flush()
            os.fsync(col.file.fileno())
        self.manifest["shards"] += 1
        self.manifest["sizes"] = {name: col.nbytes for name, col in self.columns.items()}
        self.manifest["state"] = state
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
