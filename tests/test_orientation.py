"""Radiological display orientation: one patient, one picture, whatever the voxel order of the file."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from organseg.data.base import Volume
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.errors import DataError
from organseg.imageio.orientation import DisplayOrientation, radiological_orientation
from organseg.imageio.volumes import Geometry, read_image
from organseg.reporting.report import OverlayCollector, load_overlays, plot_prediction
from synthetic_scan import RAS_STORAGE, reoriented, synthetic_scan


def _arrays(image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def test_lps_identity_and_no_geometry() -> None:
    # identity LPS: columns already run right -> left and rows anterior -> posterior; only the slice order
    # (superior first) is reversed
    o = radiological_orientation(Geometry())
    assert o == DisplayOrientation((0, 1, 2), (True, False, False), radiological=True)
    assert radiological_orientation(None) == DisplayOrientation()  # no direction: array order kept
    a = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(radiological_orientation(None).apply(a), a)
    np.testing.assert_array_equal(o.apply(a), a[::-1])
    assert o.array_index(0, a.shape) == 1 and o.array_index(1, a.shape) == 0
    # RAS-stored NIfTI (x and y reversed), as the TotalSegmentator example files
    ras = radiological_orientation((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert ras.axes == (0, 1, 2) and ras.flips == (True, True, True)
    # a sagittal acquisition: image x is patient y, image y is patient z, image z is patient x
    sag = radiological_orientation((0, 0, 1, 1, 0, 0, 0, 1, 0))
    assert sag.axes == (1, 2, 0) and sag.spacing((3.0, 2.0, 1.0)) == (2.0, 1.0, 3.0)


def test_bad_direction_is_a_data_error() -> None:
    with pytest.raises(DataError, match="singular"):
        radiological_orientation((1, 0, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(DataError, match="9 finite"):
        radiological_orientation((1, 0, 0))


@pytest.mark.parametrize(
    "direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 0, 1, 1, 0, 0, 0, -1, 0)]
)
def test_every_axis_order_and_flip_gives_the_same_display(direction) -> None:
    base = synthetic_scan(direction)
    ref_arr, ref_geom = _arrays(base)
    expected = radiological_orientation(ref_geom).apply(ref_arr)
    seen = set()
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            arr, geom = _arrays(reoriented(base, perm, flips))
            seen.add(arr.tobytes())
            o = radiological_orientation(geom)
            np.testing.assert_array_equal(o.apply(arr), expected, err_msg=f"perm {perm} flips {flips}")
            assert o.spacing(geom.spacing) == radiological_orientation(ref_geom).spacing(ref_geom.spacing)
    assert len(seen) == 48  # the copies really differ as arrays


def test_overlay_pngs_equal_for_a_reoriented_copy(tmp_path: Path) -> None:
    """The predict overlay and the test-report overlay slices are pixel-equal for a flipped + permuted copy
    of a scan (with its matching direction and origin)."""
    import matplotlib.image as mpimg

    base = synthetic_scan(RAS_STORAGE)
    arr0, geom0 = _arrays(base)
    copy = reoriented(base, (2, 0, 1), (True, False, True))
    arr1, geom1 = _arrays(copy)
    pngs, items = [], []
    for n, (arr, geom) in enumerate(((arr0, geom0), (arr1, geom1))):
        image = (arr / 1000.0).astype(np.float32)
        pred = (arr % 4).astype(np.uint8)
        pngs.append(
            mpimg.imread(
                plot_prediction(
                    image, pred, SYNAPSE_CLASSES, tmp_path / f"p{n}.png", geometry=geom, title="scan"
                )
            )
        )
        collector = OverlayCollector()
        vol = Volume("c", image, pred.astype(np.int64), geom.spacing, {"direction": geom.direction})
        collector(vol, pred, np.full((8, 2), 0.5))
        collector.save(tmp_path / f"ov{n}.npz")
        items.append(load_overlays(tmp_path / f"ov{n}.npz")[0])
    assert arr0.shape != arr1.shape
    np.testing.assert_array_equal(pngs[0], pngs[1])
    for key in ("image", "label", "pred"):
        np.testing.assert_array_equal(items[0][key], items[1][key])
    assert items[0]["z"] == items[1]["z"] and items[0]["aspect"] == items[1]["aspect"]


def test_real_ct_spine_at_the_bottom_liver_on_the_left(totalseg_dir: Path) -> None:
    ct, geom = read_image(totalseg_dir / "example_ct_sm.nii.gz")
    seg, seg_geom = read_image(totalseg_dir / "example_seg.nii.gz")
    assert seg_geom.close_to(geom)
    o = radiological_orientation(geom)
    shown, labels = o.apply(ct), o.apply(seg)

    def spine_below_middle(volume: np.ndarray) -> list[bool]:
        """Per slice: is the bone of the midline band (the spine; not the ribs) below the body's middle?"""
        out = []
        for s in volume:
            rows = np.flatnonzero((s > -300).any(axis=1))  # the body's rows (and the table's)
            bone_rows = np.nonzero(s[:, s.shape[1] // 3 : 2 * s.shape[1] // 3] > 200)[0]
            out.append(bool(bone_rows.mean() > (rows.min() + rows.max()) / 2))
        return out

    assert all(spine_below_middle(shown))
    assert not any(spine_below_middle(ct))  # as stored, the spine is at the top of every slice
    # TotalSegmentator class 5 = liver, in the patient's right: the viewer's left
    liver_cols = np.nonzero(labels == 5)[2]
    assert liver_cols.size and liver_cols.mean() < shown.shape[2] / 2


def test_real_dicom_ct_and_its_flipped_label_file_line_up(totalseg_dir: Path) -> None:
    """example_seg_dicom.nii.gz stores the DICOM series' grid with y reversed: shown through their own
    geometries, the labels fall on the organs (liver and spleen enhance to ~80-90 HU)."""
    ct, geom = read_image(totalseg_dir / "example_ct_dicom")
    seg, seg_geom = read_image(totalseg_dir / "example_seg_dicom.nii.gz")
    assert not seg_geom.close_to(geom)
    shown_ct = radiological_orientation(geom).apply(ct)
    shown_seg = radiological_orientation(seg_geom).apply(seg)
    for organ in (1, 5):  # spleen, liver
        assert 40 < shown_ct[shown_seg == organ].mean() < 200
        assert ct[seg == organ].mean() < 0  # array order alone puts them on fat and air
