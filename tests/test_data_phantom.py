"""The CT phantom: deterministic, plausible anatomy and HU, per-case variation, labelled synthetic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from organseg.data.classes import BTCV_TO_SYNAPSE
from organseg.data.phantom import make_phantom_case, phantom_geometry, write_phantom_set
from organseg.imageio.volumes import read_image


@pytest.fixture(scope="module")
def case():
    return make_phantom_case(7, size=96)


def test_deterministic_and_varied():
    a = make_phantom_case(3, size=48, num_slices=12)
    b = make_phantom_case(3, size=48, num_slices=12)
    c = make_phantom_case(4, size=48, num_slices=12)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[1], c[1])
    assert a[0].dtype == np.int16 and a[1].dtype == np.uint8 and a[0].shape == (12, 48, 48)


def test_realistic_spacing(case):
    image, label, spacing = case
    dz, dy, dx = spacing
    assert dy == dx and 360 <= dx * 96 <= 440  # ~400 mm field of view
    assert 2.5 <= dz <= 5.0 and 230 <= dz * image.shape[0] <= 280
    # fixing the slice count changes the z spacing only (the scanned extent stays the same)
    free, fixed = make_phantom_case(1, size=40)[2], make_phantom_case(1, size=40, num_slices=8)[2]
    assert fixed[1:] == free[1:] and 230 <= fixed[0] * 8 <= 280


def test_all_eight_synapse_organs_with_plausible_hu(case):
    image, label, _ = case
    present = set(np.unique(label).tolist())
    assert set(BTCV_TO_SYNAPSE) <= present  # the eight Synapse organs
    med = {k: float(np.median(image[label == k])) for k in BTCV_TO_SYNAPSE}
    assert 60 < med[6] < 150  # liver
    assert 60 < med[1] < 160  # spleen
    assert med[8] > 120  # aorta, contrast enhanced
    assert -30 < med[4] < 60  # gallbladder: fluid
    assert 50 < med[11] < 140  # pancreas
    body = image > -500
    assert image[~body].mean() < -900  # air around the body
    fat = (image > -150) & (image < -50)
    assert fat.sum() > 0.05 * body.sum()  # fat layers exist
    assert (image > 500).any()  # bone


def test_anatomical_positions_and_sizes(case):
    image, label, _ = case
    _, _, w = image.shape

    def centroid(k):
        return np.argwhere(label == k).mean(axis=0)

    # columns run patient right -> left, rows anterior -> posterior, slices inferior -> superior
    assert centroid(6)[2] < w / 2 < centroid(1)[2]  # liver right, spleen left
    assert centroid(2)[2] < w / 2 < centroid(3)[2]  # right kidney right, left kidney left
    assert centroid(3)[0] < centroid(6)[0]  # kidneys below the liver's centre
    assert centroid(8)[1] > centroid(7)[1]  # aorta posterior to the stomach
    volumes = {k: int((label == k).sum()) for k in BTCV_TO_SYNAPSE}
    assert max(volumes, key=volumes.get) == 6  # liver is the largest organ
    assert volumes[4] < volumes[2] and volumes[11] < volumes[6]


def test_write_phantom_set_layout_and_labels(tmp_path):
    paths = write_phantom_set(tmp_path, cases=2, size=40, seed=5, num_slices=6, progress=False)
    assert [p.split("/")[-1] for p in paths] == ["img0001.nii.gz", "img0002.nii.gz"]
    assert "SYNTHETIC DATA" in (tmp_path / "SYNTHETIC.txt").read_text()
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["synthetic"] is True and [c["seed"] for c in meta["cases"]] == [5001, 5002]
    image, geom = read_image(tmp_path / "img" / "img0002.nii.gz")
    label, geom_l = read_image(tmp_path / "label" / "label0002.nii.gz")
    expected = make_phantom_case(5002, 40, 6)
    assert np.array_equal(image, expected[0]) and np.array_equal(label, expected[1])
    assert geom == geom_l  # NIfTI stores float32: compare with the generator's float64 geometry loosely
    assert geom.close_to(phantom_geometry(image.shape, expected[2]), tol_mm=1e-4)
    assert "SYNTHETIC" in sitk.ReadImage(str(tmp_path / "img" / "img0001.nii.gz")).GetMetaData("descrip")


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 32"):
        make_phantom_case(0, size=16)
    with pytest.raises(ValueError, match="at least 4 slices"):
        make_phantom_case(0, size=32, num_slices=2)


@pytest.mark.parametrize(
    ("args", "digest"),
    [
        ((7, 48, 8, 5.0), "c3571db75f7139454a7b5a7c01d32aa02c664190c63b8468cc0fca8b8b162d63"),
        ((42, 32, 4, 0.0), "f997f565b649cd8302a577c2f108e05ebbbd38fc1c8f7192d4fb2a86c9d9fb8c"),
    ],
)
def test_phantom_output_is_pinned(args, digest):
    """A seed keeps giving the same phantom (demo and golden runs are built on it): the organ table must keep
    its rows and its draw order. SHA-256 of image + label + shapes/dtypes/spacing, recorded on numpy 2.4 /
    scipy 1.17 / torch 2.13 before the generator became a table (issue 11)."""
    import hashlib

    seed, size, slices, noise = args
    image, label, spacing = make_phantom_case(seed, size, slices, noise=noise)
    meta = repr((image.shape, image.dtype.str, label.dtype.str, spacing)).encode()
    assert hashlib.sha256(image.tobytes() + label.tobytes() + meta).hexdigest() == digest
