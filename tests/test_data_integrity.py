"""Data integrity: DICOM series checked before reading, datasets complete only when their writer says so,
values inside the documented ranges. Each test is a fault that once passed silently (wrong result, exit 0)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from organseg.errors import DataError
from organseg.imageio.volumes import read_image

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
    with pytest.raises(
        DataError,
        match=r"slice gap between s01.dcm \(5.5 mm\) and s03.dcm \(10.5 mm\): 5 mm "
        r"where the series spacing is 2.5 mm; 1 slice\(s\) missing",
    ):
        read_image(folder)
    assert "WARNING" not in capfd.readouterr().err  # ITK's multi-line warning no longer reaches the terminal


def test_synthetic_series_with_a_duplicate_position(tmp_path):
    folder = _series(tmp_path / "s", positions=[0.0, 2.0, 4.0, 4.0, 6.0])
    with pytest.raises(DataError, match=r"s02.dcm and s03.dcm are at the same slice position \(4 mm"):
        read_image(folder)


def test_synthetic_series_with_uneven_spacing(tmp_path):
    folder = _series(tmp_path / "s", positions=[0.0, 2.0, 4.0, 7.0, 9.0])
    with pytest.raises(
        DataError,
        match=r"s02.dcm \(4 mm\) and s03.dcm \(7 mm\): 3 mm where the series "
        r"spacing is 2 mm$",
    ):
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
    with pytest.raises(
        DataError,
        match=r"2 DICOM series in one folder \(.*'' \(empty SeriesInstanceUID\)"
        r"[^;]* \(20 files\)",
    ):
        read_image(folder)
    image, _ = read_image(folder, series_uid="")
    assert image.shape == (20, 512, 512)


# ------------------------------------------------------------------------------------- complete datasets
def _phantom(raw, cases: int = 3, **kw):
    from organseg.data.phantom import write_phantom_set

    return write_phantom_set(raw, cases, size=32, num_slices=4, progress=False, **kw)


def _prepare(raw, out, **kw):
    from organseg.data.prepare import prepare_synapse

    # One worker: prepare runs in this process, where the tests' stand-ins for a kill or a full disk apply.
    split = {"train_cases": [1, 2], "test_cases": [3], "workers": 1}
    return prepare_synapse(raw, out, progress=False, **{**split, **kw})


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so no handler tidies up)."""


def _kill_after(monkeypatch, module, name: str, calls: int) -> None:
    real = getattr(module, name)
    count = {"n": 0}

    def dying(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)


def test_prepare_killed_half_way_is_refused_until_rerun(tmp_path, monkeypatch):
    import organseg.data.prepare as prep
    from organseg.data.detect import open_dataset

    _phantom(tmp_path / "raw")
    with monkeypatch.context() as m:
        _kill_after(m, prep, "atomic_write_npz", 5)  # case 1 written (4 slices), killed inside case 2
        with pytest.raises(_Killed):
            _prepare(tmp_path / "raw", tmp_path / "syn")
    assert len(list((tmp_path / "syn" / "train_npz").glob("*.npz"))) == 5
    with pytest.raises(
        DataError,
        match=r"syn: incomplete dataset: `organseg prepare synapse` started "
        r"writing it .* and did not finish; re-run `organseg prepare synapse --raw .*raw "
        r"--out .*syn --train-cases case0001 case0002 --test-cases case0003` to complete it",
    ):
        open_dataset(tmp_path / "syn")
    summary = _prepare(tmp_path / "raw", tmp_path / "syn")  # the same command finishes it
    assert summary["skipped"] == ["case0001"]  # the finished case was kept
    ds = open_dataset(tmp_path / "syn")
    assert ds.case_ids("train") == ["case0001", "case0002"] and len(ds.train_slices()) == 8
    status = json.loads((tmp_path / "syn" / "organseg_status.json").read_text())
    assert status["state"] == "complete" and status["counts"] == {
        "train_cases": 2,
        "test_cases": 1,
        "train_slices": 8,
    }
    assert "train_npz/case0002_slice003.npz" in status["files"]
    (tmp_path / "syn" / "train_npz" / "case0002_slice003.npz").unlink()
    with pytest.raises(
        DataError,
        match=r"1 file\(s\) written by `organseg prepare synapse` are missing "
        r"\(train_npz/case0002_slice003.npz\)",
    ):
        open_dataset(tmp_path / "syn")


