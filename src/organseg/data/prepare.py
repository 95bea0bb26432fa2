"""``organseg prepare synapse``: raw BTCV release -> the TransUNet Synapse format (the step the papers never
published; rule from TransUNet's datasets/README and the SAMed script, reference_protocol.md §3.4).

Per case: read the CT (HU) and its label map, clip HU to [-125, 275] and scale to [0, 1] (float32), map the 13
BTCV ids to the 9 Synapse classes (esophagus, IVC, veins and adrenals -> background), keep the file's own
axial voxel order (no resampling, no cropping). Training cases become ``train_npz/caseNNNN_sliceKKK.npz``,
test cases ``test_vol_h5/caseNNNN.npy.h5``; lists go to ``lists_Synapse/``; ``organseg_synapse.json`` keeps
what the reference drops (each case's spacing, origin and direction, the split and the rule that chose it).

Guarantees: every input problem is found *before* anything is written (pass 1 reads headers, pass 2 reads the
voxels), so a bad input leaves no partial output; every file is written atomically; a re-run skips cases whose
outputs are complete and whose sources and options are unchanged. The output folder carries a completion
record (``organseg_status.json``, see ``organseg.data.completion``): "in progress" before the first file,
"complete" after the sidecar, so a prepare killed half-way leaves a folder every reader refuses. ``--out``
must be new, empty, or an earlier prepare of the same raw folder (continued; finished cases are kept);
``overwrite=True`` replaces an earlier prepare of any raw folder, deleting only prepare's own files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import multiprocessing.pool
import os
import re
import shlex
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from organseg.data.classes import BTCV_CLASSES, BTCV_TO_SYNAPSE, SYNAPSE_CLASSES, remap_labels, unknown_ids
from organseg.data.completion import (
    check_disk_space,
    delete_planned,
    mark_complete,
    mark_started,
    own_entries,
    plan_clear,
    read_status,
    require_complete,
)
from organseg.data.io import atomic_write_h5, atomic_write_npz, check_finite
from organseg.data.preprocess import SYNAPSE_WINDOW, apply_preprocessing, ct_window_spec
from organseg.data.split import DEFAULT_TEST_FRACTION, decide_split, format_ids, parse_case_id
from organseg.data.synapse import PREPARE_RECORDS, SIDECAR
from organseg.errors import ConfigError, DataError
from organseg.fileio import atomic_write_text, check_output, check_output_dir
from organseg.imageio.formats import IMAGE_SUFFIXES
from organseg.imageio.volumes import Geometry, grid_relation, read_image_info, read_sitk
from organseg.progress import progress_bar
from organseg.values import Rule, available_memory, check_value, max_threads

log = logging.getLogger("organseg.data")

#: ``--workers``: processes that read and convert cases at once (each holds one case in memory).
WORKERS_RULE = Rule("int", lo=1, hi=max_threads, why="processes; 4 x the CPU cores here")
#: Peak memory of one worker per voxel of its case (int16 HU, the float32 image, labels, the label count's
#: sort), measured about 12 bytes on 512² phantoms; with a margin. More workers than memory allows for the
#: largest case are not started.
WORKER_BYTES_PER_VOXEL = 24

MARKERS = PREPARE_RECORDS
FORMAT = "organseg-synapse/1"
WRITER = "prepare synapse"
#: What `prepare synapse` writes into --out (``overwrite=True`` deletes these and nothing else).
SYNAPSE_LAYOUT = {
    "train_npz": re.compile(r"^case\d+_slice\d+\.npz$"),
    "test_vol_h5": re.compile(r"^case\d+\.npy\.h5$"),
    "lists_Synapse": re.compile(r"^(train\.txt|test_vol\.txt|all\.lst|val\.txt)$"),
    MARKERS: re.compile(r"^case\d+\.json$"),
    SIDECAR: None,
    "SYNTHETIC.txt": None,
}


@dataclass(frozen=True)
class RawCase:
    number: int
    image: Path
    label: Path

    @property
    def name(self) -> str:
        return f"case{self.number:04d}"


def _strip_suffix(name: str) -> str | None:
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _scan(folder: Path, prefix: str) -> dict[int, Path]:
    pattern = re.compile(rf"^{prefix}(\d+)$", re.IGNORECASE)
    found: dict[int, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        stem = p.name if p.is_dir() else _strip_suffix(p.name)  # a folder imgNNNN/ is a DICOM series
        m = pattern.match(stem) if stem else None
        if not m:
            log.warning("%s: ignored (not %sNNNN.nii.gz)", p, prefix)
            continue
        found.setdefault(int(m.group(1)), []).append(p)
    dups = {k: v for k, v in found.items() if len(v) > 1}
    if dups:
        k, paths = next(iter(sorted(dups.items())))
        raise DataError(f"{folder}: duplicate case id {k}: {', '.join(p.name for p in paths)}")
    return {k: v[0] for k, v in found.items()}


def find_raw_cases(raw: str | Path) -> dict[int, RawCase]:
    """Pairs ``img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz`` of a BTCV-release folder, keyed by number."""
    raw = Path(raw)
    if not raw.exists():
        raise DataError(f"{raw}: folder not found")
    if not raw.is_dir():
        raise DataError(f"{raw}: not a folder (expected the BTCV layout img/ + label/)")
    require_complete(raw)  # a phantom set (or another organseg-written raw folder) killed half-way
    for sub in ("", "Training", "RawData/Training"):  # the BTCV zip nests the folders
        if (raw / sub / "img").is_dir() or (raw / sub / "label").is_dir():
            raw = raw / sub
            require_complete(raw)
            break
    else:
        if not any(p for p in raw.iterdir() if not p.name.startswith(".")):
            raise DataError(f"{raw}: empty folder (expected img/imgNNNN.nii.gz and label/labelNNNN.nii.gz)")
        raise DataError(f"{raw}: no img/ and label/ folders (expected the BTCV layout)")
    for sub in ("img", "label"):
        if not (raw / sub).is_dir():
            raise DataError(f"{raw / sub}: folder not found (every image needs its label)")
    images, labels = _scan(raw / "img", "img"), _scan(raw / "label", "label")
    if not images and not labels:
        raise DataError(f"{raw}: empty folder, no imgNNNN / labelNNNN files in img/ and label/")
    for k in sorted(set(images) - set(labels)):
        raise DataError(f"{images[k]}: missing label (expected {raw / 'label'}/label{k:04d}.nii.gz)")
    for k in sorted(set(labels) - set(images)):
        raise DataError(f"{labels[k]}: missing image (expected {raw / 'img'}/img{k:04d}.nii.gz)")
    return {k: RawCase(k, images[k], labels[k]) for k in sorted(images)}


def _check_headers(case: RawCase) -> tuple[int, int, int]:
    """The image shape, after checking that the label's header fits the image."""
    shape_i, geom_i = read_image_info(case.image)
    shape_l, geom_l = read_image_info(case.label)
    relation = grid_relation(shape_i, geom_i, shape_l, geom_l)
    if relation is None:
        if tuple(sorted(shape_i)) != tuple(sorted(shape_l)):
            raise DataError(
                f"{case.label}: label shape {shape_l} does not match image shape {shape_i} ({case.image})"
            )
        raise DataError(
            f"{case.label}: label geometry does not match {case.image.name} (image spacing {geom_i.spacing}, "
            f"origin {geom_i.origin}; label spacing {geom_l.spacing}, origin {geom_l.origin})"
        )
    return tuple(shape_i)


