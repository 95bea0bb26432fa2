"""Builders shared by the tests/test_data_*.py modules (this module holds no tests).

Real data are read in place from ../shared and written only to pytest's temporary folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from organseg.data.classes import TOTALSEG_TO_BTCV, remap_labels
from organseg.imageio.volumes import Geometry, read_image, write_image


def write_totalseg_raw(totalseg_dir: Path, raw: Path) -> dict:
    """A two-case raw BTCV folder from the real CT: case 1 = example_ct (NIfTI, 3 mm), case 2 = the DICOM
    subject converted to NIfTI; label maps converted from TotalSegmentator ids to BTCV ids, each written with
    its own header geometry (the DICOM subject's label is stored y-flipped, as TotalSegmentator wrote it)."""
    ct, g_ct = read_image(totalseg_dir / "example_ct.nii.gz")
    seg, g_seg = read_image(totalseg_dir / "example_seg_fast_force_split.nii.gz")
    dcm, g_dcm = read_image(totalseg_dir / "example_ct_dicom")
    seg2, g_seg2 = read_image(totalseg_dir / "example_seg_dicom.nii.gz")
    write_image(ct, g_ct, raw / "img" / "img0001.nii.gz")
    write_image(remap_labels(seg, TOTALSEG_TO_BTCV), g_seg, raw / "label" / "label0001.nii.gz")
    write_image(dcm, g_dcm, raw / "img" / "img0002.nii.gz")
    write_image(remap_labels(seg2, TOTALSEG_TO_BTCV), g_seg2, raw / "label" / "label0002.nii.gz")
    return {"ct": (ct, g_ct, seg), "dicom": (dcm, g_dcm, seg2, g_seg2)}


@pytest.fixture(scope="session")
def totalseg_raw(tmp_path_factory, totalseg_dir) -> tuple[Path, dict]:
    raw = tmp_path_factory.mktemp("totalseg_raw")
    arrays = write_totalseg_raw(totalseg_dir, raw)
    return raw, arrays


def tiny_case(seed: int, shape=(5, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like volume (HU int16) with a few BTCV organs as boxes."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 20, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[:, 2:8, 2:8] = 6  # liver
    label[:, 10:14, 12:18] = 1  # spleen
    label[1:4, 16:20, 3:6] = 8  # aorta
    label[2:4, 18:22, 12:15] = 9  # IVC: dropped to background by the Synapse map
    image[label == 8] = 180
    image[0, 0, 0] = -1000
    return image, label


def write_tiny_raw(raw: Path, ids, shape=(5, 24, 20), spacing=(3.0, 0.8, 0.8)) -> None:
    geom = Geometry(spacing=spacing)
    for i in ids:
        image, label = tiny_case(i, shape)
        write_image(image, geom, raw / "img" / f"img{i:04d}.nii.gz")
        write_image(label, geom, raw / "label" / f"label{i:04d}.nii.gz")
