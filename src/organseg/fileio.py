"""Files organseg writes: the one place that decides how a file reaches the disk and where it may go.

Every writer in organseg goes through this module (see docs/files.md):

- **Atomic**: the content goes to a hidden temporary file in the target's own folder, then ``os.replace``
  puts it in place, so a reader (or a re-run after a crash) sees the old file or the whole new one, never half
  of one. A failed write removes its temporary file; an :class:`OSError` (read-only folder) becomes one
  :class:`~organseg.errors.OutputError` line naming the target, not the temporary. No room for the file (disk
  full, quota exceeded, file size limit: :func:`no_room_error`) says how much it needs and how much is free.
- **Modes as ``open()`` would give**: ``mkstemp`` creates files 0600; the final file gets ``0o666 & ~umask``
  (0644 under the usual umask 022), so a colleague or a container can read datasets, checkpoints and reports.
- **No leftovers**: temporaries are named ``.NAME.PID.RANDOM.tmp[SUFFIX]``. A writer killed with SIGKILL
  cannot clean up, so each write of target ``NAME`` first removes the temporaries of the same target whose
  writer process is gone (see :func:`sweep_stale`).
- **Output places are checked before any work**: :func:`check_output` refuses an output that is, or lies
  inside, or holds one of the verb's inputs; :func:`check_output_dir` / :func:`check_output_file` refuse a
  place that cannot be written (a file where a folder must be, a folder where a file must be, a read-only
  folder) with one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from organseg.errors import DataError, NoRoomError, OutputError

try:
    import resource
except ImportError:  # Windows: no file size limit to read
    resource = None  # type: ignore[assignment]

PathLike = str | os.PathLike

# A temporary whose writer's pid is gone is still left alone this long after its last change: it may belong
# to a writer on another machine sharing the folder (its pid means nothing here), which keeps touching it.
STALE_GRACE_S = 120.0
# Temporaries without a pid in their name (written by organseg before 0.x): removed once this old.
LEGACY_STALE_S = 3600.0

_umask_cache: int | None = None


def process_umask() -> int:
    """The process umask, read once.

    Linux shows it in /proc/self/status (no side effect). Elsewhere the only way is ``os.umask`` set and
    restore, which briefly changes a process-wide setting: a file another thread creates in that instant would
    get the wrong mode. Doing it once, at the first write, and caching the value keeps that window to one
    moment at start-up; organseg never changes the umask itself.
    """
    global _umask_cache
    if _umask_cache is None:
        value = None
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
                if line.startswith("Umask:"):
                    value = int(line.split()[1], 8)
                    break
        if value is None:
            value = os.umask(0o022)
            os.umask(value)
        _umask_cache = value
    return _umask_cache


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the umask."""
    return 0o666 & ~process_umask()


# A temporary's name is bounded whatever its target's: ``.STEM.PID.RANDOM.tmp[SUFFIX]`` with STEM the target's
# name up to this many bytes, else its head and a hash of the whole name. A final name that fits the file
# system (255 bytes) must never fail because its temporary does not.
_TEMP_STEM_BYTES = 100
_TEMP_SUFFIX_CHARS = 16