def _load_case(
    case: RawCase, unknown_labels: str, *, notes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, Geometry, dict]:
    """Image (HU), BTCV label on the image grid, the image geometry and label statistics; all checks.
    ``notes`` receives the warning about label ids mapped to background (the caller logs it: a worker
    process has no logging of its own)."""
    img = read_sitk(case.image)
    lab = read_sitk(case.label)
    relation = grid_relation(
        tuple(reversed(img.GetSize())),
        Geometry.from_sitk(img),
        tuple(reversed(lab.GetSize())),
        Geometry.from_sitk(lab),
    )
    if relation is None:  # pass 1 checked headers; keep the guard for files changed in between
        raise DataError(f"{case.label}: label geometry does not match {case.image.name}")
    if relation == "reoriented":
        # Same voxel centres in another axis order: nearest-neighbour resampling is an exact reindexing.
        lab = sitk.Resample(lab, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
    image = sitk.GetArrayFromImage(img)
    label = sitk.GetArrayFromImage(lab)
    check_finite(image, case.image)
    lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if lo >= -0.5 and hi <= 1.5:
        # A CT in HU spans air (about -1000) to bone; values this narrow are an image scaled already, which
        # the window would flatten to one grey value without a word.
        raise DataError(
            f"{case.image}: image values span [{lo:g}, {hi:g}]; prepare expects CT in Hounsfield units "
            "(this image looks scaled already)"
        )
    if np.issubdtype(label.dtype, np.floating):
        check_finite(label, case.label, "label")
        if not np.array_equal(label, np.round(label)):
            raise DataError(
                f"{case.label}: label holds non-integer values (is this an image, not a label map?)"
            )
        label = label.astype(np.int64)
    unknown = unknown_ids(label, range(len(BTCV_CLASSES)))
    if unknown:
        detail = ", ".join(f"id {k}: {v} voxels" for k, v in sorted(unknown.items())[:8])
        if unknown_labels == "error":
            raise DataError(
                f"{case.label}: label ids outside the BTCV map 0..13 ({detail}); "
                "fix the file or pass --unknown-labels background to map them to background"
            )
        if notes is not None:
            notes.append(_unknown_note(case, detail))
    values, counts = np.unique(label, return_counts=True)
    dropped = {
        BTCV_CLASSES[int(v)]: int(c)
        for v, c in zip(values, counts, strict=True)
        if 0 < v < len(BTCV_CLASSES) and int(v) not in BTCV_TO_SYNAPSE
    }
    stats = {
        "relation": relation,
        "dropped_btcv_voxels": dropped,
        "unknown_id_voxels": {str(k): v for k, v in unknown.items()},
    }
    return image, label, Geometry.from_sitk(img), stats


def _unknown_note(case: RawCase, detail: str) -> str:
    return f"{case.label}: label ids outside the BTCV map 0..13 mapped to background ({detail})"


# ---------------------------------------------------------------------------------------------------- writing
def _fingerprint(case: RawCase) -> dict:
    out = {}
    for key, p in (("image", case.image), ("label", case.label)):
        st = p.stat()
        out[key] = {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def _outputs(out: Path, name: str, role: str, n_slices: int) -> list[Path]:
    if role == "test":
        return [out / "test_vol_h5" / f"{name}.npy.h5"]
    return [out / "train_npz" / f"{name}_slice{k:03d}.npz" for k in range(n_slices)]


def _remove_outputs(out: Path, name: str) -> None:
    (out / "test_vol_h5" / f"{name}.npy.h5").unlink(missing_ok=True)
    train_dir = out / "train_npz"
    if train_dir.is_dir():
        for p in train_dir.glob(f"{name}_slice*.npz"):
            p.unlink()


def _done(out: Path, case: RawCase, role: str, options: dict) -> dict | None:
    marker = out / MARKERS / f"{case.name}.json"
    if not marker.is_file():
        return None
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("role") != role or meta.get("options") != options or meta.get("source") != _fingerprint(case):
        return None
    if not all(p.is_file() for p in _outputs(out, case.name, role, int(meta.get("slices", 0)))):
        return None
    return meta


def _earlier_prepare_source(out: Path) -> str | None:
    """The raw folder an earlier ``prepare synapse`` in ``out`` converted ("" when it cannot be told), or None
    when ``out`` holds no prepare output."""
    status = read_status(out)
    if status is not None:
        return str(status.get("source") or "") if status.get("writer") == WRITER else None
    sidecar = out / SIDECAR
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            return None
        return str(meta.get("source") or "")
    return "" if (out / MARKERS).is_dir() else None  # interrupted before the sidecar (older organseg)


def _records_from(out: Path, raw: Path) -> bool:
    """Whether prepare's per-case records in ``out`` name sources inside ``raw`` (an older organseg's
    interrupted prepare of the same raw folder has only these)."""
    root = str(raw.resolve())
    for marker in sorted((out / MARKERS).glob("case*.json")):
        try:
            path = json.loads(marker.read_text(encoding="utf-8"))["source"]["image"]["path"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            continue
        return str(path).startswith(root + "/")
    return False


def _check_out_folder(out: Path, raw: Path, overwrite: bool) -> list[Path]:
    """Decide, before anything is written, whether ``out`` may receive this prepare; returns what
    ``overwrite`` must delete first. Rule: new or empty, or an earlier prepare of the same raw folder
    (continued: its finished cases are kept); anything else is refused, and ``overwrite`` replaces only an
    earlier prepare output."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    entries = own_entries(out) if out.is_dir() else []
    if not entries:
        return []
    earlier = _earlier_prepare_source(out)
    if overwrite:
        if earlier is None:
            raise DataError(
                f"{out}: not an earlier `organseg prepare synapse` output; --overwrite deletes only "
                "prepare's own files, so nothing was deleted (choose another folder or empty it yourself)"
            )
        return plan_clear(out, SYNAPSE_LAYOUT, writer=WRITER)
    if earlier == str(raw.resolve()) or (earlier == "" and _records_from(out, raw)):
        return []
    names = ", ".join(p.name for p in entries[:4]) + (" ..." if len(entries) > 4 else "")
    if earlier is None:
        raise DataError(
            f"{out}: folder is not empty ({names}) and is not an earlier `organseg prepare synapse` output; "
            "choose a new or empty folder"
        )
    was = f"of {earlier}" if earlier else "of another raw folder"
    raise DataError(
        f"{out}: holds an earlier `organseg prepare synapse` {was}, not of {raw.resolve()}; choose a new "
        "folder, or pass --overwrite to replace it"
    )


def _finish_command(raw: Path, out: Path, args: dict) -> str:
    """The command line that repeats this prepare (shown to a reader that finds the folder half-written)."""
    parts = ["organseg", "prepare", "synapse", "--raw", str(raw), "--out", str(out)]
    for flag, value in args.items():
        if value is None or value is False:
            continue
        parts.append(flag)
        if value is not True:
            parts += [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
    return " ".join(shlex.quote(p) for p in parts)


@dataclass(frozen=True)
class _Job:
    """One prepare run: where it writes, each selected case's role, and how it converts (``options`` are
    recorded per case: a re-run skips a case only when they are unchanged)."""

    out: Path
    roles: dict[int, str]  # case number -> "train" / "test"
    spec: dict  # the CT window (organseg.data.preprocess)
    options: dict
    unknown_labels: str
    compress: bool


def _pass1_headers(job: _Job, selected: list[RawCase], planned: list[Path]) -> tuple[list[RawCase], int]:
    """Pass 1, headers of every selected case (cheap): shapes and geometry, then the disk space that the cases
    still to convert need. Returns those cases (all with ``--overwrite``, else the ones not finished by an
    earlier run) and the voxel count of the largest of them."""
    shapes = {case.number: _check_headers(case) for case in selected}
    todo = [c for c in selected if planned or _done(job.out, c, job.roles[c.number], job.options) is None]
    # float32 image + uint8 label per voxel, uncompressed (compression saves about half on CT).
    need = sum(int(np.prod(shapes[c.number])) for c in todo) * (5 if not job.compress else 3)
    check_disk_space(job.out, need, f"preparing {len(todo)} case(s)")
    return todo, max((int(np.prod(shapes[c.number])) for c in todo), default=0)


def _pass2_voxels(
    job: _Job, todo: list[RawCase], progress: bool, pool: multiprocessing.pool.Pool | None
) -> None:
    """Pass 2, voxels of every case still to convert (NaN/inf, label ids, truncated data). Nothing is written
    yet, so a bad input leaves no partial output. The first bad case in case order is the one reported,
    however many workers read."""
    bar = progress_bar(
        total=len(todo), desc="checking", unit="case", disable=not progress or not todo, leave=False
    )
    with bar:
        for _ in _in_order(_check_case, [(job, c) for c in todo], pool):
            bar.update(1)


def _pass3_convert(
    job: _Job,
    selected: list[RawCase],
    todo: list[RawCase],
    progress: bool,
    pool: multiprocessing.pool.Pool | None,
) -> list[str]:
    """Pass 3, convert: each case's arrays, then its record (which is what marks it finished). Returns the
    names of the cases converted, in case order."""
    converted = []
    with progress_bar(total=len(selected), desc="prepare synapse", unit="case", disable=not progress) as bar:
        bar.update(len(selected) - len(todo))  # finished by an earlier run: skipped
        for case, notes in zip(todo, _in_order(_convert_case, [(job, c) for c in todo], pool), strict=True):
            for note in notes:
                log.warning("%s", note)
            converted.append(case.name)
            bar.update(1)
    return converted


def _check_case(job: _Job, case: RawCase) -> None:
    _load_case(case, job.unknown_labels)


def _worker_start() -> None:
    """In each worker process: Ctrl-C reaches the whole process group, and the parent alone decides what it
    means (it stops the pool); the parent's SIGTERM ends the worker through ``SystemExit``, so the atomic
    write it is in removes its temporary file (organseg.fileio.staged)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the processes share the cores, not one reader


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _call(item: tuple[Callable, tuple]) -> object:
    fn, args = item
    return fn(*args)


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """``workers`` processes for both passes (None: this process alone), spawned (SimpleITK's and tqdm's
    threads do not survive a fork). When the body fails or this process is stopped (Ctrl-C, SIGTERM) the
    workers are terminated, and the files they were writing removed (each file is written atomically, a
    case's record last)."""
    if workers <= 1:
        yield None
        return
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_start)
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _in_order(fn: Callable, jobs: list[tuple], pool: multiprocessing.pool.Pool | None) -> Iterator:
    """``fn(*args)`` of each of ``jobs``, yielded in the order of ``jobs`` (in ``pool``'s processes when there
    is one). An error of a job is raised when its turn comes, so the first failing job in order is the one
    reported, as the serial loop does."""
    if pool is None:
        for args in jobs:
            yield fn(*args)
        return
    yield from pool.imap(_call, [(fn, args) for args in jobs], chunksize=1)


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity; all cores where the system cannot tell)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _fit_workers(workers: int, voxels: int) -> int:
    """``workers``, fewer when the memory available would not hold that many of the largest case at once."""
    have = available_memory()
    if have is None or workers <= 1:
        return workers
    fit = max(1, int(have // max(1, voxels * WORKER_BYTES_PER_VOXEL)))
    if fit < workers:
        log.warning(
            "--workers %d: the largest case needs about %.1f GiB per worker and %.1f GiB is available; "
            "using %d worker(s)",
            workers,
            voxels * WORKER_BYTES_PER_VOXEL / 2**30,
            have / 2**30,
            fit,
        )
    return min(workers, fit)


def _convert_case(job: _Job, case: RawCase) -> list[str]:
    """One case's files, then its record; returns the warnings for the caller to log."""
    out, role = job.out, job.roles[case.number]
    notes: list[str] = []
    image, label, geom, stats = _load_case(case, job.unknown_labels, notes=notes)
    image01 = apply_preprocessing(image, job.spec, source=str(case.image))
    classes = remap_labels(label, BTCV_TO_SYNAPSE)
    del image, label
    _remove_outputs(out, case.name)
    if role == "test":
        atomic_write_h5(
            out / "test_vol_h5" / f"{case.name}.npy.h5",
            image=image01,
            label=classes,
            compression="gzip" if job.compress else None,
        )
    else:
        for k in range(image01.shape[0]):
            atomic_write_npz(
                out / "train_npz" / f"{case.name}_slice{k:03d}.npz",
                compress=job.compress,
                image=image01[k],
                label=classes[k],
            )
    counts = np.bincount(classes.ravel(), minlength=len(SYNAPSE_CLASSES))
    meta = {
        "case": case.name,
        "role": role,
        "slices": int(image01.shape[0]),
        "shape": list(image01.shape),
        **geom.to_dict(),
        "class_voxels": {SYNAPSE_CLASSES[i]: int(c) for i, c in enumerate(counts) if c},
        **stats,
        "options": job.options,
        "source": _fingerprint(case),
    }
    atomic_write_text(out / MARKERS / f"{case.name}.json", json.dumps(meta, indent=1))
    return notes


def _write_lists(
    out: Path, names: dict[int, str], split: tuple[list[int], list[int], list[int]], metas: dict[str, dict]
) -> tuple[list[Path], int]:
    """The reference's list files (names and order conventions); returns them and the training slice count."""
    train, test, val = split
    train_lines = [f"{names[i]}_slice{k:03d}" for i in train for k in range(metas[names[i]]["slices"])]
    lists = out / "lists_Synapse"
    atomic_write_text(lists / "train.txt", "".join(f"{n}\n" for n in train_lines))
    atomic_write_text(lists / "test_vol.txt", "".join(f"{names[i]}\n" for i in test))
    atomic_write_text(lists / "all.lst", "".join(f"{names[i]}.npy.h5\n" for i in sorted(names)))
    if val:
        atomic_write_text(lists / "val.txt", "".join(f"{names[i]}\n" for i in sorted(val)))
    else:
        (lists / "val.txt").unlink(missing_ok=True)
    written = [lists / n for n in ("train.txt", "test_vol.txt", "all.lst", *(["val.txt"] if val else []))]
    return written, len(train_lines)


def _synthetic_note(raw: Path, out: Path) -> str | None:
    """A phantom's SYNTHETIC.txt (in the raw folder or above it), carried into ``out``; None for real data."""
    for cand in (raw / "SYNTHETIC.txt", raw.parent / "SYNTHETIC.txt"):
        if cand.is_file():
            note = cand.read_text(encoding="utf-8")
            atomic_write_text(out / "SYNTHETIC.txt", note)
            return note
    return None


#: What the sidecar keeps of each case's record.
_SIDECAR_CASE_KEYS = (
    "role",
    "slices",
    "shape",
    "spacing",
    "origin",
    "direction",
    "class_voxels",
    "dropped_btcv_voxels",
    "unknown_id_voxels",
)


def _sidecar(
    raw: Path, job: _Job, rule: str, split: dict[str, list[str]], metas: dict[str, dict], synthetic: bool
) -> dict:
    return {
        "format": FORMAT,
        "source": str(raw.resolve()),
        "synthetic": synthetic,
        "class_names": list(SYNAPSE_CLASSES),
        "btcv_to_synapse": {str(k): v for k, v in BTCV_TO_SYNAPSE.items()},
        "preprocessing": job.spec,
        "split": {"rule": rule, **split},
        "cases": {name: {k: m[k] for k in _SIDECAR_CASE_KEYS} for name, m in sorted(metas.items())},
    }


def prepare_synapse(
    raw: str | Path,
    out: str | Path,
    *,
    train_cases: Sequence[str | int] | None = None,
    test_cases: Sequence[str | int] | None = None,
    val_cases: Sequence[str | int] | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 1234,
    window: Sequence[float] = SYNAPSE_WINDOW,
    unknown_labels: str = "error",
    compress: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
) -> dict:
    """Convert a raw BTCV folder to the TransUNet Synapse format in ``out``; returns a summary dict.

    ``unknown_labels``: "error" (default) rejects label ids outside BTCV's 0..13; "background" maps them to 0
    with a warning giving the voxel counts (the reference script would have kept them and crashed in the
    loss). BTCV organs outside the 8 Synapse classes always become background (counts recorded in the
    sidecar). ``out`` must be new, empty or an earlier prepare of ``raw`` (continued); ``overwrite`` replaces
    an earlier prepare output of any raw folder (see the module docstring). ``workers``: processes reading
    and converting cases at once (default :func:`default_workers`, fewer when memory is short); the files
    written are the same bytes whatever the number.
    """
    workers = default_workers() if workers is None else check_value("--workers", workers, WORKERS_RULE)
    if unknown_labels not in ("error", "background"):
        raise ConfigError(f"unknown_labels must be 'error' or 'background', got {unknown_labels!r}")
    spec = ct_window_spec(window)
    raw, out = Path(raw), Path(out)
    check_output(out, {"--raw": raw}, folder=True)
    check_output_dir(out)
    cases = find_raw_cases(raw)
    planned = _check_out_folder(out, raw, overwrite)
    train, test, rule = decide_split(
        list(cases), train_cases, test_cases, test_fraction=test_fraction, seed=split_seed
    )
    val = [parse_case_id(v) for v in (val_cases or [])]
    not_train = [v for v in val if v not in train]
    if not_train:
        raise DataError(
            f"--val-cases: case id(s) {not_train} are not training cases of this split ({format_ids(train)})"
        )
    roles = {**{i: "train" for i in train}, **{i: "test" for i in test}}
    options = {
        "window": spec["window"],
        "unknown_labels": unknown_labels,
        "compress": bool(compress),
        "format": FORMAT,
    }
    job = _Job(out, roles, spec, options, unknown_labels, bool(compress))
    selected = [cases[i] for i in sorted(roles)]
    todo, largest = _pass1_headers(job, selected, planned)
    workers = _fit_workers(min(workers, len(todo)), largest)
    with _worker_pool(workers) as pool:  # one pool for both passes: starting the processes takes seconds
        _pass2_voxels(job, todo, progress, pool)
        # The record says "in progress" before the first file is deleted or written.
        finish = _finish_command(
            raw,
            out,
            {
                "--train-cases": [cases[i].name for i in train] if train_cases is not None else None,
                "--test-cases": [cases[i].name for i in test] if test_cases is not None else None,
                "--val-cases": [cases[i].name for i in sorted(val)] or None,
                "--test-fraction": test_fraction if test_fraction != DEFAULT_TEST_FRACTION else None,
                "--split-seed": split_seed if split_seed != 1234 else None,
                "--window": [*spec["window"]] if tuple(spec["window"]) != tuple(SYNAPSE_WINDOW) else None,
                "--unknown-labels": unknown_labels if unknown_labels != "error" else None,
                "--compress": bool(compress),
            },
        )
        mark_started(out, writer=WRITER, finish=finish, source=str(raw.resolve()))
        delete_planned(planned)
        converted = _pass3_convert(job, selected, todo, progress, pool)
    return _write_index(raw, job, cases, (train, test, val), rule, converted)


def _write_index(
    raw: Path,
    job: _Job,
    cases: dict[int, RawCase],
    split_ids: tuple[list[int], list[int], list[int]],
    rule: str,
    converted: list[str],
) -> dict:
    """After the last case: the list files and the sidecar (written last), then the completion record;
    returns prepare_synapse's summary."""
    out, roles = job.out, job.roles
    train, test, val = split_ids
    selected = [cases[i] for i in sorted(roles)]
    metas = {c.name: _done(out, c, roles[c.number], job.options) for c in selected}
    broken = [k for k, v in metas.items() if v is None]
    if broken:  # only possible if files vanish while we run
        raise DataError(f"{out}: outputs of {broken} disappeared during preparation")
    names = {i: cases[i].name for i in roles}
    list_files, train_slices = _write_lists(out, names, split_ids, metas)
    synthetic_note = _synthetic_note(raw, out)
    split = {
        "train": [names[i] for i in train],
        "test": [names[i] for i in test],
        "val": [names[i] for i in sorted(val)],
    }
    sidecar = _sidecar(raw, job, rule, split, metas, synthetic_note is not None)
    atomic_write_text(out / SIDECAR, json.dumps(sidecar, indent=1))
    written = [p for c in selected for p in _outputs(out, c.name, roles[c.number], metas[c.name]["slices"])]
    written += [out / MARKERS / f"{c.name}.json" for c in selected] + list_files
    written += [out / SIDECAR] + ([out / "SYNTHETIC.txt"] if synthetic_note is not None else [])
    counts = {"train_cases": len(train), "test_cases": len(test), "train_slices": train_slices}
    mark_complete(out, written, counts)
    skipped = [c.name for c in selected if c.name not in converted]
    return {
        "out": str(out),
        "rule": rule,
        **split,
        "train_slices": train_slices,
        "converted": converted,
        "skipped": skipped,
        "synthetic": synthetic_note is not None,
    }
