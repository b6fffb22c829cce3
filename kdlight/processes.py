"""Worker processes that never outlive the process that started them.

A pool's workers wait on a queue whose writing end they hold themselves, so when the parent is
killed (kill -9, an out-of-memory kill, a SLURM time-out) nothing tells them to stop: each SQL
scoring worker would stay alive, holding its memory, for good. Every pool the project starts comes
from `worker_pool`: its workers ask the kernel to kill them when their parent dies (Linux
`PR_SET_PDEATHSIG`), and watch the parent's process id as well (other systems, and the moment
before the request took effect).

No torch here: the SQL scorer's workers import this module.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 1.0


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` fresh processes (spawned: forking a process that holds torch threads is
    unsafe) that end when this process ends, however it ends."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent,
                               initargs=(os.getpid(),))


def die_with_parent(parent: int) -> None:
    """Make the calling process end when process `parent` does."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl: the watcher below still works
            pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL_S)
    os._exit(1)
