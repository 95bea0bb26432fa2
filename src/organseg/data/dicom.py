"""DICOM series: which files make one series, and the checks that they form one regular volume.

GDCM (through SimpleITK) groups a folder's files by SeriesInstanceUID and sorts them, but silently leaves out
files it cannot parse and stacks whatever it finds, reporting the mean spacing; a missing slice would then
shift every later slice without a word. Here every file of the folder must be a readable slice of the
series, and the slices must share one orientation, matrix and pixel spacing and sit evenly spaced along the
slice normal with no gap and no duplicate. :func:`organseg.data.io.read_image` reads a series folder in the
order :func:`dicom_series_files` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organseg.data.io import IMAGE_SUFFIXES, describe_itk_error
from organseg.errors import DataError

_DICOMDIR = "DICOMDIR"  # the standard index file of a DICOM export: DICOM, but not a slice


def _series_label(uid: str) -> str:
    """A series id as the user can see it: GDCM reports a missing/empty SeriesInstanceUID as ''."""
    return repr(uid) if uid else "'' (empty SeriesInstanceUID)"


def _not_a_slice(path: Path) -> str:
    """Why GDCM left a file out of every series: a DICOM header it could not parse, or not DICOM at all."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    if head[128:132] == b"DICM":
        return "truncated or corrupt DICOM file in a series folder (the series would lose this slice)"
    return "not a DICOM file, in a DICOM series folder (it must hold only the slices; move the file away)"


def _floats(text: str, n: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in text.strip().split("\\"))
    except ValueError:
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


@dataclass(frozen=True)
class _Slice:
    path: Path
    position: tuple[float, ...]  # ImagePositionPatient (0020,0032), mm
    orientation: tuple[float, ...]  # ImageOrientationPatient (0020,0037): row and column direction cosines
    rows_cols: tuple[int, int]
    pixel_spacing: tuple[float, float]
    frames: int


def _read_slice_header(path: Path) -> _Slice:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except Exception as exc:
        raise DataError(f"{path}: cannot read DICOM header ({describe_itk_error(exc)})") from None

    def tag(key: str, name: str, n: int) -> tuple[float, ...]:
        text = reader.GetMetaData(key) if reader.HasMetaDataKey(key) else ""
        values = _floats(text, n)
        if values is None:
            shown = f"{text.strip()!r}" if text.strip() else "missing"
            raise DataError(
                f"{path}: {name} ({key.replace('|', ',')}) is {shown}; "
                f"{n} numbers are needed to place the slice in the volume"
            )
        return values

    position = tag("0020|0032", "ImagePositionPatient", 3)
    orientation = tag("0020|0037", "ImageOrientationPatient", 6)
    size = reader.GetSize()
    spacing = reader.GetSpacing()
    return _Slice(
        path,
        position,
        orientation,
        (int(size[1]), int(size[0])),
        (float(spacing[1]), float(spacing[0])),
        int(size[2]) if len(size) > 2 else 1,
    )


