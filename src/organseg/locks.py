"""One writer per folder: a run folder, a study folder, a results or prediction folder is written by one
organseg process at a time.

The writer holds ``FOLDER/.organseg.lock``, a small file locked with ``flock(2)`` and holding a JSON record of
the holder (pid, host, since when, the command line). A second writer meets the lock and stops with
:class:`FolderBusy`, one line naming that holder. Why this design:

- **A dead holder never blocks.** The kernel releases the lock when the holding process ends, whatever ends
  it (SIGKILL, out of memory, a lost SLURM job), so no pid or age heuristic decides whether a lock is stale. A
  lock file whose lock is free but that still names a holder was left by a process that died: it is taken
  over with a warning line naming that holder.
- **Network file systems.** On a Linux NFS client ``flock`` is carried out as a whole-file POSIX lock through
  the NFS locking protocol (NLM for NFSv3, the protocol itself for NFSv4), so writers on different machines
  exclude each other. Mounted with ``nolock`` or ``local_lock=flock|all`` (and Lustre with ``localflock``)
  locks are local to each machine and writers elsewhere are not seen; a file system without locks (Lustre
  without ``flock``) refuses the call, and the writer goes on with a warning. See docs/architecture.md.
- **Same process.** The emulation on NFS gives POSIX lock semantics: a second lock on the same file from the
  same process succeeds, and closing *any* descriptor of the file drops the process's lock. So a process opens
  each lock file once and keeps a table of what it holds (:data:`_held`): the thread that holds a folder may
  take it again (a study training a grid point in-process, ``demo`` around ``compare``), another thread of
  the process meets :class:`FolderBusy` like another process would.
- **Not inherited.** The descriptor is opened ``O_CLOEXEC`` (programs a writer starts, e.g. ``compare --jobs``
  children, do not get it), and a forked child (a DataLoader worker) closes its copy at once, so a child that
  outlives the writer never keeps the folder locked.
- **No leftovers.** A writer that ends, well or not, removes its lock file, and the folders the lock created
  when they are still empty: a command that fails leaves the place as it found it. The name is hidden and the
  output checks (:func:`organseg.data.completion.own_entries`) ignore it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from organseg.errors import OutputError
from organseg.fileio import check_output_dir

try:
    import fcntl
except ImportError:  # not POSIX (Windows): folders are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".organseg.lock"
LOCK_FORMAT = "organseg-lock/1"
# errno values of a file system that does not do locks at all (Lustre without -o flock: ENOSYS; NFSv3 with no
# lock daemon reachable: ENOLCK).
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_COMMAND_CHARS = 300


class FolderBusy(OutputError):
    """Another organseg process (or another thread of this one) writes the folder; the message names it."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a folder's lock, as recorded in its lock file."""

    pid: int | None = None
    host: str = "?"
    since: float | None = None  # Unix time
    command: str = ""
    what: str = ""

    @classmethod
    def from_text(cls, text: str) -> Holder | None:
        """The record of a lock file; None when it is empty or not a record (being written, or damaged)."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT:
            return None
        pid, since = data.get("pid"), data.get("since_unix")
        return cls(
            pid=pid if isinstance(pid, int) else None,
            host=str(data.get("host") or "?"),
            since=float(since) if isinstance(since, (int, float)) else None,
            command=str(data.get("command") or ""),
            what=str(data.get("what") or ""),
        )

    def to_text(self) -> str:
        record = {
            "format": LOCK_FORMAT,
            "pid": self.pid,
            "host": self.host,
            "since": _utc(self.since),
            "since_unix": self.since,
            "what": self.what,
            "command": self.command,
        }
        return json.dumps(record) + "\n"

    def describe(self, now: float | None = None) -> str:
        """``pid 123 on node7 since 2025-05-01 10:00:00 UTC (12 min ago): organseg train ...``."""
        text = f"pid {self.pid if self.pid is not None else '?'} on {self.host}"
        if self.since is not None:
            ago = max(0.0, (time.time() if now is None else now) - self.since)
            text += f" since {_utc(self.since).replace('T', ' ').replace('Z', ' UTC')} ({_ago(ago)})"
        if self.command:
            text += f": {self.command}"
        elif self.what:
            text += f": organseg {self.what}"
        return text


def _utc(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _command() -> str:
    """This process's command line, as typed where it is ``organseg`` (or ``python -m organseg``)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("organseg", "__main__.py"):
        text = shlex.join(["organseg", *argv[1:]])
    elif not argv or argv[0] in ("", "-c"):  # python -c ..., or an interactive interpreter
        text = shlex.join([Path(sys.executable).name, *argv]) if argv and argv[0] else "python (interactive)"
    else:
        text = shlex.join(argv)
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 3] + "..."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


