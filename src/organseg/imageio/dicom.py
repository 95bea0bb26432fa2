"""DICOM series: which files make one series, and the checks that they form one regular volume.

GDCM (through SimpleITK) groups a folder's files by SeriesInstanceUID and sorts them, but silently leaves out
files it cannot parse and stacks whatever it finds, reporting the mean spacing; a missing slice would then
shift every later slice without a word. Here every file of the folder must be a readable slice of the
series, and the slices must share one orientation, matrix and pixel spacing and sit evenly spaced along the
slice normal with no gap and no duplicate. :func:`~organseg.imageio.volumes.read_image` reads a series
folder in the order :func:`dicom_series_files` returns.

Two more shapes of input are read the same way. A folder holding several series is listed series by series
(SeriesInstanceUID, SeriesDescription, file count) and one is picked by UID or by description
(:func:`select_series`). A standard media export (a ``DICOMDIR`` file beside sub-folders, as a CD or a PACS
export writes it) is searched through all its sub-folders: every series in it is one volume
(:func:`find_series`), checked as above. A gantry-tilted series (slices not stacked along their normal) is
refused: reading it as an orthogonal volume would misplace every slice (see :func:`_check_series_geometry`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organseg.errors import DataError
from organseg.imageio.formats import IMAGE_SUFFIXES, describe_itk_error

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
    gantry_tilt: str = ""  # GantryDetectorTilt (0018,1120) as written, degrees; '' when absent


def _read_slice_header(path: Path) -> _Slice:
    import SimpleITK as sitk  # noqa: PLC0415 (about 0.3 s to import: only the verbs that read or write volumes pay it)

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
        reader.GetMetaData("0018|1120").strip() if reader.HasMetaDataKey("0018|1120") else "",
    )


#: How far (in pixels) a slice may sit off the line through the first slice along the slice normal: positions
#: and direction cosines are written with a few decimals, a gantry tilt shifts by a pixel within a few slices.
_STACK_TOLERANCE_PX = 0.05


def _check_stacked_along_normal(
    folder: Path, order: Sequence[_Slice], normal: np.ndarray, pixel_spacing: tuple[float, float]
) -> None:
    """DataError for a series whose slices are not stacked straight along their normal: a gantry-tilted CT
    (the image plane tilted, the table moving head-foot) or slices shifted in-plane. ITK would stack it as an
    orthogonal volume, with the slice spacing measured along the normal and every slice drawn at the first
    one's in-plane place, so each later slice would be misplaced by up to the whole in-plane shift. organseg
    refuses it rather than resample: resampling onto an orthogonal grid interpolates new voxels and moves the
    label map off the source images, which a DICOM-SEG must reference one to one."""
    p0 = np.asarray(order[0].position)
    offsets = np.array([np.asarray(s.position) - p0 for s in order])
    along = offsets @ normal
    inplane = offsets - along[:, None] * normal[None, :]
    drift = np.linalg.norm(inplane, axis=1)
    k = int(np.argmax(drift))
    if drift[k] <= _STACK_TOLERANCE_PX * min(pixel_spacing):
        return
    angle = math.degrees(math.atan2(float(drift[-1]), abs(float(along[-1]))))
    stated = f", GantryDetectorTilt {order[0].gantry_tilt} deg" if order[0].gantry_tilt else ""
    raise DataError(
        f"{folder}: gantry-tilted series: the slices are stacked at {angle:.2f} deg to their normal{stated} "
        f"({order[k].path.name} sits {drift[k]:.3g} mm off the line through {order[0].path.name}); organseg "
        "reads only orthogonal stacks: resample the series onto an orthogonal grid first (e.g. dcm2niix, "
        "3D Slicer)"
    )


def _check_series_geometry(folder: Path, files: Sequence[str]) -> list[str]:
    """The slices of one series sorted along the slice normal, after checking that they form one regular
    volume: one orientation, one matrix and pixel spacing, positions stacked along the slice normal (no gantry
    tilt) and evenly spaced with no gap and no duplicate. ITK's series reader would instead stack whatever it
    finds and report the mean spacing (a missing slice silently shifts every later slice), so the check is
    ours."""
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
    _check_stacked_along_normal(folder, order, normal, first.pixel_spacing)
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


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found by :func:`find_series`: its SeriesInstanceUID (0020,000E), SeriesDescription
    (0008,103E), SeriesNumber (0020,0011) and Modality (0008,0060) as the first file states them ('' when
    absent), and its files (not yet checked as a volume)."""

    uid: str
    description: str
    number: str
    modality: str
    files: tuple[Path, ...]

    def label(self) -> str:
        """How an error or a listing names the series: UID, number and description, file count."""
        number = f" #{self.number}" if self.number else ""
        description = f" {self.description!r}" if self.description else ""
        return f"{_series_label(self.uid)}{number}{description} ({len(self.files)} files)"

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file of the series (what its errors name)."""
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))


def is_media_export(path: str | Path) -> bool:
    """Whether ``path`` is a standard DICOM media export: a folder with a ``DICOMDIR`` index file in it (any
    case), the series in sub-folders below it, as a CD or a PACS export writes them."""
    path = Path(path)
    return path.is_dir() and any(p.is_file() and p.name.upper() == _DICOMDIR for p in path.iterdir())


def _has_dicom_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _folder_members(folder: Path) -> dict[str, list[str]]:
    """SeriesInstanceUID -> files of that series directly in ``folder``, as GDCM groups them."""
    import SimpleITK as sitk  # noqa: PLC0415 (about 0.3 s to import: only the verbs that read or write volumes pay it)

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}


def _series_details(uid: str, files: Sequence[str]) -> SeriesInfo:
    """The series' description, number and modality from its first file's header ('' where unreadable)."""
    import SimpleITK as sitk  # noqa: PLC0415 (about 0.3 s to import: only the verbs that read or write volumes pay it)

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[0]))
    reader.SetImageIO("GDCMImageIO")
    details = {"0008|103e": "", "0020|0011": "", "0008|0060": ""}
    try:
        reader.ReadImageInformation()
        for key in details:
            if reader.HasMetaDataKey(key):
                details[key] = reader.GetMetaData(key).strip()
    except RuntimeError:
        pass  # the geometry checks name an unreadable file when the series is read
    return SeriesInfo(
        uid, details["0008|103e"], details["0020|0011"], details["0008|0060"], tuple(Path(f) for f in files)
    )


def _export_members(root: Path) -> dict[str, list[str]]:
    """Every series below a media export's root, the files of one series gathered across sub-folders.

    An export may also hold a viewer program, an autorun file or a README beside the images: files without
    the DICOM preamble are left alone. A file with the preamble that GDCM cannot parse is refused, as in a
    series folder (the series would silently lose that image)."""
    members: dict[str, list[str]] = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        here = Path(folder)
        files = [here / n for n in sorted(names) if not n.startswith(".") and n.upper() != _DICOMDIR]
        if not any(_has_dicom_marker(f) for f in files):
            continue
        found = _folder_members(here)
        known = {Path(f).name for fs in found.values() for f in fs}
        for f in files:
            if f.name not in known and _has_dicom_marker(f):
                raise DataError(f"{f}: {_not_a_slice(f)}")
        for uid, fs in found.items():
            members.setdefault(uid, []).extend(fs)
    return members


def find_series(path: str | Path) -> list[SeriesInfo]:
    """Every DICOM series in ``path``: a series folder (its files directly in it) or a media export (a
    ``DICOMDIR`` beside sub-folders, searched recursively), in the order GDCM lists them.

    In a series folder every file must be a readable DICOM slice (a stray or truncated file is refused by
    name); a folder with no series, or an empty one, is refused."""
    folder = Path(path)
    if is_media_export(folder):
        members = _export_members(folder)
        if not members:
            raise DataError(f"{folder}: a DICOMDIR media export with no DICOM image series below it")
    else:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if not entries:
            raise DataError(f"{folder}: empty folder (expected a DICOM series)")
        members = _folder_members(folder)
        if not members:
            raise DataError(f"{folder}: no DICOM series found in this folder")
        # GDCM silently leaves out any file it cannot parse (a truncated slice, a stray file), and the series
        # reader then stacks the rest; every file of the folder must belong to a series.
        known = {Path(f).name for files in members.values() for f in files}
        for p in sorted(entries):
            if p.is_file() and p.name not in known and p.name.upper() != _DICOMDIR:
                raise DataError(f"{p}: {_not_a_slice(p)}")
    return [_series_details(uid, files) for uid, files in members.items()]


def select_series(series: Sequence[SeriesInfo], choice: str | None, where: str | Path) -> SeriesInfo:
    """The series ``choice`` names among ``series`` (found in ``where``).

    ``choice`` is a SeriesInstanceUID (exact) or else a SeriesDescription (exact after stripping, case
    ignored). Without a choice there must be one series. DataError listing every series (UID, number,
    description, file count) when there are several and no choice, when nothing matches, or when a
    description names several series (the UID tells them apart)."""
    listed = "; ".join(s.label() for s in series)
    if choice is None:
        if len(series) == 1:
            return series[0]
        place = "this media export" if is_media_export(where) else "one folder"
        raise DataError(
            f"{where}: {len(series)} DICOM series in {place} ({listed}); pick one with --series UID or "
            "DESCRIPTION (series_uid=), or give each series its own folder"
        )
    for s in series:
        if s.uid == choice:
            return s
    named = [s for s in series if s.description and s.description.casefold() == choice.strip().casefold()]
    if len(named) == 1:
        return named[0]
    if named:
        uids = ", ".join(_series_label(s.uid) for s in named)
        raise DataError(
            f"{where}: SeriesDescription {choice!r} names {len(named)} series ({uids}); pass the UID"
        )
    raise DataError(
        f"{where}: no DICOM series {choice!r} (neither a SeriesInstanceUID nor a SeriesDescription here; "
        f"found {listed})"
    )


def dicom_series_files(folder: str | Path, series_uid: str | None = None) -> list[Path]:
    """The checked files of one DICOM series in ``folder`` (a series folder or a media export), sorted along
    the slice normal (the order the volume is read in). ``series_uid`` picks a series by UID or description
    (:func:`select_series`); DataError as :func:`read_image` for a damaged, tilted or ambiguous series."""
    series = select_series(find_series(folder), series_uid, folder)
    files = [str(f) for f in series.files]
    where = Path(folder) if not is_media_export(folder) else series.folder
    return [Path(f) for f in _check_series_geometry(where, files)]


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
