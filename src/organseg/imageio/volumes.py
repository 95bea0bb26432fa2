"""Reading and writing medical volumes (NIfTI, DICOM series, anything SimpleITK reads), with one clear
:class:`~organseg.errors.DataError` per bad file.

Arrays are (D, H, W) = SimpleITK's (z, y, x) voxel order, which is also the order the reference's SAMed-style
preprocessing produces (nibabel data transposed by (2, 1, 0)). Reading keeps a file's own voxel order, exactly
as the reference pipeline does; patient orientation is :mod:`~organseg.imageio.orientation`'s.
"""

from __future__ import annotations

import contextlib
import gzip
import locale
import os
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from organseg.errors import DataError, OutputError
from organseg.fileio import atomic_write
from organseg.imageio.dicom import dicom_series_files
from organseg.imageio.formats import describe_itk_error

if TYPE_CHECKING:  # SimpleITK is imported where it is used: augmentation and the phantom do not need it
    import SimpleITK as sitk


class _Located(Protocol):
    """What :meth:`Geometry.of_volume` reads of a volume (:class:`organseg.data.base.Volume` has it): the
    volume's spacing and the origin and direction its ``meta`` may record."""

    spacing: Sequence[float] | None
    meta: dict[str, Any]


@dataclass(frozen=True)
class Geometry:
    """Where a (D, H, W) array sits in the patient.

    ``spacing`` is in array-axis order (z, y, x) mm, like :class:`~organseg.data.base.Volume`. ``origin`` is
    the physical (x, y, z) position in mm of voxel [0, 0, 0] and ``direction`` the 3x3 direction cosines,
    row-major, both in SimpleITK's (LPS) convention, so they round-trip through any ITK-based tool unchanged.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        sx, sy, sz = image.GetSpacing()
        return cls(
            spacing=(float(sz), float(sy), float(sx)),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def of_volume(cls, volume: _Located) -> Geometry:
        """The geometry an evaluation volume records; what it does not know (spacing, origin, direction)
        takes the defaults above, since a NIfTI file needs all three."""
        direction = volume.meta.get("direction")
        return cls(
            spacing=tuple(volume.spacing) if volume.spacing is not None else cls().spacing,
            origin=tuple(volume.meta.get("origin", cls().origin)),
            direction=tuple(direction) if direction is not None else cls().direction,
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(tuple(float(v) for v in reversed(self.spacing)))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction))
        return image

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d.get("origin", (0.0, 0.0, 0.0))),
            direction=tuple(float(v) for v in d.get("direction", cls().direction)),
        )

    def close_to(self, other: Geometry, tol_mm: float = 1e-3, tol_dir: float = 1e-4) -> bool:
        return (
            np.allclose(self.spacing, other.spacing, atol=tol_mm, rtol=1e-5)
            and np.allclose(self.origin, other.origin, atol=max(tol_mm, 1e-2), rtol=1e-5)
            and np.allclose(self.direction, other.direction, atol=tol_dir)
        )


def _affine(shape: Sequence[int], geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(geom.direction, dtype=np.float64).reshape(3, 3)
    s = np.asarray(list(reversed(geom.spacing)), dtype=np.float64)
    return d * s[None, :], np.asarray(geom.origin, dtype=np.float64)


def grid_relation(
    shape_a: Sequence[int], geom_a: Geometry, shape_b: Sequence[int], geom_b: Geometry
) -> str | None:
    """'same' when two (D, H, W) grids coincide, 'reoriented' when they hold the same voxel centres in another
    axis order / flip (e.g. a label saved RAS, image LPS), None otherwise."""
    if tuple(shape_a) == tuple(shape_b) and geom_a.close_to(geom_b):
        return "same"
    a_m, a_o = _affine(shape_a, geom_a)
    b_m, b_o = _affine(shape_b, geom_b)
    try:
        m = np.linalg.solve(b_m, a_m)
        b = np.linalg.solve(b_m, a_o - b_o)
    except np.linalg.LinAlgError:
        return None
    rounded = np.round(m)
    if not np.allclose(m, rounded, atol=1e-3) or not np.allclose(b, np.round(b), atol=1e-2):
        return None
    if not (np.abs(rounded).sum(axis=0) == 1).all() or not (np.abs(rounded).sum(axis=1) == 1).all():
        return None
    size_a = np.asarray(list(reversed(shape_a)), dtype=np.float64)
    size_b = np.asarray(list(reversed(shape_b)), dtype=np.float64)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in size_a], indexing="ij")).reshape(3, -1)
    mapped = rounded @ corners + np.round(b)[:, None]
    if (mapped.min(axis=1) != 0).any() or (mapped.max(axis=1) != size_b - 1).any():
        return None
    return "reoriented"


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64


def _nifti_layout(header: bytes) -> tuple[int, int, str | None, tuple[float, ...]] | None:
    """(data start, data end, numpy dtype if float else None, spatial pixdim) of a NIfTI-1/2 header; None if
    not NIfTI."""
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            dims = struct.unpack(endian + "8h", header[40:56])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            pixdim = struct.unpack(endian + "3f", header[80:92])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            pixdim = struct.unpack(endian + "3d", header[112:136])
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    count = 1
    for n in dims[1 : ndim + 1]:
        count *= max(int(n), 1)
    fdtype = _NIFTI_FLOATS.get(int(datatype))
    spatial = tuple(float(v) for v in pixdim[: min(ndim, 3)])
    return offset, offset + count * int(bitpix) // 8, (endian + fdtype if fdtype else None), spatial


@dataclass(frozen=True)
class NiftiTransform:
    """The fields of a NIfTI header that place the voxels in space, as stored: both codes, the qform
    (quaternion, offset, qfac = pixdim[0]), the voxel size pixdim[1:4], the sform rows and the spatial unit.

    ITK reads one placement from them (the sform when it is a rotation and scaling, else the qform, and with
    both codes 0 a plain diagonal) and writes back its own: qform and sform from that one placement, codes 1
    ("scanner"). A sheared sform, an "aligned" or "template" code, or a file with neither would thus come
    out placed otherwise, in nibabel-based tools at least. :func:`write_image` stamps these fields on a label
    map unchanged, so it carries exactly its input's affine(s) in every reader."""

    qform_code: int
    sform_code: int
    qfac: float
    pixdim: tuple[float, float, float]
    quatern: tuple[float, float, float]  # quatern_b, _c, _d
    qoffset: tuple[float, float, float]  # qoffset_x, _y, _z
    srow: tuple[float, ...]  # srow_x, srow_y, srow_z: 12 numbers
    xyzt_units: int

    def sform_is_sheared(self) -> bool:
        """Whether the sform (when its code is set) is more than a rotation, reflection and voxel scaling:
        its three columns are not orthogonal. ITK then places the image by the qform instead."""
        if self.sform_code <= 0:
            return False
        m = np.asarray(self.srow, dtype=np.float64).reshape(3, 4)[:, :3]
        norms = np.linalg.norm(m, axis=0)
        if not np.all(norms > 0):
            return True
        unit = m / norms
        return not np.allclose(unit.T @ unit, np.eye(3), atol=1e-4)