# ----------------------------------------------------------------------------------- what this process holds


@dataclass
class _Held:
    folder: Path
    lock_file: Path
    fd: int | None  # None: the file system does not lock (the folder is held within this process only)
    holder: Holder
    thread: int
    count: int = 1
    created: list[Path] = field(default_factory=list)


# (st_dev, st_ino) of the folder -> its hold. The folder's identity, not its spelling: a symlink or a
# relative path to a held folder is the same folder.
_held: dict[tuple[int, int], _Held] = {}
_table_lock = threading.Lock()


def _forget_after_fork() -> None:
    """In a forked child: close the inherited lock descriptors (the parent still holds its locks) and forget
    them, so the child neither keeps a folder locked after its parent ends nor releases the parent's locks."""
    global _table_lock
    _table_lock = threading.Lock()  # a thread of the parent may have held it at the fork
    for held in _held.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.close(held.fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and missing parents); returns the folders created, deepest last."""
    missing = []
    p = folder
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    created = []
    for p in reversed(missing):
        try:
            p.mkdir()
            created.append(p)
        except FileExistsError:
            if not p.is_dir():
                raise OutputError(
                    f"{p}: cannot create the folder, a file of that name is in the way"
                ) from None
        except OSError as exc:
            raise OutputError(f"{p}: cannot create the folder ({exc.strerror or exc})") from None
    return created


def _remove_empty(folders: Iterable[Path]) -> None:
    for p in sorted(folders, key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            p.rmdir()  # only when empty: a file someone put there keeps it


def read_holder(folder: str | Path) -> Holder | None:
    """The holder a folder's lock file names (a live one or, if its lock is free, a dead one), or None."""
    try:
        text = (Path(folder) / LOCK_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return Holder.from_text(text)


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 65536, 0).decode("utf-8", "replace")
    except OSError:
        return ""


def _busy(folder: Path, holder: Holder | None, lock_file: Path) -> FolderBusy:
    who = holder.describe() if holder is not None else f"a process whose record in {lock_file} is unreadable"
    # A holder here is alive (the kernel released the locks of the dead); a machine that crashed can leave its
    # lock on the file server for a while (NFSv3 until it reboots): a hint for that case only.
    crashed = (
        f"; if that machine is down, remove {lock_file}"
        if holder is not None and holder.host != socket.gethostname()
        else ""
    )
    return FolderBusy(
        f"{folder}: in use by another organseg process ({who}); wait for it to finish, or write elsewhere"
        + crashed
    )


def _warn(what: str, message: str) -> None:
    print(f"organseg {what}: warning: {message}", file=sys.stderr, flush=True)


def _acquire(folder: Path, what: str) -> tuple[_Held, bool]:
    """Take ``folder``'s lock for the calling thread: (its hold, whether this call took it: False when the
    thread held it already and only the count went up)."""
    lock_file = folder / LOCK_FILE
    check_output_dir(folder, what="")  # a file in the way, a read-only place: named as the verbs name them
    with _table_lock:
        created = _make_folder(folder)
        try:
            st = os.stat(folder)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot use the folder ({exc.strerror or exc})") from None
        key = (st.st_dev, st.st_ino)
        held = _held.get(key)
        if held is not None:
            if held.thread == threading.get_ident():
                held.count += 1
                return held, False
            raise FolderBusy(
                f"{folder}: in use by another thread of this process ({held.holder.describe()}); wait for it "
                "to finish, or write elsewhere"
            )
        holder = Holder(
            pid=os.getpid(), host=socket.gethostname(), since=time.time(), command=_command(), what=what
        )
        fd = _lock_file(folder, lock_file, holder, what, created)
        held = _Held(folder, lock_file, fd, holder, threading.get_ident(), created=created)
        _held[key] = held
        return held, True