def _check_series_geometry(folder: Path, files: Sequence[str]) -> list[str]:
    """The slices of one series sorted along the slice normal, after checking that they form one regular
    volume: one orientation, one matrix and pixel spacing, positions evenly spaced with no gap and no
    duplicate. ITK's series reader would instead stack whatever it finds and report the mean spacing (a
    missing slice silently shifts every later slice), so the check is ours."""
    slices = [_read_slice_header(Path(f)) for f in files]
    if len(slices) == 1:
        return [str(slices[0].path)]  # one file: a single slice or a multi-frame object, nothing to align
    multi = [s for s in slices if s.frames != 1]
    if multi:
        raise DataError(
            f"{multi[0].path}: a {multi[0].frames}-frame DICOM file in a series of {len(slices)} files; "
            "a series must be single-frame slices (or one multi-frame file on its own)"
        )
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise DataError(
                f"{s.path}: ImageOrientationPatient {list(s.orientation)} differs from "
                f"{list(first.orientation)} in {first.path.name}; a series needs one orientation"
            )
        if s.rows_cols != first.rows_cols:
            raise DataError(
                f"{s.path}: {s.rows_cols[0]}x{s.rows_cols[1]} pixels, but {first.path.name} has "
                f"{first.rows_cols[0]}x{first.rows_cols[1]}; a series needs one matrix size"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise DataError(
                f"{s.path}: PixelSpacing {list(s.pixel_spacing)} differs from {list(first.pixel_spacing)} "
                f"in {first.path.name}; a series needs one pixel spacing"
            )
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DataError(
            f"{first.path}: ImageOrientationPatient {list(first.orientation)} is not two orthogonal unit "
            "vectors"
        )
    order = sorted(slices, key=lambda s: float(np.dot(s.position, normal)))
    z = np.array([float(np.dot(s.position, normal)) for s in order])
    steps = np.diff(z)
    spacing = float(np.median(steps))
    tol = max(0.01 * spacing, 1e-3)
    for k, step in enumerate(steps):
        a, b = order[k], order[k + 1]
        if step < tol:
            raise DataError(
                f"{folder}: {a.path.name} and {b.path.name} are at the same slice position "
                f"({z[k]:g} mm along the slice normal); a series needs one file per position"
            )
    if spacing <= 1e-3:
        raise DataError(f"{folder}: slice positions do not advance along the slice normal")
    for k, step in enumerate(steps):
        if abs(step - spacing) > tol:
            a, b = order[k], order[k + 1]
            missing = step / spacing - 1
            hint = (
                f"; {round(missing)} slice(s) missing?"
                if step > spacing and abs(missing - round(missing)) < 0.05
                else ""
            )
            raise DataError(
                f"{folder}: slice gap between {a.path.name} ({z[k]:g} mm) and {b.path.name} "
                f"({z[k + 1]:g} mm): {step:g} mm where the series spacing is {spacing:g} mm{hint}"
            )
    return [str(s.path) for s in order]


def _dicom_series(folder: Path, series_uid: str | None) -> list[str]:
    """The files of one DICOM series in ``folder``, sorted along the slice normal, after checking that every
    file in the folder is a readable slice and that the slices form one regular volume."""
    import SimpleITK as sitk

    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DataError(f"{folder}: empty folder (expected a DICOM series)")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise DataError(f"{folder}: no DICOM series found in this folder")
    members = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}
    # GDCM silently leaves out any file it cannot parse (a truncated slice, a stray file), and the series
    # reader then stacks the rest; every file of the folder must belong to a series.
    known = {Path(f).name for files in members.values() for f in files}
    for p in sorted(entries):
        if p.is_file() and p.name not in known and p.name.upper() != _DICOMDIR:
            raise DataError(f"{p}: {_not_a_slice(p)}")
    if series_uid is None:
        if len(ids) > 1:
            listed = ", ".join(f"{_series_label(uid)} ({len(members[uid])} files)" for uid in ids)
            raise DataError(
                f"{folder}: {len(ids)} DICOM series in one folder ({listed}); "
                "pass --series-uid UID (series_uid=) or give each series its own folder"
            )
        series_uid = ids[0]
    elif series_uid not in ids:
        listed = ", ".join(_series_label(uid) for uid in ids)
        raise DataError(f"{folder}: no DICOM series {series_uid!r} (found {listed})")
    return _check_series_geometry(folder, members[series_uid])


def dicom_series_files(folder: str | Path, series_uid: str | None = None) -> list[Path]:
    """The checked files of one DICOM series in ``folder``, sorted along the slice normal (the order the
    volume is read in); DataError as :func:`read_image` for a damaged or ambiguous series."""
    return [Path(f) for f in _dicom_series(Path(folder), series_uid)]


def is_dicom_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding DICOM files directly (a series folder, not a folder of scans):
    some regular file in it carries the DICOM preamble's "DICM" marker."""
    path = Path(path)
    if not path.is_dir():
        return False
    for p in sorted(path.iterdir()):
        if p.is_file() and not p.name.startswith(".") and not p.name.lower().endswith(IMAGE_SUFFIXES):
            try:
                with open(p, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False