def test_prepare_output_of_an_older_organseg_without_sidecar_is_refused(tmp_path):
    from organseg.data.detect import open_dataset

    _phantom(tmp_path / "raw")
    _prepare(tmp_path / "raw", tmp_path / "syn")
    # as an older prepare (no completion record), killed before the end
    for name in ("organseg_status.json", "organseg_synapse.json"):
        (tmp_path / "syn" / name).unlink()
    shutil.rmtree(tmp_path / "syn" / "lists_Synapse")
    with pytest.raises(DataError, match=r"incomplete dataset: `organseg prepare synapse` did not finish"):
        open_dataset(tmp_path / "syn")


def test_phantom_killed_half_way_is_refused_by_prepare(tmp_path, monkeypatch):
    import organseg.data.phantom as ph

    with monkeypatch.context() as m:
        _kill_after(m, ph, "write_image", 3)  # case 1 whole, case 2 image only
        with pytest.raises(_Killed):
            _phantom(tmp_path / "raw")
    with pytest.raises(
        DataError,
        match=r"raw: incomplete dataset: `organseg phantom` started writing it .* "
        r"re-run `organseg phantom --out .*raw --cases 3 --size 32 --seed 0 --slices 4 "
        r"--overwrite` to complete it",
    ):
        _prepare(tmp_path / "raw", tmp_path / "syn")
    assert not (tmp_path / "syn").exists()  # refused before anything was written
    _phantom(tmp_path / "raw", overwrite=True)
    assert _prepare(tmp_path / "raw", tmp_path / "syn")["converted"] == ["case0001", "case0002", "case0003"]


def test_phantom_refuses_a_non_empty_folder_and_overwrite_deletes_only_its_own(tmp_path):
    from organseg.imageio.volumes import write_image

    raw = tmp_path / "raw"
    _phantom(raw)
    with pytest.raises(
        DataError,
        match=r"raw: folder is not empty \(.*\); choose a new folder, or pass "
        r"--overwrite",
    ):
        _phantom(raw, cases=1)
    _phantom(raw, cases=1, overwrite=True)
    assert sorted(p.name for p in (raw / "img").iterdir()) == ["img0001.nii.gz"]  # no old case mixed in
    (raw / "img" / "notes.txt").write_text("mine")
    with pytest.raises(
        DataError,
        match=r"img/notes.txt: not written by organseg; --overwrite deletes only "
        r"`organseg phantom` output, so nothing was deleted",
    ):
        _phantom(raw, cases=1, overwrite=True)
    assert (raw / "img" / "img0001.nii.gz").is_file() and (raw / "phantom.json").is_file()
    # A real BTCV folder of the same layout (images without the phantom's mark) is never deleted.
    btcv = tmp_path / "btcv"
    write_image(np.zeros((4, 8, 8), np.int16), None, btcv / "img" / "img0001.nii.gz")
    write_image(np.zeros((4, 8, 8), np.uint8), None, btcv / "label" / "label0001.nii.gz")
    with pytest.raises(DataError, match=r"img0001.nii.gz: not written by organseg"):
        _phantom(btcv, cases=1, overwrite=True)
    assert (btcv / "img" / "img0001.nii.gz").is_file() and not (btcv / "organseg_status.json").exists()


def test_phantom_impossible_sizes_are_refused_before_writing(tmp_path, monkeypatch, capsys):
    import organseg.data.phantom as ph
    from organseg.cli.main import main
    from organseg.errors import ConfigError

    with pytest.raises(SystemExit) as exc:  # argparse refuses it, exit 2
        main(["phantom", "--out", str(tmp_path / "big"), "--cases", "1", "--size", "20000"])
    assert exc.value.code == 2
    assert "--size: expected an integer in [32, 2048]" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"--size: expected an integer in \[32, 2048\].*got 20000"):
        ph.write_phantom_set(tmp_path / "big", 1, 20000, progress=False)  # the API checks as the CLI
    monkeypatch.setattr(ph, "_available_memory", lambda: 2**30)
    with pytest.raises(
        ConfigError,
        match=r"--size 1024 with 112 slices needs about 5.2 GiB of memory per "
        r"case, but 1.0 GiB is available",
    ):
        ph.write_phantom_set(tmp_path / "big", 1, 1024, progress=False)
    assert not (tmp_path / "big").exists()


