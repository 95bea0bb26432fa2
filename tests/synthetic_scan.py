"""A small synthetic scan with a chosen direction matrix, for the orientation tests (shared, not a test)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

RAS_STORAGE = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # how nibabel-style writers store scans (LPS flipped in x, y)


def synthetic_scan(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """5 x 6 x 7 random int16 voxels, anisotropic spacing (0.7, 0.8, 2.5) mm, an off-centre origin."""
    arr = np.random.default_rng(0).integers(0, 1000, (5, 6, 7)).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection([float(v) for v in direction])
    return image
