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
import errno
import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

class UnreadableDatabase(sqlite3.DatabaseError):
    """A file that SQLite cannot open as a database; the message names it."""


FAILURE_FILE = "error.txt"  # a run that failed writes its traceback here (reports list it as failed)


def _temporary_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A new, unique, empty file next to `path` (same file system, so `os.replace` is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    return Path(name)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path) as staging:
        if isinstance(data, bytes):
            staging.write_bytes(data)
        else:
            staging.write_text(data)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write with any library (torch.save, ...); swapped in on success.

    A write that fails (a full disk most often) raises an `OSError` naming `path` and the free
    space left, and leaves neither the temporary file nor a damaged `path` behind.
    """
    path = Path(path)
    staging = _temporary_sibling(path)
    try:
        yield staging
        os.replace(staging, path)
    except OSError as error:
        raise write_failure(path, error) from error
    except RuntimeError as error:
        if not _TORCH_WRITE_FAILED.search(str(error)):  # anything else torch.save may raise is not a write failure
            raise
        raise write_failure(path, error) from error
    finally:
        staging.unlink(missing_ok=True)


_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How torch's file writer reports a write that did not go through (a full disk, a file size limit).
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|file write failed|PytorchStreamWriter failed writing")


def write_failure(path: Path, error: BaseException) -> OSError:
    """An error that says which file could not be written, and how much room its disk has."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free on its disk"
    except OSError:
        free = "its disk's free space unknown"
    code = getattr(error, "errno", None)
    if code in _SPACE_ERRORS:
        why = "no space left, or a file size limit"
    elif isinstance(error, OSError):
        why = "the write failed"
    else:  # torch's writer: it does not say why
        why = "the write failed: is the disk full?"
    return OSError(code or errno.EIO, f"could not write {path} ({why}: {error}; {free}); nothing was "
                                      "replaced: free some space and run the same command again")


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Valid JSON always: a NaN or infinite number is written as null (JSON has neither)."""
    text = json.dumps(finite(data), indent=indent, sort_keys=indent is not None, allow_nan=False)
    return write_atomic(path, text + "\n")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    return write_atomic(path, "".join(json.dumps(finite(record), allow_nan=False) + "\n" for record in records))


def finite(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


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
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # fails here if it is no database
    except sqlite3.DatabaseError as error:
        conn.close()
        raise UnreadableDatabase(f"{path}: not a readable SQLite database ({error})") from error
    return conn


@contextlib.contextmanager
def sqlite_read_only(path: str | Path) -> Iterator[sqlite3.Connection]:
    """`open_sqlite_read_only` that always closes (sqlite3's own context manager does not)."""
    conn = open_sqlite_read_only(path)
    try:
        yield conn
    finally:
        conn.close()