# Byte layouts of the fields above, (format of one number, offset): NIfTI-1 stores shorts, floats and an
# unsigned char (xyzt_units), NIfTI-2 ints and doubles.
_NIFTI_XFORM = {
    348: dict(codes=("h", 252), pixdim=("f", 76), quatern=("f", 256), srow=("f", 280), units=("B", 123)),
    540: dict(codes=("i", 344), pixdim=("d", 104), quatern=("d", 352), srow=("d", 400), units=("i", 500)),
}


def _nifti_version(header: bytes) -> tuple[str, int] | None:
    """(byte order, header size 348 or 540) of a NIfTI header; None if it is not one."""
    for endian in ("<", ">"):
        for size in (348, 540):
            if len(header) >= size and struct.unpack(endian + "i", header[:4])[0] == size:
                return endian, size
    return None


def _open_nifti(path: Path, mode: str = "rb"):
    return gzip.open(path, mode) if path.name.lower().endswith(".gz") else open(path, mode)


def read_nifti_transform(path: str | Path) -> NiftiTransform | None:
    """The placement fields of a NIfTI file (see :class:`NiftiTransform`); None for any other input (a
    DICOM folder, an .mha). DataError for an unreadable header."""
    path = Path(path)
    if not path.is_file() or not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        with _open_nifti(path) as fh:
            header = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the NIfTI header ({exc})") from None
    version = _nifti_version(header)
    if version is None:
        return None
    endian, size = version
    lay = _NIFTI_XFORM[size]
    code_fmt, code_at = lay["codes"]
    codes = struct.unpack_from(f"{endian}2{code_fmt}", header, code_at)
    f, at = lay["pixdim"]
    pixdim = struct.unpack_from(f"{endian}4{f}", header, at)
    f, at = lay["quatern"]
    quatern = struct.unpack_from(f"{endian}6{f}", header, at)
    f, at = lay["srow"]
    srow = struct.unpack_from(f"{endian}12{f}", header, at)
    f, at = lay["units"]
    (units,) = struct.unpack_from(f"{endian}{f}", header, at)
    return NiftiTransform(
        qform_code=int(codes[0]),
        sform_code=int(codes[1]),
        qfac=float(pixdim[0]),
        pixdim=tuple(float(v) for v in pixdim[1:4]),
        quatern=tuple(float(v) for v in quatern[:3]),
        qoffset=tuple(float(v) for v in quatern[3:]),
        srow=tuple(float(v) for v in srow),
        xyzt_units=int(units),
    )


