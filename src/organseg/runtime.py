"""Process settings that make CPU work faster without changing any number.

glibc's malloc serves large blocks (above a threshold that adapts up to 32 MB) with fresh ``mmap`` pages and
gives them back to the system on ``free``; it also trims the top of the heap once enough is free there.
PyTorch allocates the activations of every iteration anew, so on a CPU a training step or a batched forward
pass spends a large part of its time in page faults, the kernel zeroing fresh pages for tensors of the same
size that were freed a moment before. :func:`tune_malloc` makes malloc keep freed memory for reuse (no
``mmap`` for large blocks, a 1 GiB trim threshold); the measured gain is in docs/training.md ("Where the
network time goes"). It is the fix ``LD_PRELOAD=libjemalloc.so`` (or tcmalloc) gives, without a library to
install.

The price is that memory a process has freed stays with it until it exits, which is what a training or
inference process wants. Only glibc on Linux is touched; ``ORGANSEG_MALLOC_TUNING=0`` turns it off. The
``organseg`` command line calls it at start; a library user may call it once at the start of a script.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30  # mallopt takes an int: 1 GiB


def tune_malloc() -> bool:
    """Tune glibc malloc for large, short-lived tensors (see the module notes). True when it was applied;
    False with ``ORGANSEG_MALLOC_TUNING=0``, off Linux, or without glibc. Safe to call more than once."""
    if os.environ.get("ORGANSEG_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only: musl's mallopt ignores these options)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
