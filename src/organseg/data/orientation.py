"""Show a (D, H, W) volume the way radiologists read axial slices, whatever order the file stores it in.

organseg never reorients data (see :mod:`organseg.data.io`): arrays keep the file's voxel order, so drawing
``array[z]`` as stored can put the spine at the top or the patient's left on the viewer's left. Pictures
(overlay PNGs, the HTML viewer) go through :func:`radiological_orientation` instead, which reads the
direction matrix of the volume's :class:`~organseg.data.io.Geometry` (LPS patient coordinates, as ITK and
DICOM use them: +x patient left, +y posterior, +z superior) and returns the axis order and flips that give

* rows from anterior (top) to posterior (bottom),
* columns from the patient's right (viewer's left) to the patient's left (viewer's right),
* slices from superior (index 0, the head end) to inferior, the order PACS viewers list an axial CT stack in,
  so that scrolling forward moves toward the feet.

A volume without a direction matrix (ACDC ``.h5`` files, synthetic arrays) keeps its array order.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from organseg.errors import DataError

if TYPE_CHECKING:
    from organseg.data.io import Geometry


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