def test_prepare_out_must_be_new_empty_or_the_same_raw(tmp_path):
    raw, other, out = tmp_path / "raw", tmp_path / "raw2", tmp_path / "syn"
    _phantom(raw)
    _phantom(other, seed=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(
        DataError,
        match=r"foreign: folder is not empty \(thesis.tex\) and is not an earlier "
        r"`organseg prepare synapse` output",
    ):
        _prepare(raw, foreign)
    with pytest.raises(
        DataError,
        match=r"foreign: not an earlier `organseg prepare synapse` output; "
        r"--overwrite deletes only",
    ):
        _prepare(raw, foreign, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    _prepare(raw, out)
    assert _prepare(raw, out)["converted"] == []  # the same raw folder: continued, nothing to do
    with pytest.raises(
        DataError,
        match=r"syn: holds an earlier `organseg prepare synapse` of .*raw, not of "
        r".*raw2; choose a new folder, or pass --overwrite",
    ):
        _prepare(other, out)
    (out / "train_npz" / "case0009_slice000.npz").write_bytes(b"stale")
    summary = _prepare(other, out, overwrite=True)
    assert summary["converted"] == ["case0001", "case0002", "case0003"]
    assert not (out / "train_npz" / "case0009_slice000.npz").exists()
    assert json.loads((out / "organseg_synapse.json").read_text())["source"] == str(other.resolve())


def test_prepare_checks_a_dicom_label_series(tmp_path):
    from organseg.imageio.volumes import Geometry, write_image

    raw = tmp_path / "raw"
    geom = Geometry(spacing=(2.5, 0.5, 0.5), origin=(1.0, 2.0, 3.0))
    write_image(np.zeros((5, 8, 8), np.int16), geom, raw / "img" / "img0001.nii.gz")
    _series(raw / "label" / "label0001", skip=(3,))  # label map as DICOM, one slice lost
    with pytest.raises(DataError, match=r"label0001: slice gap between s02.dcm \(8 mm\) and s04.dcm "):
        _prepare(raw, tmp_path / "syn", train_cases=None, test_cases=None)
    assert not (tmp_path / "syn").exists()


# ------------------------------------------------------------------------------------- documented ranges
def _synapse(root, image_scale: float = 1.0, test_scale: float = 1.0):
    from organseg.data.io import atomic_write_h5, atomic_write_npz

    rng = np.random.default_rng(0)
    for k in range(2):
        atomic_write_npz(
            root / "train_npz" / f"case0001_slice{k:03d}.npz",
            image=rng.random((8, 8), dtype=np.float32) * image_scale,
            label=np.zeros((8, 8), np.uint8),
        )
    volume = rng.random((2, 8, 8), dtype=np.float32)
    volume[0, 0, 0] = 1.0
    atomic_write_h5(
        root / "test_vol_h5" / "case0002.npy.h5",
        image=volume * np.float32(test_scale),
        label=np.zeros((2, 8, 8), np.uint8),
    )
    return root


def test_synapse_images_outside_0_1_are_refused_with_the_file_and_range(tmp_path):
    from organseg.data.detect import open_dataset

    ds = open_dataset(_synapse(tmp_path / "hu", image_scale=1000.0, test_scale=1.0005))
    with pytest.raises(
        DataError,
        match=r"case0001_slice000.npz: image values span \[[0-9.]+, 9[0-9.]+\], "
        r"outside the \[0, 1\] this format stores",
    ):
        ds.train_slices()[0]
    assert ds.volume("case0002").image.max() > 1.0  # a rounding overshoot within the tolerance is accepted
    ds = open_dataset(_synapse(tmp_path / "hu_test", test_scale=-1024.0))
    assert ds.train_slices()[1][0].max() <= 1.0
    with pytest.raises(DataError, match=r"case0002.npy.h5: image values span \[-1[0-9.]+, -?[0-9.e-]+\]"):
        ds.volume("case0002")


def test_acdc_images_outside_0_1_are_refused(tmp_path):
    from organseg.data.acdc import ACDCDataset
    from organseg.data.io import atomic_write_h5

    atomic_write_h5(
        tmp_path / "slices" / "patient001_frame01_slice_0.h5",
        image=np.full((8, 8), 255.0, np.float32),  # 8-bit grey, never scaled
        label=np.zeros((8, 8), np.uint8),
    )
    ds = ACDCDataset(tmp_path)
    with pytest.raises(DataError, match=r"patient001_frame01_slice_0.h5: image values span \[255, 255\]"):
        ds.train_slices()[0]


def test_synapse_sidecar_spacing_and_class_names_are_checked(tmp_path):
    from organseg.data.synapse import SIDECAR, SynapseDataset

    root = _synapse(tmp_path / "syn")
    sidecar = {"cases": {"case0002": {"spacing": [-2.5, 0.7, 0.7]}}}
    (root / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(DataError, match=r"case case0002 spacing \[-2.5, 0.7, 0.7\] must be three positive"):
        SynapseDataset(root)
    (root / SIDECAR).write_text(json.dumps({"class_names": ["background", "liver"]}))
    with pytest.raises(DataError, match=r"class_names \['background', 'liver'\] differ from the 9 Synapse"):
        SynapseDataset(root)


@pytest.mark.parametrize("pixdim", [0.0, float("nan")])
def test_nifti_zero_or_nan_voxel_size_is_refused(tmp_path, pixdim):
    import struct

    from organseg.imageio.volumes import read_image_info, write_image

    write_image(np.zeros((3, 4, 5), np.int16), None, tmp_path / "ct.nii")
    data = bytearray((tmp_path / "ct.nii").read_bytes())
    data[80:84] = struct.pack("<f", pixdim)  # pixdim[1]: ITK would read it as 1 mm
    (tmp_path / "ct.nii").write_bytes(bytes(data))
    for read in (read_image, read_image_info):
        with pytest.raises(
            DataError,
            match=r"ct.nii: voxel spacing \(pixdim\) \((0.0|nan), 1.0, 1.0\) mm is "
            r"zero or not a number",
        ):
            read(tmp_path / "ct.nii")


def test_nifti_negative_pixdim_header_and_full_read_agree(tmp_path):
    import struct

    from organseg.imageio.volumes import read_image_info, write_image

    write_image(np.zeros((3, 4, 5), np.int16), None, tmp_path / "ct.nii")
    data = bytearray((tmp_path / "ct.nii").read_bytes())
    data[80:84] = struct.pack("<f", -2.0)
    (tmp_path / "ct.nii").write_bytes(bytes(data))
    assert read_image_info(tmp_path / "ct.nii")[1].spacing == read_image(tmp_path / "ct.nii")[1].spacing


def test_nnunet_file_ending_that_matches_no_file_names_the_files(tmp_path):
    from organseg.data.nnunet import NnUNetDataset
    from organseg.imageio.volumes import write_image

    for case in ("a", "b"):
        write_image(np.zeros((3, 4, 5), np.int16), None, tmp_path / "imagesTr" / f"{case}_0000.nii")
        write_image(np.zeros((3, 4, 5), np.uint8), None, tmp_path / "labelsTr" / f"{case}.nii")
    (tmp_path / "imagesTr" / "README.txt").write_text("notes are ignored, as nnU-Net does")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 2}
    meta["file_ending"] = ".nii.gz"
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(
        DataError,
        match=r"imagesTr: 2 file\(s\) do not end with '.nii.gz', the file_ending "
        r"of .*dataset.json \(a_0000.nii, b_0000.nii\); fix file_ending or the file names",
    ):
        NnUNetDataset(tmp_path, progress=False)
    meta["file_ending"] = ".nii"
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    ds = NnUNetDataset(tmp_path, progress=False)
    assert sorted(ds.case_ids("train") + ds.case_ids("val")) == ["a", "b"]


def test_phantom_negative_seed_and_full_disk_are_refused_before_writing(tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    import organseg.data.completion as completion
    from organseg.cli.main import main

    out = tmp_path / "ph"
    with pytest.raises(SystemExit) as exc:  # argparse refuses it, exit 2
        main(["phantom", "--out", str(out), "--cases", "1", "--size", "32", "--seed", "-1"])
    assert exc.value.code == 2
    assert "--seed: expected an integer in [0, 9223372036854775807], got '-1'" in capsys.readouterr().err
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(completion.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    assert main(["phantom", "--out", str(out), "--cases", "3", "--size", "128", "--slices", "40"]) == 2
    assert "ph: the phantom set needs about 2.1 MiB of disk space, but" in capsys.readouterr().err
    assert not out.exists()


def test_prepare_bad_split_seed_and_full_disk_are_refused_before_writing(tmp_path, monkeypatch):
    from collections import namedtuple

    import organseg.data.completion as completion
    from organseg.errors import ConfigError

    _phantom(tmp_path / "raw")
    with pytest.raises(ConfigError, match=r"--split-seed must be an integer 0 or more, got -1"):
        _prepare(tmp_path / "raw", tmp_path / "syn", train_cases=None, test_cases=None, split_seed=-1)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(completion.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(
        DataError,
        match=r"syn: preparing 3 case\(s\) needs about 60.0 KiB of disk space, "
        r"but .* has 1000 bytes free",
    ):
        _prepare(tmp_path / "raw", tmp_path / "syn")
    assert not (tmp_path / "syn").exists()


def test_predict_on_a_series_with_a_gap_is_one_line_and_writes_nothing(totalseg_dir, tmp_path, capfd):
    from helpers import make_run
    from organseg.cli.main import main
    from organseg.data.classes import SYNAPSE_CLASSES
    from organseg.data.preprocess import ct_window_spec

    ckpt = make_run(tmp_path / "run", list(SYNAPSE_CLASSES), ct_window_spec()) / "checkpoints" / "best.pt"
    folder, files = _real_copy(totalseg_dir, tmp_path)
    files[7].unlink()
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(ckpt), str(folder), "--out", str(out), "--device", "cpu"]) == 2
    err = capfd.readouterr().err  # Python's and ITK's (C++) output alike
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "slice gap between" in lines[0] and "1 slice(s) missing" in lines[0]
    assert not out.exists() and not (tmp_path / "seg.json").exists()


def test_prepare_refuses_a_ct_that_is_not_in_hounsfield_units(tmp_path):
    from organseg.imageio.volumes import write_image

    raw = tmp_path / "raw"
    scaled = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)  # already in [0, 1]
    write_image(scaled, None, raw / "img" / "img0001.nii.gz")
    write_image(np.zeros((4, 8, 8), np.uint8), None, raw / "label" / "label0001.nii.gz")
    with pytest.raises(
        DataError,
        match=r"img0001.nii.gz: image values span \[0.0[0-9]*, 0.9[0-9]*\]; "
        r"prepare expects CT in Hounsfield units",
    ):
        _prepare(raw, tmp_path / "syn", train_cases=[1], test_cases=None)
    assert not (tmp_path / "syn").exists()


def test_synapse_sidecar_preprocessing_is_validated(tmp_path):
    from organseg.data.synapse import SIDECAR, SynapseDataset

    root = _synapse(tmp_path / "syn")
    (root / SIDECAR).write_text(json.dumps({"preprocessing": {"kind": "ct_window", "window": [275, -125]}}))
    with pytest.raises(
        DataError,
        match=r"organseg_synapse.json: preprocessing 'ct_window': 'window' must be "
        r"finite with low < high",
    ):
        SynapseDataset(root)


def test_prepare_continues_an_older_organsegs_interrupted_prepare_of_the_same_raw(tmp_path):
    _phantom(tmp_path / "raw")
    _phantom(tmp_path / "raw2", seed=1)
    _prepare(tmp_path / "raw", tmp_path / "syn")
    for name in ("organseg_status.json", "organseg_synapse.json"):  # as an older prepare, killed at the end
        (tmp_path / "syn" / name).unlink()
    with pytest.raises(DataError, match=r"holds an earlier `organseg prepare synapse` of another raw folder"):
        _prepare(tmp_path / "raw2", tmp_path / "syn")
    assert _prepare(tmp_path / "raw", tmp_path / "syn")["converted"] == []  # its finished cases are kept