def _temp_stem(name: str) -> str:
    """The part of a temporary's name that says which target it belongs to: the name itself when short, else
    its first 60 bytes (whole characters) and 12 hex digits of its SHA-1."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _TEMP_STEM_BYTES:
        return name
    head = raw[:60].decode("utf-8", "ignore")
    return f"{head}~{hashlib.sha1(raw).hexdigest()[:12]}"


def _temp_pattern(name: str, suffix: str) -> re.Pattern[str]:
    # mkstemp's random part uses [a-z0-9_], never a dot, so one target's temporaries never match another's.
    stem = re.escape(_temp_stem(name))
    return re.compile(rf"^\.{stem}\.(\d+)\.[a-z0-9_]+\.tmp(?i:{re.escape(suffix)})$")


def _legacy_pattern(name: str) -> re.Pattern[str]:
    """Temporaries of earlier organseg versions: ``.NAME.RANDOM.tmp`` and ``.tmp-RANDOM-NAME``."""
    n = re.escape(name)
    return re.compile(rf"^(\.{n}\.[a-z0-9_]+\.tmp|\.tmp-[a-z0-9_]+-{n})$")


def _pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` runs on this machine; None where that cannot be asked safely."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # Windows' os.kill(pid, 0) would terminate the process
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or an unknowable pid): keep its file
    return True


# Hidden names of each folder, listed once per process at the first write there: listing a folder of 2,000
# training slices before each of 2,000 writes would cost seconds. A temporary that appears later belongs to a
# live writer (this process or another) and is not stale now.
_hidden: dict[str, set[str]] = {}


def _hidden_names(folder: Path) -> set[str]:
    key = os.path.abspath(folder)
    names = _hidden.get(key)
    if names is None:
        try:
            with os.scandir(folder) as it:
                names = {e.name for e in it if e.name.startswith(".")}
        except OSError:
            names = set()
        _hidden[key] = names
    return names


def sweep_stale(target: PathLike, *, now: float | None = None) -> list[Path]:
    """Remove the temporaries a killed writer of ``target`` left behind; returns what was removed.

    A temporary is stale when the process that wrote it (its pid is in the name) no longer runs on this
    machine *and* it has not changed for :data:`STALE_GRACE_S` seconds. The pid test keeps a live writer's
    file (e.g. two ``organseg`` processes writing the same report); the age test keeps the file of a writer on
    another machine sharing the folder, whose pid is meaningless here. A reused pid only delays the clean-up.
    The folder is listed once per process (see ``_hidden``).
    """
    target = Path(target)
    folder = target.parent
    if not folder.is_dir():
        return []
    name = target.name
    hidden = _hidden_names(folder)
    stem = _temp_stem(name)
    candidates = [n for n in hidden if n.startswith((f".{name}.", f".{stem}.", ".tmp-"))]
    if not candidates:
        return []
    now = time.time() if now is None else now
    fresh = [_temp_pattern(name, s) for s in {"", *_suffixes(name)}]
    legacy = _legacy_pattern(name)
    removed = []
    for entry in candidates:
        path = folder / entry
        match = next((m for p in fresh if (m := p.match(entry))), None)
        if match is None and legacy.match(entry) is None:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            hidden.discard(entry)  # gone (renamed into place, or removed by its writer)
            continue
        age = now - st.st_mtime
        if match is not None:
            alive = _pid_alive(int(match.group(1)))
            stale = (alive is False and age > STALE_GRACE_S) or (alive is None and age > LEGACY_STALE_S)
        else:
            stale = age > LEGACY_STALE_S
        if stale and stat.S_ISREG(st.st_mode):
            with contextlib.suppress(OSError):
                os.unlink(path)
                hidden.discard(entry)
                removed.append(path)
    return removed


def _suffixes(name: str) -> list[str]:
    """Suffixes a format-sensitive writer may need on its temporary: ``.nii.gz`` as well as ``.gz``."""
    parts = name.split(".")
    return ["." + ".".join(parts[i:]) for i in range(1, len(parts))] if len(parts) > 1 else []


def keep_suffix(name: str) -> str:
    """The suffix a writer that picks its format by name (SimpleITK) needs: ``.nii.gz`` for a gzip NIfTI.
    In lower case (ITK's NIfTI writer takes ``.nii.gz`` only, while ``SEG.NII.GZ`` is a fine final name; the
    readers go by content), and none beyond :data:`_TEMP_SUFFIX_CHARS` (no format has such a suffix)."""
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double):
            return double
    suffix = Path(lower).suffix
    return suffix if len(suffix) <= _TEMP_SUFFIX_CHARS else ""


def _make_temp(target: Path, suffix: str) -> Path:
    prefix = f".{_temp_stem(target.name)}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{folder}: cannot create the folder, a file of that name is in the way") from None
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the folder ({_reason(exc)})") from None


#: errnos that mean "no room for this file": the one message of :func:`no_room_error`
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _mb(n: int | float) -> str:
    mb = n / 1e6
    if mb < 0.1:
        return f"{max(1, round(n / 1e3))} kB"
    return f"{mb / 1e3:.1f} GB" if mb >= 10_000 else f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _mount_point(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not os.path.ismount(p) and p.parent != p:
        p = p.parent
    return p


def no_room_error(target: PathLike, code: int | None, need: int = 0, *, more: bool = False) -> NoRoomError:
    """The one message of a write that ran out of room (``code``: ENOSPC, EDQUOT or EFBIG): the file, about
    how much it needs (``need`` bytes, 0: unknown; ``more``: at least that, the part written before the
    failure) and how much is free where it goes. Call it after the failed write's temporary is gone, so that
    "free" is what a re-run finds."""
    target = Path(target)
    needs = f"needs {'over' if more else '~'}{' ' if more else ''}{_mb(need)}, " if need > 0 else ""
    place = _nearest_existing(target.parent)
    try:
        st = os.statvfs(place)
        free = f"{_mb(st.f_bavail * st.f_frsize)} free on {_mount_point(place)}"
    except (OSError, AttributeError):
        free = "free space unknown"
    if code == errno.EDQUOT:
        return NoRoomError(target, f"disk quota exceeded ({needs}{free}; your quota is full)")
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
        if resource is not None and limit != resource.RLIM_INFINITY:
            why = f"the file size limit of this process (ulimit -f) is {_mb(limit)}"
        else:
            why = f"beyond the largest file the file system on {_mount_point(place)} takes"
        hint = "raise the limit and run the command again"
        return NoRoomError(target, f"file too large ({needs}{why})", hint)
    return NoRoomError(target, f"disk full ({needs}{free})")


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return exc.strerror or str(exc)


@contextlib.contextmanager
def staged(*targets: PathLike, suffix: bool = False, size_hint: int = 0) -> Iterator[list[Path]]:
    """Temporary paths for a set of files that belong together (a label map and its JSON sidecar).

    The body writes each temporary; on success all are renamed into place, on any failure none is, and a
    target already renamed when a later rename fails is put back as it was (the earlier file, kept by a hard
    link until the set is in place; removed when there was none), so the set appears whole or not at all and
    a failing write never loses what was there. The last target is renamed last: a set whose last file marks
    it complete (a results folder's ``summary.json``) is never marked before the rest is in place.
    ``suffix=True`` keeps each target's format suffix on its temporary (for writers that choose the format
    from the name). An OSError becomes an OutputError naming the target; no room for it, a
    :class:`~organseg.errors.NoRoomError` that says about how much it needs (``size_hint``: the bytes the
    writer expects to write, when it knows).
    """
    finals = [Path(t) for t in targets]
    temps: list[Path] = []
    current = finals[0] if finals else Path()
    try:
        for final in finals:
            current = final
            _mkdir(final.parent)
            if final.is_dir():
                raise OutputError(f"{final}: is a folder; a file is needed here")
            sweep_stale(final)
            temps.append(_make_temp(final, keep_suffix(final.name) if suffix else ""))
        current = finals[0] if finals else current
        yield temps
        mode = file_mode()
        for tmp, final in zip(temps, finals, strict=True):
            current = final
            os.chmod(tmp, mode)
        done: list[tuple[Path, Path | None]] = []
        try:
            for tmp, final in zip(temps, finals, strict=True):
                current = final
                previous = _keep_previous(final) if len(finals) > 1 else None
                try:
                    os.replace(tmp, final)
                except BaseException:
                    if previous is not None:
                        with contextlib.suppress(OSError):
                            previous.unlink()
                    raise
                done.append((final, previous))
        except BaseException:
            for final, previous in reversed(done):
                with contextlib.suppress(OSError):
                    if previous is not None:
                        os.replace(previous, final)
                    else:
                        final.unlink()
            raise
        finally:
            for _, previous in done:
                if previous is not None:
                    with contextlib.suppress(OSError):
                        previous.unlink()
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise OutputError(f"{current}: cannot write ({_reason(exc)})") from None
        # What the file needs: as much as its previous version, or more than the part written before the
        # failure; the temporaries go first, so the space they held counts as free.
        expected = max(_size(current), size_hint if finals and current == finals[0] else 0)
        mine = [tmp for tmp, final in zip(temps, finals, strict=False) if final == current]
        written = max([0, *map(_size, mine)])
        _remove(temps)
        raise no_room_error(current, exc.errno, max(expected, written), more=written > expected) from None
    finally:
        _remove(temps)


def _keep_previous(final: Path) -> Path | None:
    """A hard link to ``final`` (None when there is none) under a temporary name: the earlier file of a set,
    put back by :func:`staged` if a later rename of the set fails. Without hard links (some network file
    systems) the earlier file cannot be kept cheaply, and None leaves the old behaviour: removed."""
    if not final.is_file():
        return None
    keep = _make_temp(final, "")  # a temporary's name: swept like one when a killed writer leaves it
    try:
        keep.unlink()
        os.link(final, keep)
    except OSError:
        with contextlib.suppress(OSError):
            keep.unlink()
        return None
    return keep


def _remove(temps: list[Path]) -> None:
    for tmp in temps:
        with contextlib.suppress(OSError):
            tmp.unlink()


class WholeWrites:
    """A binary file whose ``write`` writes all it is given or raises what stopped it, and keeps that
    exception (:attr:`error`) for whoever drives it.

    ``torch.save``'s zip writer swallows an exception its file raises and fails later with its own
    ("unexpected pos ...", a multi-line RuntimeError), and a buffered file may return a short count when the
    disk fills in the middle of a write; either way the reason (ENOSPC, or a stop signal whose handler ran in
    the write: organseg.stopping) is lost. The caller re-raises :attr:`error` instead, which :func:`staged`
    words (:func:`no_room_error`). After a failure every write fails at once."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        if self.error is not None:
            raise self.error
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = self.fh.write(view[done:])
                if not n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no progress: nothing more fits
                done += n
        except BaseException as exc:
            self.error = exc
            raise
        return done

    def flush(self) -> None:
        self.fh.flush()


