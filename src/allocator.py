"""The C allocator of a CPU process, told to keep the memory PyTorch frees.

glibc's ``malloc``, as every process gets it, maps every block over its threshold (at most 32 MB) afresh from the
system and hands it back when freed. A batch's activations are such blocks, so on a CPU every layer of every step
pays page faults for memory it has just released: training steps take 1.4-4.3 times as long, and a batch of 50
photos at 224 px 2.7 times as long to classify (``bench/passes.py``, docs/design.md). Kept in the heap instead,
freed blocks are reused. The arithmetic, and so every answer, is the same; what it costs is that the process keeps
its peak memory until it exits, and that peak is higher (1.22× in ``bench/passes.py``).

The entry points call :func:`keep_freed_memory`: the command line, :func:`~src.helpers.setup_env` (the
notebooks' training runs), the app and the Ray workers. A program that imports the package for speed on a CPU
calls it once at start. Elsewhere (another C library, or the user's own ``MALLOC_*`` or ``GLIBC_TUNABLES``
settings, or an allocator in ``LD_PRELOAD``) it changes nothing.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc mallopt(3): free memory at the heap's top kept up to this many bytes
M_MMAP_MAX = -4  # glibc mallopt(3): most blocks mapped from the system at once; 0 takes every block from the heap
KEEP_BYTES = 2**31 - 1  # the largest trim threshold mallopt takes: freed memory stays for the next blocks
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def runs_on_glibc() -> bool:
    """Whether this process's C library is glibc (Linux, not musl or another system's)."""
    names = getattr(os, "confstr_names", {})
    return "CS_GNU_LIBC_VERSION" in names and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


def keep_freed_memory() -> bool:
    """Tell glibc to take every block from its heap and keep what is freed there (``mallopt``); calling it again
    changes nothing. True when the setting is in force; False where the C library is not glibc or the user set
    the allocator."""
    preloaded = "malloc" in os.environ.get("LD_PRELOAD", "")  # jemalloc, tcmalloc, mimalloc
    if not runs_on_glibc() or preloaded or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
