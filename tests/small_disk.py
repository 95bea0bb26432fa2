"""A file system that fills up, simulated in this process (mounting a small tmpfs needs root).

Inside ``small_disk(root, free)``, the files Python opens for writing under ``root`` share ``free`` bytes, as
they would on a disk with that much room: a write that does not fit writes the part that fits, then raises
``OSError(ENOSPC)`` as Python's buffered files do (an unbuffered one returns the short count, as ``write(2)``
does, and the next write raises); removing a file gives its room
back, and ``os.statvfs`` under ``root`` reports what is left. Writes that bypass Python's ``open`` (C
libraries: SimpleITK, HDF5) are not limited. Used by the focused tests and the bad-input table's "disks and
signals" rows.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _used(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


class _FillingFile:
    """A file opened for writing under the small disk: every write is checked against the room left."""

    def __init__(self, fh: Any, left) -> None:
        self._fh, self._left = fh, left

    def write(self, data: Any) -> int:
        size = len(data) if isinstance(data, str) else memoryview(data).nbytes
        left = self._left()
        if left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if size > left:
            part = data[:left] if isinstance(data, str) else memoryview(data).cast("B")[:left]
            self._fh.write(part)
            self._fh.flush()
            if isinstance(self._fh, io.RawIOBase):
                return left  # an unbuffered file returns the short count, as write(2) does
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a buffered one raises after the part
        n = self._fh.write(data)
        self._fh.flush()  # the bytes count on disk at once, as the room check reads them there
        return n

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def __iter__(self) -> Iterator:
        return iter(self._fh)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


@contextlib.contextmanager
def small_disk(root: str | os.PathLike, free: int) -> Iterator[None]:
    """Writes under ``root`` get ``free`` bytes in all from now on (see the module docstring)."""
    root = Path(os.path.abspath(root))
    base = _used(root)
    real_open, real_statvfs = builtins.open, os.statvfs

    def left() -> int:
        return free - (_used(root) - base)

    def under(file: Any) -> bool:
        if isinstance(file, int):
            return False
        path = Path(os.path.abspath(os.fsdecode(file)))
        return path == root or root in path.parents

    def opener(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and under(file):
            return _FillingFile(fh, left)
        return fh

    def statvfs(path: Any) -> os.statvfs_result:
        st = real_statvfs(path)
        if not under(path):
            return st
        blocks = max(left(), 0) // st.f_frsize
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, blocks, blocks, *tuple(st)[5:]))

    builtins.open, io.open, os.statvfs = opener, opener, statvfs
    try:
        yield
    finally:
        builtins.open, io.open, os.statvfs = real_open, real_open, real_statvfs
