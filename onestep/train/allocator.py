"""CPU allocator settings for training loops: keep freed memory in the process (glibc malloc).

A training iteration frees and re-allocates the same activation buffers every step. With
glibc's defaults, freed memory at the top of the heap goes back to the OS (trim threshold
128 KiB, growing only with the largest freed block) and the next iteration page-faults it in
again, zero-filled: about 3,000-5,000 minor page faults per iteration of the digits demo on
2 CPU cores. Raising the trim and mmap thresholds keeps the memory in the process, the effect
PyTorch's CPU performance guide gets from jemalloc or tcmalloc. Blocks above 32 MiB (glibc's
largest mmap threshold) are still mapped and unmapped per use.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc malloc.h
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 2**30
TOP_PAD = 64 * 2**20


def retain_freed_memory() -> bool:
    """Apply the settings to this process; False where the C library is not glibc (no change)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
