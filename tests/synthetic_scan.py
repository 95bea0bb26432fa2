"""Orientation geometry shared by the orientation tests and the bad-input table (not a test): a small
synthetic scan with a chosen direction matrix, a scan stored in another voxel order, an oblique frame."""

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


def reoriented(image: sitk.Image, perm: tuple[int, ...], flips: tuple[bool, ...]) -> sitk.Image:
    """The same scan stored in another voxel order: axes permuted by ``perm``, then flipped by ``flips``."""
    # SimpleITK keeps every voxel at its physical position: direction and origin follow the new voxel order.
    return sitk.Flip(sitk.PermuteAxes(image, list(perm)), list(flips))


def diagonal_frame() -> np.ndarray:
    """An orthonormal frame whose x axis runs along the cube diagonal: 54.7 degrees from every patient axis,
    nearest to none."""
    u = np.array([1.0, 1.0, 1.0]) / np.sqrt(3)
    v = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    return np.stack([u, v, np.cross(u, v)], axis=1)
