"""Patient orientation of voxel arrays: the codes checkpoints record, the exact reorientation ``predict`` and
``test`` apply, and the radiological display of overlays and viewers.

**Orientation codes.** A scan's orientation is written as three letters, one per image axis in the order
(x, y, z) = (columns, rows, slices) = array axes (2, 1, 0) of a (D, H, W) array, each naming the patient
direction the voxel index runs toward: L/R (left/right), P/A (posterior/anterior), S/I (superior/inferior).
"LPS" is a file whose direction matrix is the identity in ITK/DICOM's LPS patient coordinates (+x patient
left, +y posterior, +z superior), as DICOM series and most ITK-written NIfTI are; "RAS" is what nibabel-style
writers store (the TotalSegmentator example files); "LAS" has the rows of an LPS file reversed. The letters
follow the convention of ``nibabel.aff2axcodes``. :func:`scan_orientation` gives a direction matrix's code,
:func:`reorientation` the permutation and flips (exact, no resampling) between two codes.

**Oblique direction matrices** are brought to their nearest code: each image axis is matched to the patient
axis it is closest to. That is unique while every image axis is less than 45° from a patient axis; beyond it
(and for a matrix that is not orthonormal: sheared or scaled axes) no code is nearest, and
:func:`scan_orientation` raises a :class:`~organseg.errors.DataError` naming the file. The tilt it returns
lets callers warn: a network then sees the scan tilted by that angle.

**Display.** Pictures (overlay PNGs, the HTML viewer) go through :func:`radiological_orientation`, which
returns the axis order and flips that give

* rows from anterior (top) to posterior (bottom),
* columns from the patient's right (viewer's left) to the patient's left (viewer's right),
* slices from superior (index 0, the head end) to inferior, the order PACS viewers list an axial CT stack in,
  so that scrolling forward moves toward the feet.

A volume without a direction matrix (ACDC ``.h5`` files, synthetic arrays) keeps its array order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from organseg.errors import DataError
from organseg.imageio.volumes import Geometry

#: The letters of each LPS patient axis (x, y, z): (toward its negative end, toward its positive end).
AXIS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
_AXIS_OF = {letter: k for k, pair in enumerate(AXIS_LETTERS) for letter in pair}
#: Columns of a direction matrix may be off unit length or orthogonality by this much (float rounding of
#: writers); beyond it the matrix is sheared or scaled, which no axis permutation describes.
ORTHONORMAL_TOLERANCE = 1e-3
#: A scan whose voxel axes are tilted by more than this (degrees) from the patient axes is oblique: it is
#: brought to its nearest orientation with a warning. Below it the tilt is writers' float rounding.
OBLIQUE_DEGREES = 0.01
#: At this tilt (degrees) or more an image axis is as near to two patient axes: no orientation is nearest.
MAX_TILT_DEGREES = 45.0


def code_problem(code: object) -> str | None:
    """Why ``code`` is not an orientation code (None when it is one): three letters, one of L/R, one of P/A
    and one of S/I, in any order, upper case."""
    if not isinstance(code, str) or len(code) != 3 or any(c not in _AXIS_OF for c in code):
        return f"{code!r} is not an orientation code (three letters from L/R, P/A, S/I, e.g. 'LPS')"
    if sorted(_AXIS_OF[c] for c in code) != [0, 1, 2]:
        return f"{code!r} is not an orientation code: it names a patient axis twice"
    return None


def _check_code(code: str) -> str:
    problem = code_problem(code)
    if problem:
        raise ValueError(problem)
    return code


@dataclass(frozen=True)
class ScanOrientation:
    """A direction matrix's nearest orientation ``code`` and ``tilt``: the largest angle (degrees) between an
    image axis and the patient axis it was matched to (0 for an axis-aligned scan)."""

    code: str
    tilt: float

    @property
    def oblique(self) -> bool:
        return self.tilt > OBLIQUE_DEGREES


def _fmt_direction(d: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in d.ravel()) + ")"


def scan_orientation(direction: Sequence[float], source: str = "image") -> ScanOrientation:
    """The orientation code of a 3x3 direction matrix (row-major, one column per image axis x, y, z, LPS
    patient coordinates, as :class:`~organseg.imageio.volumes.Geometry` holds it) and its tilt.

    Each image axis is matched to the patient axis with the largest |cosine|; the sign says which way it runs.
    Raises DataError naming ``source`` when the matrix is not 9 finite numbers, not orthonormal (columns off
    unit length or orthogonality by more than :data:`ORTHONORMAL_TOLERANCE`), or when an image axis is
    :data:`MAX_TILT_DEGREES` or more from every patient axis (then no orientation is nearest)."""
    d = np.asarray(direction, dtype=np.float64)
    if d.size != 9 or not np.isfinite(d).all():
        raise DataError(
            f"{source}: direction matrix {tuple(direction)}: 9 finite direction cosines are needed"
        )
    d = d.reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
        raise DataError(
            f"{source}: direction matrix {_fmt_direction(d)} is not orthonormal (sheared or scaled axes); "
            "organseg turns scans to the network's orientation by axis permutations and flips only: resample "
            "it to an orthogonal grid first"
        )
    letters, tilt = [], 0.0
    for j in range(3):
        col = d[:, j]
        k = int(np.argmax(np.abs(col)))
        # the angle from the off-axis part (arcsin), better conditioned near 0 than arccos of the cosine
        off = float(np.sqrt(max(0.0, float(col @ col) - col[k] ** 2)))
        angle = math.degrees(math.atan2(off, abs(float(col[k]))))
        if angle >= MAX_TILT_DEGREES - 1e-6:
            raise DataError(
                f"{source}: image axis {'xyz'[j]} is {angle:.1f} degrees from the nearest patient axis "
                f"(direction {_fmt_direction(d)}); at 45 degrees or more no orientation is nearest and "
                "organseg turns scans by axis permutations and flips only: resample it to an axis-aligned "
                "grid first"
            )
        letters.append(AXIS_LETTERS[k][1 if col[k] > 0 else 0])
        tilt = max(tilt, angle)
    return ScanOrientation("".join(letters), tilt)


@dataclass(frozen=True)
class Reorientation:
    """An exact change of voxel order of (D, H, W) arrays: target array axis i is source axis ``axes[i]``,
    reversed where ``flips[i]``. No voxel is interpolated; :meth:`undo` restores the source order exactly."""

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Source order -> target order (a view when possible)."""
        out = np.transpose(array, self.axes)
        flip_axes = tuple(i for i, f in enumerate(self.flips) if f)
        return np.flip(out, flip_axes) if flip_axes else out

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Target order -> source order: the inverse of :meth:`apply`."""
        flip_axes = tuple(i for i, f in enumerate(self.flips) if f)
        out = np.flip(array, flip_axes) if flip_axes else array
        return np.transpose(out, tuple(int(a) for a in np.argsort(self.axes)))

    def shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The target shape of a source (D, H, W) shape."""
        return tuple(int(shape[a]) for a in self.axes)  # type: ignore[return-value]

    def spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in source array order -> target array order."""
        return tuple(float(spacing[a]) for a in self.axes)  # type: ignore[return-value]

    def geometry(self, geometry: Geometry, shape: Sequence[int]) -> Geometry:
        """The :class:`Geometry` of the target array, given the source's and its (D, H, W) ``shape``: every
        voxel keeps its physical position (spacing and direction follow the axes, the origin moves to the
        voxel that becomes [0, 0, 0])."""
        d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
        # array axis a runs along image axis 2 - a: direction column 2 - a, spacing[a]
        vectors = [d[:, 2 - a] * float(geometry.spacing[a]) for a in range(3)]
        origin = np.asarray(geometry.origin, dtype=np.float64).copy()
        columns = [np.zeros(3)] * 3
        for i, (a, flip) in enumerate(zip(self.axes, self.flips, strict=True)):
            if flip:
                origin = origin + (int(shape[a]) - 1) * vectors[a]
            columns[2 - i] = (-1.0 if flip else 1.0) * d[:, 2 - a]
        direction = np.stack(columns, axis=1)
        return Geometry(
            spacing=self.spacing(geometry.spacing),
            origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in direction.ravel()),
        )


def reorientation(source: str, target: str) -> Reorientation:
    """The :class:`Reorientation` that turns a (D, H, W) array stored in orientation ``source`` into one in
    orientation ``target`` (both codes as above): a permutation of the axes and flips, exact."""
    src, dst = _check_code(source)[::-1], _check_code(target)[::-1]  # per array axis (D, H, W)
    axes, flips = [], []
    for letter in dst:
        j = next(j for j in range(3) if _AXIS_OF[src[j]] == _AXIS_OF[letter])
        axes.append(j)
        flips.append(src[j] != letter)
    return Reorientation(tuple(axes), tuple(flips))  # type: ignore[arg-type]


def volume_orientation(meta: dict, source: str = "volume") -> str | None:
    """The orientation code of an evaluation volume's array: ``meta["orientation"]`` as its reader recorded
    it, else the code of ``meta["direction"]``; None when the volume knows neither (given as stored)."""
    code = meta.get("orientation")
    if code is not None:
        return _check_code(code)
    direction = meta.get("direction")
    return scan_orientation(direction, source).code if direction is not None else None


def transposed_code(code: str, axes: Sequence[int]) -> str:
    """The orientation code of ``np.transpose(array, axes)`` for an array in orientation ``code``."""
    per_array_axis = _check_code(code)[::-1]
    return "".join(per_array_axis[a] for a in axes)[::-1]


@dataclass(frozen=True)
class DisplayOrientation:
    """Which array axis is shown as (slice, row, column), and which of the three are reversed."""

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)
    #: False when no direction matrix was known and the array order is shown as stored
    radiological: bool = False

    def apply(self, array: np.ndarray) -> np.ndarray:
        """(D, H, W) array in file order -> the same voxels in display order (a view, no copy)."""
        if array.ndim != 3:
            raise ValueError(f"a (D, H, W) volume is needed, got shape {array.shape}")
        out = np.transpose(array, self.axes)
        flip_axes = tuple(i for i, f in enumerate(self.flips) if f)
        return np.flip(out, flip_axes) if flip_axes else out

    def spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in array order -> (slice, row, column) in display order."""
        return tuple(float(spacing[a]) for a in self.axes)  # type: ignore[return-value]

    def array_index(self, display_slice: int, shape: Sequence[int]) -> int:
        """The index along the file's axis ``axes[0]`` of displayed slice ``display_slice``."""
        n = int(shape[self.axes[0]])
        return n - 1 - display_slice if self.flips[0] else display_slice


