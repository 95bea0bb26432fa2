"""Data integrity: DICOM series checked before reading, datasets complete only when their writer says so,
values inside the documented ranges. Each test is a fault that once passed silently (wrong result, exit 0)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from organseg.data.io import read_image
from organseg.errors import DataError

UID = "1.2.826.0.1.3680043.2.1125.77"


def _series(folder, n: int = 5, dz: float = 2.5, *, uid: str = UID, positions=None, skip=()):
    """A tiny synthetic CT series written with SimpleITK's GDCM writer (slice k holds the value 10*k)."""
    folder.mkdir(parents=True, exist_ok=True)
    zs = positions if positions is not None else [3.0 + dz * k for k in range(n)]
    for k, z in enumerate(zs):
        if k in skip:
            continue
        sl = sitk.GetImageFromArray(np.full((1, 8, 8), 10 * k, np.int16))
        sl.SetSpacing((0.5, 0.5, 1.0))
        sl.SetOrigin((1.0, 2.0, float(z)))
        for tag, value in (("0020|000e", uid), ("0020|0013", str(k + 1)), ("0008|0060", "CT")):
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"s{k:02d}.dcm"))
        writer.Execute(sl)
    return folder


# ------------------------------------------------------------------------------------------ synthetic DICOM
def test_intact_synthetic_series_reads_in_slice_order(tmp_path):
    image, geom = read_image(_series(tmp_path / "s"))
    assert image.shape == (5, 8, 8)
    assert geom.spacing == pytest.approx((2.5, 0.5, 0.5))
    assert image[:, 0, 0].tolist() == [0, 10, 20, 30, 40]


def test_synthetic_series_with_a_missing_slice_names_the_gap(tmp_path, capfd):
    folder = _series(tmp_path / "s", skip=(2,))
    with pytest.raises(DataError, match=r"slice gap between s01.dcm \(5.5 mm\) and s03.dcm \(10.5 mm\): 5 mm "
                       r"where the series spacing is 2.5 mm; 1 slice\(s\) missing"):
        read_image(folder)
    assert "WARNING" not in capfd.readouterr().err  # ITK's multi-line warning no longer reaches the terminal


def test_synthetic_series_with_a_duplicate_position(tmp_path):
    folder = _series(tmp_path / "s", positions=[0.0, 2.0, 4.0, 4.0, 6.0])
    with pytest.raises(DataError, match=r"s02.dcm and s03.dcm are at the same slice position \(4 mm"):
        read_image(folder)


def test_synthetic_series_with_uneven_spacing(tmp_path):
    folder = _series(tmp_path / "s", positions=[0.0, 2.0, 4.0, 7.0, 9.0])
    with pytest.raises(DataError, match=r"s02.dcm \(4 mm\) and s03.dcm \(7 mm\): 3 mm where the series "
                       r"spacing is 2 mm$"):
        read_image(folder)


def test_synthetic_series_with_a_stray_or_truncated_file(tmp_path):
    folder = _series(tmp_path / "s")
    (folder / "notes.txt").write_text("scanner protocol")
    with pytest.raises(DataError, match=r"notes.txt: not a DICOM file, in a DICOM series folder"):
        read_image(folder)
    (folder / "notes.txt").unlink()
    (folder / "DICOMDIR").write_bytes(b"\0" * 200)  # an export's index file is tolerated
    assert read_image(folder)[0].shape == (5, 8, 8)
    data = (folder / "s04.dcm").read_bytes()
    (folder / "s04.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"s04.dcm: truncated or corrupt DICOM file"):
        read_image(folder)


def test_synthetic_series_with_another_orientation_or_matrix(tmp_path):
    folder = _series(tmp_path / "s")
    odd = sitk.GetImageFromArray(np.zeros((1, 8, 8), np.int16))
    odd.SetSpacing((0.5, 0.5, 1.0))
    odd.SetOrigin((1.0, 2.0, 3.0 + 2.5 * 5))
    odd.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    odd.SetMetaData("0020|000e", UID)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "s05.dcm"))
    writer.Execute(odd)
    with pytest.raises(DataError, match=r"s05.dcm: ImageOrientationPatient .* differs from"):
        read_image(folder)
    big = sitk.GetImageFromArray(np.zeros((1, 10, 8), np.int16))
    big.SetSpacing((0.5, 0.5, 1.0))
    big.SetOrigin((1.0, 2.0, 3.0 + 2.5 * 5))
    big.SetMetaData("0020|000e", UID)
    writer.SetFileName(str(folder / "s05.dcm"))
    writer.Execute(big)
    with pytest.raises(DataError, match=r"s05.dcm: 10x8 pixels, but s00.dcm has 8x8"):
        read_image(folder)


# ------------------------------------------------------------------------------------------ the real series
def _real_copy(totalseg_dir, tmp_path):
    folder = tmp_path / "dicom"
    shutil.copytree(totalseg_dir / "example_ct_dicom", folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    return folder, sorted(folder.iterdir())


def test_real_series_intact_copy_reads_as_20_slices_at_2mm(totalseg_dir, tmp_path):
    folder, _ = _real_copy(totalseg_dir, tmp_path)
    image, geom = read_image(folder)
    assert image.shape == (20, 512, 512)
    assert geom.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))


@pytest.mark.parametrize("fault", ["delete", "truncate", "non_dicom_slice", "extra_file", "duplicate"])
def test_real_series_faults_are_one_line_errors(totalseg_dir, tmp_path, capfd, fault):
    folder, files = _real_copy(totalseg_dir, tmp_path)
    victim = files[10]
    if fault == "delete":
        victim.unlink()
        expected = r"slice gap between .* 4 mm where the series spacing is 2 mm; 1 slice\(s\) missing"
    elif fault == "truncate":
        victim.write_bytes(victim.read_bytes()[:-10])
        expected = rf"{victim.name}: truncated or corrupt DICOM file"
    elif fault == "non_dicom_slice":
        victim.write_bytes(np.random.default_rng(0).bytes(2000))
        expected = rf"{victim.name}: not a DICOM file"
    elif fault == "extra_file":
        (folder / "readme.txt").write_text("exported by the scanner")
        expected = r"readme.txt: not a DICOM file"
    else:
        shutil.copy(victim, folder / "copy_of_slice")
        expected = r"are at the same slice position"
    with pytest.raises(DataError, match=expected) as err:
        read_image(folder)
    assert "\n" not in str(err.value)
    assert "WARNING" not in capfd.readouterr().err


def test_empty_series_uid_is_listed_visibly(totalseg_dir, tmp_path):
    folder, _ = _real_copy(totalseg_dir, tmp_path)  # this export has an empty SeriesInstanceUID
    _series(folder, n=3, dz=2.0, uid=UID)
    with pytest.raises(DataError, match=r"2 DICOM series in one folder \(.*'' \(empty SeriesInstanceUID\) "
                       r"\(20 files\)"):
        read_image(folder)
    image, _ = read_image(folder, series_uid="")
    assert image.shape == (20, 512, 512)
