"""Process settings every command applies (kdlight.processes.prepare_compute)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

# Frees an 8 MiB tensor, then asks glibc how much free memory its heap kept (mallinfo2.fordblks).
PROBE = """
import ctypes, sys
import torch
from kdlight.processes import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = torch.ones(2 << 20)  # 8 MiB of float32
del block
print(libc.mallinfo2().fordblks)
"""


def kept_after_free(keep: bool) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, "keep" if keep else "default"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def _glibc_with_mallinfo2() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs Linux with glibc 2.33+ (mallopt, mallinfo2)")
def test_freed_memory_stays_in_the_process_for_the_next_step():
    """By default glibc hands a freed 8 MiB block back to the kernel (the next allocation faults its
    pages in again); with `keep_freed_memory` it stays in the heap, free for the next allocation."""
    assert kept_after_free(keep=False) < 1 << 20
    assert kept_after_free(keep=True) >= 8 << 20
