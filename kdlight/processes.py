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
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HEAP_BLOCKS_BELOW = 32 << 20  # bytes: smaller blocks come from the heap (glibc's own upper limit)
KEEP_FREE_HEAP = 256 << 20  # bytes of freed heap kept for the next allocations


def prepare_compute(threads: int | None) -> None:
    """What every command sets before it computes: torch's thread count (None or 0: torch's
    default) and `keep_freed_memory`."""
    keep_freed_memory()
    if threads:
        import torch  # here, not at the top: the SQL scorer's workers import this module

        torch.set_num_threads(threads)


def keep_freed_memory() -> bool:
    """Let glibc's allocator keep freed memory for the next allocations instead of handing it back
    to the kernel (Linux); False where it cannot (another C library or system).

    A training step allocates and frees the same tensors every step. By default glibc gives a
    block freed at the top of its heap back to the kernel once a few MB lie free there (its
    thresholds follow the largest block freed so far), so the next step's tensors fault all their
    pages in again: on a 2-core machine a divergence over [512, 1024] logits took 6-9 ms instead of
    2-3 ms, the same work. Fixed thresholds end it: blocks under 32 MiB come from the heap, and up
    to 256 MiB of freed heap stay in the process (its memory use can stay that much above what it
    holds). PyTorch's CPU tuning guides get the same effect by preloading jemalloc or tcmalloc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_HEAP))


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