def _lock_file(folder: Path, lock_file: Path, holder: Holder, what: str, created: list[Path]) -> int | None:
    """Open and lock ``lock_file``, take over a dead holder's record, write ours; the open descriptor."""
    if fcntl is None:
        return None
    for _ in range(20):  # each retry follows a holder that removed its file (and folder) at that moment
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            created += _make_folder(folder)  # removed with the folder by a holder ending just now
            continue
        except OSError as exc:
            _remove_empty(created)
            raise OutputError(f"{lock_file}: cannot open the lock file ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = _read_fd(fd)
            for _ in range(10):  # the holder writes its record just after taking the lock
                if Holder.from_text(text) is not None:
                    break
                time.sleep(0.05)
                text = _read_fd(fd)
            os.close(fd)
            _remove_empty(created)
            raise _busy(folder, Holder.from_text(text), lock_file) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_LOCKS:
                _remove_empty(created)
                raise OutputError(f"{lock_file}: cannot lock ({exc.strerror or exc})") from None
            with contextlib.suppress(OSError):
                if os.path.getsize(lock_file) == 0:
                    os.unlink(lock_file)  # the empty file this call created
            _warn(
                what,
                f"{folder}: this file system does not lock files ({exc.strerror or exc}); another "
                "organseg writing here at the same time would not be detected",
            )
            return None
        # The file may have been removed (and another made) between our open and our lock by a holder that
        # was ending: then ours is a lock on a file nobody else will look at.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = Holder.from_text(_read_fd(fd))
        if previous is not None:
            state = "is no longer running"
            if previous.host == holder.host and previous.pid is not None and _pid_alive(previous.pid):
                state = "no longer holds it"  # its pid now names another process
            _warn(what, f"{folder}: taking over the lock of {previous.describe()}, which {state}")
        try:
            data = holder.to_text().encode("utf-8")
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)  # readers on other machines of a network file system see the record
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(lock_file)
            _remove_empty(created)
            raise OutputError(f"{lock_file}: cannot write the lock file ({exc.strerror or exc})") from None
        return fd
    _remove_empty(created)
    raise OutputError(f"{lock_file}: the lock file keeps changing; is another organseg starting here?")


def _release(held: _Held) -> None:
    with _table_lock:
        if all(value is not held for value in _held.values()):
            return  # a forked child: its copy was forgotten at the fork
        held.count -= 1
        if held.count > 0:
            return
        for key, value in list(_held.items()):
            if value is held:
                del _held[key]
        if held.fd is not None:
            # Removed while still locked (then closed): a writer arriving now finds no file, or a new one.
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(held.fd), os.stat(held.lock_file)):
                    os.unlink(held.lock_file)
            with contextlib.suppress(OSError):
                os.close(held.fd)
        _remove_empty(held.created)


@dataclass
class FolderLock:
    """What :func:`folder_lock` yields: the folder and whether this call created it."""

    folder: Path
    created: bool = False
    holder: Holder | None = None


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, *, enabled: bool = True) -> Iterator[FolderLock]:
    """Hold ``folder`` (created if missing) as its only writer for the ``with`` body.

    ``what`` is the verb (``"train"``), for the record and the messages. Raises :class:`FolderBusy`, before
    the body, when another process or another thread holds the folder; the thread that holds it may enter
    again. On exit the lock file goes, and so do the folders this call created if they are still empty.
    ``enabled=False`` takes nothing (the other ranks of a distributed training: rank 0 holds the folder).
    """
    folder = Path(folder)
    if not enabled:
        yield FolderLock(folder)
        return
    held, took = _acquire(folder, what)
    try:
        yield FolderLock(folder, created=took and folder in held.created, holder=held.holder)
    finally:
        _release(held)


@contextlib.contextmanager
def folder_locks(folders: Iterable[str | Path], what: str) -> Iterator[list[FolderLock]]:
    """:func:`folder_lock` on several folders (taken in sorted order, so two writers cannot deadlock)."""
    unique = sorted({Path(f) for f in folders}, key=str)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(folder_lock(f, what)) for f in unique]


def holds(folder: str | Path) -> bool:
    """Whether this process holds ``folder``'s lock."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    with _table_lock:
        return (st.st_dev, st.st_ino) in _held


__all__ = [
    "LOCK_FILE",
    "FolderBusy",
    "FolderLock",
    "Holder",
    "folder_lock",
    "folder_locks",
    "holds",
    "read_holder",
]