def atomic_write(
    path: PathLike, write: Callable[[Path], None], *, suffix: bool = False, size_hint: int = 0
) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then put it in place as ``path`` (see module doc);
    ``size_hint``: about how many bytes it writes, for the message when they do not fit."""
    with staged(path, suffix=suffix, size_hint=size_hint) as (tmp,):
        write(tmp)


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 1 MiB blocks: checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one (fsync'ed)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write, size_hint=len(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    """UTF-8 text through :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------------- output places


def _resolved(path: PathLike) -> Path:
    try:
        return Path(os.path.abspath(path)).resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # Python < 3.13 raises RuntimeError for a loop, later ones ELOOP
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise
        raise OutputError(
            f"{path}: the path runs through a loop of symbolic links (a link that leads back to itself); "
            "fix or remove the link"
        ) from None


def _same(a: PathLike, b: PathLike) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return _resolved(a) == _resolved(b)


def _inside(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def check_output(
    out: PathLike,
    inputs: Mapping[str, PathLike | None],
    *,
    what: str = "--out",
    folder: bool = False,
    owned: Sequence[str] | None = None,
) -> None:
    """Refuse an output that would write over or into one of the verb's inputs (OutputError, one line).

    ``inputs`` maps how the user named each input (``"INPUT"``, ``"--data"``) to its path; None entries are
    skipped. An output is refused when it is the same file or folder as an input (symlinks and hard links
    followed), or lies inside an input folder. For a ``folder`` output, an input inside it is refused too,
    unless ``owned`` lists the names the verb writes in that folder and the input lies outside all of them.
    """
    out_r = _resolved(out)
    for name, inp in inputs.items():
        if inp is None or str(inp) == "":
            continue
        inp_r = _resolved(inp)
        if _same(out, inp):
            raise OutputError(
                f"{what} {out} is the same as {name} {inp}: it would be overwritten; choose another path"
            )
        if _inside(out_r, inp_r):
            raise OutputError(
                f"{what} {out} lies inside {name} {inp}: organseg does not write into its inputs; "
                "choose a place outside it"
            )
        if folder and _inside(inp_r, out_r):
            places = [out_r] if owned is None else [out_r / n for n in owned]
            if any(inp_r == p or _inside(inp_r, p) for p in places):
                raise OutputError(
                    f"{what} {out} holds {name} {inp}, which writing there could overwrite; "
                    "choose another output folder"
                )


def input_index(inputs: Sequence[PathLike]) -> dict[Path, PathLike]:
    """The inputs by resolved path, for :func:`check_outputs_against` (made once for many outputs)."""
    return {_resolved(p): p for p in inputs}


def check_outputs_against(
    outputs: Mapping[str, PathLike],
    inputs: Sequence[PathLike],
    *,
    index: Mapping[Path, PathLike] | None = None,
) -> None:
    """:func:`check_output` of every output against every input, for many of both (``predict`` over a folder
    of scans): the inputs are indexed by resolved path once (``index``, :func:`input_index`, when the caller
    checks the outputs of many cases against the same inputs), so each output costs a look-up per parent
    folder instead of a comparison with every input; only a hit goes through ``check_output`` for its
    message."""
    index = input_index(inputs) if index is None else index
    for what, out in outputs.items():
        r = _resolved(out)
        for place in (r, *r.parents):
            if place in index:
                check_output(out, {"INPUT": index[place]}, what=what)


def check_distinct(outputs: Mapping[str, PathLike | None]) -> None:
    """Refuse two outputs of one verb that are the same file (e.g. ``--overlay`` equal to ``--out``)."""
    items = [(k, v) for k, v in outputs.items() if v is not None]
    for i, (a, pa) in enumerate(items):
        for b, pb in items[i + 1 :]:
            if _same(pa, pb):
                raise OutputError(f"{a} {pa} and {b} {pb} are the same file; give them different paths")


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def _check_place(folder: Path, label: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{label}: {folder} is a file, not a folder")
    base = _nearest_existing(folder)
    if base.exists() and not base.is_dir():
        raise OutputError(f"{label}: {base} is a file, not a folder")
    if base.is_dir() and not os.access(base, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(base) else "permission denied"
        raise OutputError(f"{label}: cannot write in {base} ({reason})")


def check_output_dir(path: PathLike, *, what: str = "--out") -> Path:
    """Check, without creating anything, that ``path`` can be (or is) a folder organseg can write in.

    OutputError naming the path when it is a file, when a part of it is a file, or when the nearest existing
    folder is not writable (read-only folder or file system). Returns ``path`` as a Path.
    """
    path = Path(path)
    label = f"{what} {path}".strip()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{label}: is a file; a folder is needed here")
    _check_place(path, label)
    return path


def check_output_file(path: PathLike, *, what: str = "--out") -> Path:
    """Like :func:`check_output_dir` for a file to be written: a folder in its place is refused too."""
    path = Path(path)
    label = f"{what} {path}".strip()
    if path.is_dir():
        raise OutputError(f"{label}: is a folder; a file is needed here")
    _check_place(path.parent, label)
    return path


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------- small documents


def yaml_problem(exc: Exception) -> str:
    """A YAML parser error in one line: the problem and where (PyYAML's own message runs over lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    reason = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{reason}{where}"


def read_text(path: PathLike, what: str = "file") -> str:
    """UTF-8 text of a small document; DataError (one line, the path named) if it is missing, unreadable or
    binary (a UnicodeDecodeError is a ValueError that JSON and YAML handlers tend to let through)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a {what}") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a text {what} (byte {exc.start} is not UTF-8: binary or damaged)"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def read_json(path: PathLike, what: str = "JSON file", kind: type | None = dict) -> Any:
    """A JSON document whose top level is ``kind`` (None: any); DataError naming the file otherwise."""
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"{path}: not valid JSON, cannot read the {what} ({exc.msg} at {where})") from None
    if kind is not None and not isinstance(data, kind):
        raise DataError(f"{path}: expected a JSON {kind.__name__} at the top, got {type(data).__name__}")
    return data


def read_yaml(path: PathLike, what: str = "YAML file", loader: Callable[[str], Any] | None = None) -> Any:
    """A YAML document (safe loading); DataError naming the file and the problem in one line."""
    text = read_text(path, what)
    try:
        return loader(text) if loader is not None else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: invalid YAML, cannot read the {what} ({yaml_problem(exc)})") from None