def _stamp_nifti_transform(plain: Path, transform: NiftiTransform, where: Path) -> None:
    """Overwrite the placement fields of the uncompressed NIfTI file ``plain`` with ``transform``."""
    with open(plain, "r+b") as fh:
        header = bytearray(fh.read(540))
        version = _nifti_version(bytes(header))
        if version is None:
            raise OutputError(f"{where}: the image writer did not write a NIfTI header")
        endian, size = version
        lay = _NIFTI_XFORM[size]
        f, at = lay["codes"]
        struct.pack_into(f"{endian}2{f}", header, at, transform.qform_code, transform.sform_code)
        f, at = lay["pixdim"]
        struct.pack_into(f"{endian}4{f}", header, at, transform.qfac, *transform.pixdim)
        f, at = lay["quatern"]
        struct.pack_into(f"{endian}6{f}", header, at, *transform.quatern, *transform.qoffset)
        f, at = lay["srow"]
        struct.pack_into(f"{endian}12{f}", header, at, *transform.srow)
        f, at = lay["units"]
        struct.pack_into(f"{endian}{f}", header, at, transform.xyzt_units)
        fh.seek(0)
        fh.write(header[:size])


def _check_nifti_header(path: Path) -> tuple[int, int, str | None, tuple[float, ...]] | None:
    """The NIfTI layout of ``path`` (None for other formats), after the header check ITK does not do: it
    reads a zero or NaN voxel size as 1 mm (and a negative one as its absolute value) without a word, and
    every volume and distance would then be wrong."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            layout = _nifti_layout(fh.read(540))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read image, file is truncated or corrupt ({exc})") from None
    if layout is not None and not all(np.isfinite(v) and v != 0 for v in layout[3]):
        raise DataError(f"{path}: voxel spacing (pixdim) {layout[3]} mm is zero or not a number")
    return layout


def _check_nifti_file(path: Path) -> None:
    """Checks ITK does not do for NIfTI: the header's voxel size (above); it fills a truncated .nii.gz with
    zeros, and it turns NaN/inf voxels into 0, both without a word. Integer files cost one look at gzip's
    stored length; float files are scanned."""
    layout = _check_nifti_header(path)
    if layout is None:
        return
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    start, end, float_dtype, _ = layout
    if float_dtype is None:
        if name.endswith(".gz"):
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                if int.from_bytes(fh.read(4), "little") == end % 2**32:
                    return  # gzip's stored length agrees with the header: complete
        elif path.stat().st_size >= end:
            return
    try:
        with opener(path, "rb") as fh:
            data = fh.read(end)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: file is truncated or corrupt ({exc})") from None
    if len(data) < end:
        raise DataError(f"{path}: file is truncated ({len(data)} of {end} bytes)")
    if float_dtype is not None:
        bad = int((~np.isfinite(np.frombuffer(data, dtype=float_dtype, offset=start))).sum())
        if bad:
            raise DataError(f"{path}: image has {bad} NaN/inf voxels")


@contextlib.contextmanager
def _itk_guard(quiet: bool):
    """GDCM (SimpleITK's DICOM reader) switches the process locale to "C" while scanning a folder and leaves
    it there; Python's default text encoding would then become ASCII for the rest of the process. With
    ``quiet`` (DICOM series) ITK's multi-line warnings (e.g. "Non uniform sampling or missing slices") are
    switched off meanwhile: the series checks turn every such condition into one DataError first."""
    import SimpleITK as sitk  # noqa: PLC0415 (about 0.3 s to import: only the verbs that read or write volumes pay it)

    saved = locale.setlocale(locale.LC_ALL)
    warnings_on = sitk.ProcessObject_GetGlobalWarningDisplay()
    if quiet:
        sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(warnings_on)
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, saved)


def read_sitk(path: str | Path, *, series_uid: str | None = None) -> sitk.Image:
    """Read a 3-D scalar image (file or DICOM series folder) as a SimpleITK image; DataError on any
    problem.

    A DICOM folder is checked before it is read: every file must be a readable slice of the series, and the
    slices must share one orientation, matrix and pixel spacing and sit evenly spaced along the slice normal
    with no gap and no duplicate (ITK would stack what it finds and report the mean spacing)."""
    with _itk_guard(quiet=Path(path).is_dir()):
        return _read_sitk(path, series_uid)


def _read_sitk(path: str | Path, series_uid: str | None) -> sitk.Image:
    import SimpleITK as sitk  # noqa: PLC0415 (about 0.3 s to import: only the verbs that read or write volumes pay it)

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.is_dir():
            files = [str(f) for f in dicom_series_files(path, series_uid)]
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            if path.stat().st_size == 0:
                raise DataError(f"{path}: empty file")
            _check_nifti_file(path)
            image = sitk.ReadImage(str(path))
    except DataError:
        raise
    except Exception as exc:  # SimpleITK raises RuntimeError for unreadable, truncated or non-image files
        raise DataError(
            f"{path}: cannot read image, file is truncated, corrupt or not an image "
            f"({describe_itk_error(exc)})"
        ) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()}-component pixels; "
            "a scalar (grey-value) image is needed"
        )
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        # A trailing singleton time axis is a common NIfTI export artefact; it carries no data.
        size = list(image.GetSize())
        image = sitk.Extract(
            image, [*size[:3], 0], [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTION_COLLAPSETOSUBMATRIX
        )
        dim = 3
    if dim != 3:
        raise DataError(f"{path}: {dim}-D image of size {tuple(image.GetSize())}; a 3-D volume is needed")
    _check_spacing(image.GetSpacing(), path)
    return image


def _check_spacing(spacing: Sequence[float], path: Path) -> None:
    """Volumes, distances and HD95 are computed from the spacing: it must be positive and finite."""
    if not all(np.isfinite(v) and v > 0 for v in spacing[:3]):
        raise DataError(f"{path}: voxel spacing {tuple(float(v) for v in spacing[:3])} mm is not positive")


def read_image(path: str | Path, *, series_uid: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI (or other ITK) file or a DICOM series folder.

    Returns the (D, H, W) array in the file's own intensities and dtype (HU for CT) and its :class:`Geometry`.
    Raises DataError naming the path for a missing, empty, truncated, non-image, non-3-D or multi-series
    input.
    """
    import SimpleITK as sitk  # noqa: PLC0415 (about 0.3 s to import: only the verbs that read or write volumes pay it)

    image = read_sitk(path, series_uid=series_uid)
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def check_image_file(path: str | Path) -> tuple[tuple[int, int, int], Geometry]:
    """Whether an image file reads back whole, without reading its voxels where the format allows: a NIfTI
    file's header and its length (gzip's stored length, or the file size) against what the header says;
    another format is read. Returns its shape (D, H, W) and geometry; DataError naming the problem."""
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_file(path)
        return read_image_info(path)
    image, geom = read_image(path)
    return (int(image.shape[0]), int(image.shape[1]), int(image.shape[2])), geom


def read_image_info(path: str | Path) -> tuple[tuple[int, int, int], Geometry]:
    """Shape (D, H, W) and geometry from the header only (cheap); DataError like :func:`read_image`."""
    import SimpleITK as sitk  # noqa: PLC0415 (about 0.3 s to import: only the verbs that read or write volumes pay it)

    path = Path(path)
    if path.is_dir():
        image = read_sitk(path)
        return tuple(reversed(image.GetSize())), Geometry.from_sitk(image)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    _check_nifti_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read image header, file is truncated, corrupt or not an image "
            f"({describe_itk_error(exc)})"
        ) from None
    size = list(reader.GetSize())
    dim = reader.GetDimension()
    if dim == 4 and size[3] == 1:
        size, dim = size[:3], 3
    if dim != 3:
        raise DataError(f"{path}: {dim}-D image of size {tuple(reader.GetSize())}; a 3-D volume is needed")
    if reader.GetNumberOfComponents() != 1:
        raise DataError(
            f"{path}: {reader.GetNumberOfComponents()}-component pixels; a scalar image is needed"
        )
    # ITK's header-only read keeps a negative NIfTI pixdim that its full read turns positive; follow the
    # full read so that both agree.
    sx, sy, sz = (abs(v) for v in reader.GetSpacing()[:3])
    _check_spacing((sx, sy, sz), path)
    direction = reader.GetDirection()
    if len(direction) == 16:
        direction = tuple(direction[r * 4 + c] for r in range(3) for c in range(3))
    geom = Geometry(spacing=(sz, sy, sx), origin=tuple(reader.GetOrigin()[:3]), direction=tuple(direction))
    return (size[2], size[1], size[0]), geom


