"""Image I/O: geometry round trips, DICOM series, and the checks ITK does not do."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from organseg.errors import DataError
from organseg.imageio.volumes import Geometry, grid_relation, read_image, read_image_info, write_image

OBLIQUE = Geometry(
    spacing=(2.5, 0.7, 0.8),
    origin=(-120.5, 33.25, 410.0),
    direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
)


def test_write_read_round_trip_keeps_geometry_and_values(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, (4, 6, 5)).astype(np.int16)
    write_image(hu, OBLIQUE, tmp_path / "ct.nii.gz")
    back, geom = read_image(tmp_path / "ct.nii.gz")
    assert back.dtype == np.int16 and np.array_equal(back, hu)
    assert geom.close_to(OBLIQUE, tol_mm=1e-4)
    shape, header_geom = read_image_info(tmp_path / "ct.nii.gz")
    assert shape == (4, 6, 5) and header_geom.close_to(OBLIQUE, tol_mm=1e-4)
    # int64 labels are stored in the smallest type that holds them
    write_image(np.arange(120).reshape(4, 6, 5).astype(np.int64), None, tmp_path / "lab.nii.gz")
    lab, _ = read_image(tmp_path / "lab.nii.gz")
    assert lab.dtype == np.uint8 and lab.max() == 119
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_real_dicom_series(totalseg_dir):
    image, geom = read_image(totalseg_dir / "example_ct_dicom")
    assert image.shape == (20, 512, 512)
    assert geom.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert image.min() > -1100 and image.max() < 3500  # Hounsfield units after rescale slope/intercept


def _write_dicom_series(folder, uid: str, start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        sl = sitk.GetImageFromArray(np.full((1, 8, 8), k, np.int16))
        for tag, value in (
            ("0020|000e", uid),
            ("0020|0013", str(k + 1)),
            ("0020|0032", f"0\\0\\{k * 2.0}"),
            ("0008|0060", "CT"),
        ):
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"s{start + k}.dcm"))
        writer.Execute(sl)


def test_dicom_folder_with_two_series_is_an_error(tmp_path):
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.1.1", 0)
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.1.2", 10)
    with pytest.raises(DataError, match="2 DICOM series in one folder"):
        read_image(tmp_path)
    image, _ = read_image(tmp_path, series_uid="1.2.826.0.1.3680043.2.1125.1.2")
    assert image.shape == (3, 8, 8)


def test_folder_without_dicom_and_non_image_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not a scan")
    with pytest.raises(DataError, match="no DICOM series found"):
        read_image(tmp_path)
    with pytest.raises(DataError, match="notes.txt: cannot read image"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="missing.nii.gz: file not found"):
        read_image(tmp_path / "missing.nii.gz")


def test_singleton_time_axis_is_dropped_and_vector_pixels_rejected(tmp_path):
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(np.ones((3, 4, 5), np.int16))])
    sitk.WriteImage(four_d, str(tmp_path / "t.nii.gz"))
    image, _ = read_image(tmp_path / "t.nii.gz")
    assert image.shape == (3, 4, 5)
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(DataError, match="3-component pixels"):
        read_image(tmp_path / "rgb.nii.gz")


def test_grid_relation():
    geom = Geometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    assert grid_relation((4, 6, 5), geom, (4, 6, 5), geom) == "same"
    # the same voxel centres with the y axis stored the other way round
    flipped = Geometry(
        spacing=(2.0, 1.0, 1.0), origin=(0.0, 5.0, 0.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1)
    )
    assert grid_relation((4, 6, 5), geom, (4, 6, 5), flipped) == "reoriented"
    shifted = Geometry(spacing=(2.0, 1.0, 1.0), origin=(0.5, 0.0, 0.0))
    assert grid_relation((4, 6, 5), geom, (4, 6, 5), shifted) is None
    assert grid_relation((4, 6, 5), geom, (4, 6, 6), geom) is None


def test_reading_dicom_folders_keeps_the_process_locale(tmp_path, totalseg_dir):
    import locale

    before = locale.setlocale(locale.LC_ALL)
    enc = locale.getpreferredencoding(False)
    read_image(totalseg_dir / "example_ct_dicom")
    with pytest.raises(DataError):
        read_image(tmp_path)  # an empty folder goes through the DICOM path too
    assert locale.setlocale(locale.LC_ALL) == before
    assert locale.getpreferredencoding(False) == enc
