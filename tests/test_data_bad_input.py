"""Every bad input of issue #3 gets one clear DataError naming the file and the problem, exit code 2 from the
CLI, and no partial output. One test per case."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from badinput.inputs import truncate
from helpers import tiny_case, write_tiny_raw
from organseg.cli.main import main
from organseg.data import open_dataset
from organseg.data.io import atomic_write_h5, atomic_write_npz
from organseg.data.prepare import prepare_synapse
from organseg.errors import DataError
from organseg.imageio.volumes import Geometry, read_image, write_image


def _prepare_fails(raw: Path, out: Path, capsys, *extra: str) -> str:
    """Run the CLI on a bad raw folder: exit 2, one stderr line, and nothing written to ``out``."""
    code = main(["prepare", "synapse", "--raw", str(raw), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [ln for ln in err if ln.startswith("organseg prepare: error:")]
    assert len(errors) == 1, err
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    return errors[0]


def test_missing_label_of_a_pair(tmp_path, capsys):
    write_tiny_raw(tmp_path / "raw", [1, 2, 3])
    (tmp_path / "raw" / "label" / "label0003.nii.gz").unlink()
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "img0003.nii.gz: missing label" in msg


def test_missing_image_of_a_pair(tmp_path, capsys):
    write_tiny_raw(tmp_path / "raw", [1, 2, 3])
    (tmp_path / "raw" / "img" / "img0002.nii.gz").unlink()
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "label0002.nii.gz: missing image" in msg


def test_image_label_shape_mismatch(tmp_path, capsys):
    write_tiny_raw(tmp_path / "raw", [1, 2])
    _, label = tiny_case(2, (5, 24, 21))
    write_image(label, Geometry(spacing=(3.0, 0.8, 0.8)), tmp_path / "raw" / "label" / "label0002.nii.gz")
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "label0002.nii.gz: label shape (5, 24, 21) does not match image shape (5, 24, 20)" in msg


def test_image_label_geometry_mismatch(tmp_path, capsys):
    write_tiny_raw(tmp_path / "raw", [1, 2])
    _, label = tiny_case(1)
    write_image(
        label,
        Geometry(spacing=(3.0, 0.8, 0.8), origin=(10.0, 0.0, 0.0)),
        tmp_path / "raw" / "label" / "label0001.nii.gz",
    )
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "label0001.nii.gz: label geometry does not match img0001.nii.gz" in msg


def test_label_ids_outside_the_map(tmp_path, capsys, caplog):
    write_tiny_raw(tmp_path / "raw", [1, 2])
    image, label = tiny_case(2)
    label[0, :2, :3] = 14  # 6 voxels of an id BTCV does not have
    write_image(label, Geometry(spacing=(3.0, 0.8, 0.8)), tmp_path / "raw" / "label" / "label0002.nii.gz")
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "label0002.nii.gz: label ids outside the BTCV map 0..13 (id 14: 6 voxels)" in msg
    # Opt-in: map them to background with a warning that gives the counts, as documented.
    with caplog.at_level(logging.WARNING, logger="organseg.data"):
        prepare_synapse(
            tmp_path / "raw", tmp_path / "ok", train_cases=[1, 2], unknown_labels="background", progress=False
        )
    assert "id 14: 6 voxels" in caplog.text
    side = json.loads((tmp_path / "ok" / "organseg_synapse.json").read_text())
    assert side["cases"]["case0002"]["unknown_id_voxels"] == {"14": 6}


def test_nan_or_inf_voxels(tmp_path, capsys):
    write_tiny_raw(tmp_path / "raw", [1, 2, 3])
    image, _ = tiny_case(3)
    image = image.astype(np.float32)
    image[2, 5, 5] = np.nan
    image[3, 1, 1] = np.inf
    write_image(image, Geometry(spacing=(3.0, 0.8, 0.8)), tmp_path / "raw" / "img" / "img0003.nii.gz")
    # case 3 is last: the good cases 1 and 2 must not have been written either
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "img0003.nii.gz: image has 2 NaN/inf voxels" in msg


def test_non_3d_volume(tmp_path, capsys):
    import SimpleITK as sitk

    write_tiny_raw(tmp_path / "raw", [1, 2])
    image, label = tiny_case(2)
    sitk.WriteImage(sitk.GetImageFromArray(image[0]), str(tmp_path / "raw" / "img" / "img0002.nii.gz"))
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "img0002.nii.gz: 2-D image of size (20, 24); a 3-D volume is needed" in msg


def test_truncated_nii_gz(tmp_path, capsys):
    write_tiny_raw(tmp_path / "raw", [1, 2], shape=(6, 64, 64))
    truncate(tmp_path / "raw" / "img" / "img0002.nii.gz", 0.6)
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "img0002.nii.gz" in msg and "truncated" in msg
    with pytest.raises(DataError, match="img0002.nii.gz.*truncated"):
        read_image(tmp_path / "raw" / "img" / "img0002.nii.gz")


def test_truncated_h5(tmp_path):
    atomic_write_h5(
        tmp_path / "test_vol_h5" / "case0001.npy.h5",
        image=np.zeros((4, 32, 32), np.float32),
        label=np.zeros((4, 32, 32), np.uint8),
    )
    ds = open_dataset(tmp_path)
    truncate(tmp_path / "test_vol_h5" / "case0001.npy.h5")
    with pytest.raises(DataError, match=r"case0001\.npy\.h5: cannot read \.h5, file is truncated or corrupt"):
        ds.volume("case0001")


def test_truncated_npz(tmp_path):
    atomic_write_npz(
        tmp_path / "train_npz" / "case0005_slice000.npz",
        image=np.zeros((32, 32), np.float32),
        label=np.zeros((32, 32), np.uint8),
    )
    slices = open_dataset(tmp_path).train_slices()
    truncate(tmp_path / "train_npz" / "case0005_slice000.npz")
    with pytest.raises(DataError, match=r"case0005_slice000\.npz: cannot read \.npz, file is truncated"):
        slices[0]


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "raw: empty folder" in msg
    with pytest.raises(DataError, match="empty folder"):
        open_dataset(tmp_path / "raw")
    with pytest.raises(DataError, match="empty folder"):
        read_image(tmp_path / "raw")  # an empty DICOM folder


def test_duplicate_case_ids(tmp_path, capsys):
    write_tiny_raw(tmp_path / "raw", [1, 2])
    image, _ = tiny_case(1)
    write_image(image, Geometry(spacing=(3.0, 0.8, 0.8)), tmp_path / "raw" / "img" / "img001.nii.gz")
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys)
    assert "duplicate case id 1: img0001.nii.gz, img001.nii.gz" in msg


def test_dataset_json_missing_keys(tmp_path):
    image, label = tiny_case(1)
    write_image(image, None, tmp_path / "imagesTr" / "a_0000.nii.gz")
    write_image(label, None, tmp_path / "labelsTr" / "a.nii.gz")
    (tmp_path / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}})
    )
    with pytest.raises(DataError, match=r"dataset\.json: missing key\(s\) \['numTraining', 'file_ending'\]"):
        open_dataset(tmp_path)


def test_out_of_range_case_id_in_a_split(tmp_path, capsys):
    write_tiny_raw(tmp_path / "raw", [1, 2])
    msg = _prepare_fails(tmp_path / "raw", tmp_path / "out", capsys, "--test-cases", "2", "38")
    assert "test cases: case id(s) [38] not in the raw folder (it has [1, 2])" in msg
    # the same in the lists of a prepared folder: a listed case without its file
    prepare_synapse(tmp_path / "raw", tmp_path / "syn", test_cases=[2], progress=False)
    (tmp_path / "syn" / "lists_Synapse" / "test_vol.txt").write_text("case0002\ncase0099\n")
    with pytest.raises(
        DataError, match=r"test_vol\.txt: 1 listed test volumes have no file: .*case0099\.npy\.h5"
    ):
        open_dataset(tmp_path / "syn")
