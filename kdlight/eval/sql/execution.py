"""Execute model-written SQL safely: read-only, one statement, a real time limit, capped rows.

Predictions are untrusted model output. Three independent guards keep a database unchanged: the
file is opened with SQLite's `mode=ro`, `PRAGMA query_only` is set (both by
`kdlight.io.open_sqlite_read_only`, the project's one read-only opener), and an authorizer allows
only reads (no ATTACH, PRAGMA, writes or schema changes). The time limit is a
progress handler that makes SQLite itself abort the running statement, so it also stops queries
that never return a row (an unbounded recursive CTE under an aggregate).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from kdlight.io import open_sqlite_read_only

# Authorizer action codes that a SELECT needs; everything else is denied.
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_PROGRESS_EVERY = 1000  # SQLite VM instructions between time checks (~microseconds)


@dataclass(frozen=True)
class ExecResult:
    """Rows of one execution, or why there are none. `ok` is False on error or timeout."""

    rows: list[tuple] | None = None
    columns: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def execute(db_path: str | Path, sql: str, timeout_s: float = 5.0, max_rows: int = 100_000) -> ExecResult:
    """Run `sql` on the database at `db_path` and return its rows.

    Errors, timeouts and results with more than `max_rows` rows come back as an `ExecResult`
    with `error` set; nothing is raised, because a broken prediction is simply wrong.
    """
    try:
        conn = open_sqlite_read_only(Path(db_path))
    except sqlite3.Error as err:
        return ExecResult(error=f"cannot open {db_path}: {err}")
    conn.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in _ALLOWED else sqlite3.SQLITE_DENY)
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY)
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            return ExecResult(error=f"more than {max_rows} rows")
        columns = tuple(d[0] for d in cursor.description or ())
        return ExecResult(rows=rows, columns=columns)
    except sqlite3.OperationalError as err:
        if time.monotonic() > deadline:
            return ExecResult(error=f"timeout after {timeout_s:g}s")
        return ExecResult(error=f"{type(err).__name__}: {err}")
    except (sqlite3.Error, ValueError, OverflowError) as err:  # ValueError: e.g. two statements
        return ExecResult(error=f"{type(err).__name__}: {err}")
    finally:
        conn.close()