def _storage_dtype(array: np.ndarray) -> np.ndarray:
    """Integer arrays go out in the smallest common type that holds them (NIfTI viewers dislike int64)."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize > 2:
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dt in (np.uint8, np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                return array.astype(dt)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array


def write_image(
    array: np.ndarray,
    geometry: Geometry | None,
    path: str | Path,
    *,
    description: str | None = None,
    atomic: bool = True,
    nifti_transform: NiftiTransform | None = None,
) -> None:
    """Write a (D, H, W) array with ``geometry`` (spacing, origin, direction kept) atomically.

    ``atomic=False`` writes ``path`` directly: for a temporary of :func:`organseg.fileio.staged`, which
    writes a set of files (a label map and its sidecar) that must appear together.

    The format follows the suffix (``.nii.gz`` compressed NIfTI). Integer arrays are stored in the smallest of
    uint8 / int16 / int32 that holds their range; float64 is stored as float32. ``description`` goes into the
    NIfTI ``descrip`` field (used to label synthetic data). ``nifti_transform`` (a NIfTI ``path`` only)
    replaces the placement fields ITK writes with those of the input the array was read from (see
    :class:`NiftiTransform`): the array must then be in that input's voxel order and shape.
    """
    import SimpleITK as sitk  # noqa: PLC0415 (about 0.3 s to import: only the verbs that read or write volumes pay it)

    array = np.asarray(array)
    if array.ndim != 3:
        raise DataError(f"{path}: cannot write a {array.ndim}-D array as a volume; (D, H, W) is needed")
    image = sitk.GetImageFromArray(_storage_dtype(np.ascontiguousarray(array)))
    (geometry or Geometry()).apply_to(image)
    if description:
        image.SetMetaData("ITK_FileNotes", description[:79])  # ITK writes it to the NIfTI descrip field
    final = Path(path)
    compress = final.name.lower().endswith(".gz")

    is_nifti = final.name.lower().endswith((".nii", ".nii.gz"))
    if nifti_transform is not None and not is_nifti:
        raise OutputError(f"{final}: a NIfTI header's placement can only be kept in a .nii or .nii.gz file")

    def itk_write(tmp: Path, compress: bool) -> None:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:  # ITK reports a full disk or an unwritable file this way
            raise OutputError(f"{final}: cannot write image ({describe_itk_error(exc)})") from None

    def write(tmp: Path) -> None:
        if nifti_transform is None:
            itk_write(tmp, compress)
            return
        # ITK writes its own placement; the header is stamped on an uncompressed file, then compressed once.
        plain = tmp.with_name(tmp.name[:-3]) if tmp.name.lower().endswith(".gz") else tmp
        try:
            itk_write(plain, False)
            _stamp_nifti_transform(plain, nifti_transform, final)
            if plain != tmp:
                with (
                    open(plain, "rb") as src,
                    open(tmp, "wb") as raw,
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out,
                ):
                    shutil.copyfileobj(src, out, 1 << 20)
        finally:
            if plain != tmp:
                plain.unlink(missing_ok=True)

    if atomic:
        atomic_write(final, write, suffix=True)
    else:
        write(final)
