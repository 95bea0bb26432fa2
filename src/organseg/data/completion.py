"""Datasets written by organseg are complete only when their writer says so, at the very end.

Every organseg command that writes a dataset folder (``phantom``, ``prepare synapse``) first writes
``organseg_status.json`` with ``"state": "in progress"`` (and the command that finishes the job), then its
files, and last rewrites the record as ``"state": "complete"`` with the list of files it wrote. A reader that
finds a record that is not "complete" refuses the folder in one line naming that command: a writer killed
half-way would otherwise leave a folder that a later command reads as if it were whole (training on 2 of 5
cases without a word). Folders that organseg did not write (an official Synapse download, ACDC, nnU-Net raw)
carry no record at all and are read as before.

Writers also refuse a non-empty output folder that is not their own earlier output; ``clear_own_output``
empties one (``--overwrite``), deleting only files it recognises as that writer's output and nothing at all
when it finds anything else.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from organseg.errors import DataError
from organseg.fileio import atomic_write_text
from organseg.locks import LOCK_FILE

STATUS_FILE = "organseg_status.json"
STATUS_FORMAT = "organseg-status/1"
IN_PROGRESS, COMPLETE = "in progress", "complete"
_TEMPORARY = re.compile(r"^\.(tmp-.+|.+\.tmp)$")  # atomic writers' temporaries (a killed write leaves one)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_status(folder: str | Path) -> dict | None:
    """The folder's completion record, or None when it has none (a dataset organseg did not write)."""
    path = Path(folder) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the completion record ({exc})") from None
    if not isinstance(status, dict) or status.get("format") != STATUS_FORMAT:
        raise DataError(f"{path}: not an organseg completion record (expected format {STATUS_FORMAT!r})")
    return status


def mark_started(folder: str | Path, *, writer: str, finish: str, source: str | None = None) -> None:
    """Record that ``writer`` (e.g. "prepare synapse") is writing ``folder``; ``finish`` is the command line
    that completes it (shown to a reader that finds the folder half-written). Written before any data."""
    record = {
        "format": STATUS_FORMAT,
        "state": IN_PROGRESS,
        "writer": writer,
        "finish": finish,
        "source": source,
        "started": _now(),
    }
    atomic_write_text(Path(folder) / STATUS_FILE, json.dumps(record, indent=1) + "\n")


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def mark_complete(folder: str | Path, files: Sequence[str | Path], counts: Mapping[str, int]) -> None:
    """Record, as the writer's very last act, that ``folder`` is complete: the files it wrote (relative to
    ``folder``) and summary counts."""
    folder = Path(folder)
    record = read_status(folder) or {"format": STATUS_FORMAT}
    rel = sorted(_relative(Path(f), folder) for f in files)
    record.update(state=COMPLETE, completed=_now(), counts=dict(counts), files=rel)
    atomic_write_text(folder / STATUS_FILE, json.dumps(record, indent=1) + "\n")


def require_complete(folder: str | Path) -> dict | None:
    """DataError unless ``folder`` is complete by its writer's own record (None: no record, not ours).

    A complete record's files must all still exist; a missing one means the folder was changed by hand."""
    folder = Path(folder)
    status = read_status(folder)
    if status is None:
        return None
    writer, finish = status.get("writer", "organseg"), status.get("finish")
    again = f"re-run `{finish}` to complete it" if finish else f"re-run `organseg {writer}`"
    if status.get("state") != COMPLETE:
        raise DataError(
            f"{folder}: incomplete dataset: `organseg {writer}` started writing it "
            f"({status.get('started', 'time unknown')}) and did not finish; {again}"
        )
    missing = [f for f in status.get("files", []) if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{folder}: {len(missing)} file(s) written by `organseg {writer}` are missing "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); {again}"
        )
    return status


def own_entries(folder: Path) -> list[Path]:
    """What makes a folder non-empty for a writer: everything but hidden files that are not organseg's own
    (``.DS_Store`` and the like do not count; prepare's ``.organseg_prepare/`` and temporaries do; a lock file
    a killed writer left does not, see :mod:`organseg.locks`)."""
    return sorted(
        p
        for p in folder.iterdir()
        if (not p.name.startswith(".") or p.name.startswith(".organseg") or _TEMPORARY.match(p.name))
        and p.name != LOCK_FILE
    )


def plan_clear(
    folder: Path,
    layout: Mapping[str, re.Pattern | None],
    *,
    writer: str,
    is_ours: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """The files and folders ``--overwrite`` would delete from ``writer``'s earlier output in ``folder``
    (files first, then their now-empty folders); DataError, with nothing deleted, when any entry is not ours.

    ``layout`` maps each top-level name the writer produces to None (a file) or a pattern that every file
    inside that subfolder must match. Temporaries (``.tmp-*``) are always ours; the completion record is left
    for the writer to overwrite (it marks the folder "in progress" before deleting anything, so a clear that
    is interrupted leaves a folder that readers refuse). Anything else, a nested folder, a link, or a file
    that ``is_ours`` rejects means the folder is not entirely ours, and it is not touched."""
    files: list[Path] = []
    folders: list[Path] = []

    def refuse(path: Path, why: str) -> DataError:
        return DataError(
            f"{path}: {why}; --overwrite deletes only `organseg {writer}` output, so nothing was deleted "
            "(choose another folder or empty it yourself)"
        )

    for p in own_entries(folder):
        if p.name == STATUS_FILE:
            continue
        if _TEMPORARY.match(p.name) and p.is_file():
            files.append(p)
            continue
        if p.name not in layout:
            raise refuse(p, "not written by organseg")
        pattern = layout[p.name]
        if p.is_symlink():
            raise refuse(p, "a link")
        if pattern is None:
            if not p.is_file():
                raise refuse(p, "expected a file")
            files.append(p)
            continue
        if not p.is_dir():
            raise refuse(p, "expected a folder")
        for q in sorted(p.iterdir()):
            if q.is_symlink() or not q.is_file():
                raise refuse(q, "not written by organseg")
            if _TEMPORARY.match(q.name) or pattern.match(q.name) and (is_ours is None or is_ours(q)):
                files.append(q)
            else:
                raise refuse(q, "not written by organseg")
        folders.append(p)
    return files + folders


def delete_planned(paths: Sequence[Path]) -> None:
    """Delete what :func:`plan_clear` listed (files, then their folders)."""
    for p in paths:
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink(missing_ok=True)


def check_disk_space(folder: str | Path, need_bytes: float, what: str) -> None:
    """DataError, before writing, when the file system that will hold ``folder`` has less free space than the
    writer's estimate ``need_bytes``: failing up front beats a half-written folder and a full disk."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # the writer's own errors will name the problem
    if need_bytes > free:
        raise DataError(
            f"{folder}: {what} needs about {human_bytes(need_bytes)} of disk space, but {probe} has "
            f"{human_bytes(free)} free"
        )


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"
