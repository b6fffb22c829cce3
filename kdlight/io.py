"""Files the project writes and reads, done one way everywhere.

- Atomic writes: data goes to a uniquely named temporary file in the destination's folder, then
  `os.replace` swaps it in, so a reader sees the old file or the new one, never half of one, and
  two writers of the same path never share a temporary file.
- Folders are published the same way (`publish_dir`, `staging_dir`): built aside, renamed in.
- JSON and JSONL readers name the file and line of a parse error.
- SQLite databases are opened read-only (`mode=ro` and `PRAGMA query_only`), for schemas, sample
  values and the execution of model-written SQL alike.

Nothing here imports torch: the SQL scorer's worker processes import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FAILURE_FILE = "error.txt"  # a run that failed writes its traceback here (reports list it as failed)


def _temporary_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A new, unique, empty file next to `path` (same file system, so `os.replace` is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    return Path(name)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    path = Path(path)
    staging = _temporary_sibling(path)
    try:
        if isinstance(data, bytes):
            staging.write_bytes(data)
        else:
            staging.write_text(data)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write with any library (torch.save, ...); swapped in on success."""
    path = Path(path)
    staging = _temporary_sibling(path)
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    return write_atomic(path, json.dumps(data, indent=indent, sort_keys=indent is not None) + "\n")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    return write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a syntax error names the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from err


def read_jsonl(path: str | Path) -> list[Any]:
    """Parse a JSON-lines file (blank lines skipped); a syntax error names the file and line."""
    return [record for _, record in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, record) for each non-blank line of a JSON-lines file."""
    path = Path(path)
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON: {err.msg}") from err
    return records


@contextlib.contextmanager
def staging_dir(destination: str | Path, replace: bool = True) -> Iterator[Path]:
    """A fresh folder to build `destination` in, swapped in whole when the block succeeds.

    `replace=False` is for caches built from the same inputs by whoever comes first: if
    `destination` exists by the time ours is finished, the existing copy is kept (other processes
    may be reading it) and ours is dropped.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    try:
        yield staging
        if replace or not destination.exists():
            _swap_in(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_dir(source: str | Path, destination: str | Path) -> Path:
    """Copy the folder `source` to `destination`, replacing what was there atomically."""
    with staging_dir(destination) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    return Path(destination)


def _swap_in(staging: Path, destination: Path) -> None:
    """Rename `staging` to `destination`, moving an existing `destination` aside first (a folder
    cannot be renamed onto a non-empty one)."""
    retired = None
    if destination.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
        os.rename(destination, retired / destination.name)
    try:
        os.rename(staging, destination)
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def open_sqlite_read_only(path: str | Path) -> sqlite3.Connection:
    """A connection that cannot change the database: `mode=ro` and `PRAGMA query_only`.

    Undecodable text is replaced rather than raising (some real databases hold latin-1 bytes).
    """
    path = Path(path)
    if not path.exists():  # mode=ro never creates a file, but say which one is missing
        raise sqlite3.OperationalError(f"no such database file: {path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    conn.execute("PRAGMA query_only = ON")
    return conn


@contextlib.contextmanager
def sqlite_read_only(path: str | Path) -> Iterator[sqlite3.Connection]:
    """`open_sqlite_read_only` that always closes (sqlite3's own context manager does not)."""
    conn = open_sqlite_read_only(path)
    try:
        yield conn
    finally:
        conn.close()