def radiological_orientation(geometry: Geometry | Sequence[float] | None) -> DisplayOrientation:
    """The :class:`DisplayOrientation` of a volume from its geometry (or its 9 direction cosines).

    Each patient axis is matched to the image axis closest to it (the permutation with the largest total
    |cosine|, so oblique acquisitions go to their nearest axis instead of failing); a sign then says whether
    that axis must be reversed. ``None`` keeps the array order.
    """
    if geometry is None:
        return DisplayOrientation()
    direction = getattr(geometry, "direction", geometry)
    d = np.asarray(direction, dtype=np.float64)
    if d.size != 9 or not np.isfinite(d).all():
        raise DataError(f"direction matrix {tuple(direction)}: 9 finite direction cosines are needed")
    d = d.reshape(3, 3)  # row = patient axis (x L, y P, z S); column = image axis (x, y, z)
    if abs(np.linalg.det(d)) < 1e-6:
        raise DataError(f"direction matrix {tuple(direction)} is singular")
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[k, p[k]]) for k in range(3)))
    # best[k] = the image axis along patient axis k; image axis j is array axis 2 - j
    array_axis = [2 - best[k] for k in range(3)]
    sign = [np.sign(d[k, best[k]]) for k in range(3)]
    return DisplayOrientation(
        axes=(array_axis[2], array_axis[1], array_axis[0]),
        # slices superior -> inferior: reverse when the axis runs toward superior (+z)
        # rows anterior -> posterior and columns right -> left: reverse when the axis runs toward -y / -x
        flips=(bool(sign[2] > 0), bool(sign[1] < 0), bool(sign[0] < 0)),
        radiological=True,
    )
