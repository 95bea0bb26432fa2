"""Issue 22, inputs as they arrive and the model named in every output: DICOM series folders with several
series, DICOMDIR media exports, gantry-tilted series, NIfTI sform/qform kept on the label map (read back with
nibabel and SimpleITK), the DICOM-SEG's algorithm identification, and ``--format both`` of an empty
prediction. Every DICOM input is generated (tiny: 8 x 8 pixels, a few slices) by ``dicomgen``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import dicomgen as g
from helpers import one_line_error
from organseg import __version__
from organseg.checkpoint import atomic_torch_save, make_checkpoint
from organseg.cli.main import main
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.data.preprocess import ct_window_spec
from organseg.errors import DataError
from organseg.imageio.dicom import find_series, select_series
from organseg.imageio.volumes import read_image, read_nifti_transform
from organseg.models import create_model

pytest.importorskip("pydicom", reason="pydicom (organseg[dicom]) builds the test series")

TINY = {"img_size": 32, "embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 2}
STUDY = g.uid(100)


def _checkpoint(path: Path, *, empty: bool = False) -> Path:
    """A tiny Swin-Unet: a random head with spread logits (varied labels), or a zero head (every logit equal,
    so every voxel is background)."""
    torch.manual_seed(0)
    net = create_model("swin_unet", num_classes=9, **TINY).eval()
    with torch.no_grad():
        net.swin_unet.output.weight.zero_() if empty else net.swin_unet.output.weight.normal_(0, 2.0)
    ckpt = make_checkpoint(
        net,
        model_name="swin_unet",
        model_args={**TINY, "num_classes": 9},
        class_names=list(SYNAPSE_CLASSES),
        preprocessing=ct_window_spec(),
        config={"model": {"name": "swin_unet", "args": dict(TINY)}, "train": {"img_size": 32}},
    )
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {"net": _checkpoint(root / "last.pt"), "empty": _checkpoint(root / "empty.pt", empty=True)}


def _two_series_export(folder: Path) -> Path:
    g.write_dicomdir(
        folder,
        g.ct_slices(series_uid=g.uid(1), study_uid=STUDY, description="CT abdomen", number=2),
        g.ct_slices(series_uid=g.uid(2), study_uid=STUDY, description="CT lung", number=3, slices=3, seed=1),
    )
    return folder


# ---------------------------------------------------------------- several series, media exports, tilt


def test_several_series_in_one_folder_are_listed_and_picked_by_uid_or_description(tmp_path):
    folder = tmp_path / "mixed"
    g.write_series(folder, g.ct_slices(series_uid=g.uid(1), study_uid=STUDY, description="CT abdomen"), "A")
    g.write_series(
        folder, g.ct_slices(series_uid=g.uid(2), study_uid=STUDY, description="CT lung", slices=3), "B"
    )
    with pytest.raises(DataError) as e:
        read_image(folder)
    message = str(e.value)
    assert "2 DICOM series in one folder" in message and "\n" not in message
    for needle in (g.uid(1), "'CT abdomen'", "(4 files)", g.uid(2), "'CT lung'", "(3 files)", "--series"):
        assert needle in message, message
    assert read_image(folder, series_uid=g.uid(2))[0].shape == (3, 8, 8)
    assert read_image(folder, series_uid=" ct LUNG ")[0].shape == (3, 8, 8)  # description, case ignored
    with pytest.raises(DataError, match="no DICOM series 'CT head'.*'CT abdomen'"):
        read_image(folder, series_uid="CT head")
    # one description for two series: the UIDs tell them apart
    g.write_series(folder, g.ct_slices(series_uid=g.uid(3), study_uid=STUDY, description="CT lung"), "C")
    with pytest.raises(DataError, match=f"'CT lung' names 2 series .*{g.uid(2)}.*{g.uid(3)}.*pass the UID"):
        select_series(find_series(folder), "CT lung", folder)


def test_media_export_is_read_through_its_sub_folders(tmp_path):
    export = _two_series_export(tmp_path / "cd")
    assert (export / "DICOMDIR").is_file() and not any(p.suffix == ".dcm" for p in export.rglob("*"))
    series = find_series(export)
    assert [(s.uid, s.description, s.number, len(s.files)) for s in series] == [
        (g.uid(1), "CT abdomen", "2", 4),
        (g.uid(2), "CT lung", "3", 3),
    ]
    assert all(export in f.parents and f.parent != export for s in series for f in s.files)
    with pytest.raises(DataError, match=r"cd: 2 DICOM series in this media export"):
        read_image(export)
    image, geom = read_image(export, series_uid="CT lung")
    plain = tmp_path / "plain"
    g.write_series(plain, g.ct_slices(series_uid=g.uid(2), study_uid=STUDY, slices=3, seed=1))
    image2, geom2 = read_image(plain)
    np.testing.assert_array_equal(image, image2)
    assert geom == geom2
    # stray files a CD carries beside the images (a viewer, a README) are not slices and are left alone
    (export / "README.TXT").write_text("burned by a PACS")
    assert len(find_series(export)) == 2
    # an export with no image series below it
    empty = tmp_path / "empty_cd"
    empty.mkdir()
    (empty / "DICOMDIR").write_bytes((export / "DICOMDIR").read_bytes())
    with pytest.raises(DataError, match="empty_cd: a DICOMDIR media export with no DICOM image series"):
        read_image(empty)


def test_gantry_tilted_series_is_refused_in_one_line(tmp_path, ckpts, capsys):
    tilted = tmp_path / "tilted"
    g.write_series(tilted, g.ct_slices(series_uid=g.uid(5), study_uid=STUDY, tilt_deg=15.0))
    tilt = r"tilted: gantry-tilted series: .* at 15\.00 deg .*GantryDetectorTilt 15"
    with pytest.raises(DataError, match=tilt):
        read_image(tilted)
    out = tmp_path / "out" / "seg.nii.gz"
    argv = ["predict", str(ckpts["net"]), str(tilted), "--out", str(out)]
    one_line_error(capsys, argv, "tilted", "15.00 deg")
    assert not out.parent.exists()
    # an untilted series with positions written to a few decimals is read
    straight = tmp_path / "straight"
    g.write_series(straight, g.ct_slices(series_uid=g.uid(6), study_uid=STUDY, tilt_deg=0.0))
    assert read_image(straight)[0].shape == (4, 8, 8)


def test_predict_makes_each_series_of_an_export_a_case_or_the_one_picked(tmp_path, ckpts, capsys):
    export = _two_series_export(tmp_path / "cd")
    out = tmp_path / "out"
    assert main(["predict", str(ckpts["net"]), str(export), "--out", str(out), "--device", "cpu"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cd_s2.json", "cd_s2.nii.gz", "cd_s3.json", "cd_s3.nii.gz"]
    info = json.loads((out / "cd_s3.json").read_text())
    assert info["series"] == g.uid(2) and info["shape"] == [3, 8, 8]
    assert "2 done, 0 skipped" in capsys.readouterr().out
    # --series picks one (by description here) and --out may then name the label map
    one = tmp_path / "lung.nii.gz"
    argv = ["predict", str(ckpts["net"]), str(export), "--out", str(one), "--series", "CT lung"]
    assert main(argv) == 0
    assert read_image(one)[0].shape == (3, 8, 8)
    # several series cannot go into one label map
    capsys.readouterr()
    argv = ["predict", str(ckpts["net"]), str(export), "--out", str(tmp_path / "x.nii.gz")]
    one_line_error(capsys, argv, "media export of 2 series", "--series")


# ---------------------------------------------------------------- NIfTI placement kept on the label map


def _nifti_input(path: Path, kind: str) -> None:
    nib = pytest.importorskip("nibabel", reason="nibabel reads the headers back (pip install nibabel)")
    rng = np.random.default_rng(0)
    data = rng.uniform(-200, 300, (12, 10, 4)).astype(np.float32)  # (x, y, z): nibabel's order
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    img = nib.Nifti1Image(data, None)
    if kind == "aligned":  # sform "aligned" (2) with qform "scanner" (1), both the same rotation
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=2)
    elif kind == "sheared":  # a sheared sform (code 2) and the unsheared qform (code 1)
        img.set_qform(affine, code=1)
        sheared = affine.copy()
        sheared[0, 2] += 0.7
        img.set_sform(sheared, code=2)
    else:  # neither: both codes 0, only pixdim
        img.header.set_zooms((0.8, 0.9, 2.5))
        img.set_qform(None, code=0)
        img.set_sform(None, code=0)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


@pytest.mark.parametrize("kind", ["aligned", "sheared", "neither"])
def test_label_map_carries_the_inputs_sform_and_qform(tmp_path, ckpts, kind):
    nib = pytest.importorskip("nibabel", reason="nibabel reads the headers back (pip install nibabel)")
    scan = tmp_path / "scan.nii.gz"
    _nifti_input(scan, kind)
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(ckpts["net"]), str(scan), "--out", str(out), "--device", "cpu"]) == 0
    a, b = nib.load(str(scan)), nib.load(str(out))
    for coded in ("get_sform", "get_qform"):
        matrix_a, code_a = getattr(a, coded)(coded=True)
        matrix_b, code_b = getattr(b, coded)(coded=True)
        assert code_a == code_b, coded
        if code_a:
            np.testing.assert_allclose(matrix_b, matrix_a, atol=1e-5)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)  # nibabel's best affine, fallback included
    np.testing.assert_allclose(b.header.get_zooms(), a.header.get_zooms(), atol=1e-6)
    assert b.shape == a.shape and np.asarray(b.dataobj).dtype == np.uint8
    sa, sb = sitk.ReadImage(str(scan)), sitk.ReadImage(str(out))
    np.testing.assert_allclose(sb.GetOrigin(), sa.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(sb.GetSpacing(), sa.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(sb.GetDirection(), sa.GetDirection(), atol=1e-6)
    assert read_nifti_transform(out) == read_nifti_transform(scan)
    notes = json.loads((tmp_path / "seg.json").read_text())["notes"]
    assert any("sform is sheared" in n for n in notes) == (kind == "sheared")


# ---------------------------------------------------------------- DICOM-SEG: the model named, empty results


def test_dicom_seg_names_network_checkpoint_hash_and_version(tmp_path, ckpts):
    hd = pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
    series = tmp_path / "ct"
    g.write_series(series, g.ct_slices(series_uid=g.uid(7), study_uid=STUDY, slices=4))
    out = tmp_path / "seg.nii.gz"
    argv = ["predict", str(ckpts["net"]), str(series), "--out", str(out), "--format", "both"]
    assert main(argv) == 0
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.SeriesDescription == "organseg swin_unet segmentation"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    params = str(algorithm.AlgorithmParameters)
    digest = hashlib.sha256(ckpts["net"].read_bytes()).hexdigest()
    assert f"checkpoints=last.pt sha256:{digest}" in params
    assert "network=swin_unet" in params and f"organseg_version={__version__}" in params
    assert json.loads((tmp_path / "seg.json").read_text())["dicom_seg"]["written"] is True


def test_format_both_of_an_empty_prediction_writes_what_it_can(tmp_path, ckpts, capsys):
    pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
    series = tmp_path / "ct"
    g.write_series(series, g.ct_slices(series_uid=g.uid(8), study_uid=STUDY, slices=3))
    out = tmp_path / "o" / "seg.nii.gz"
    argv = ["predict", str(ckpts["empty"]), str(series), "--out", str(out), "--format", "both"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "no DICOM-SEG written: the prediction holds no foreground class" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.json", "seg.nii.gz"]
    assert not read_image(out)[0].any()
    seg = json.loads((out.parent / "seg.json").read_text())["dicom_seg"]
    assert seg["written"] is False and "no foreground" in seg["reason"]
    # the case is complete: a second call skips it rather than redo it for the SEG that cannot exist
    assert main(argv) == 0
    assert "1 skipped" in capsys.readouterr().out


# ---------------------------------------------------------------- the scan's modality and the checkpoint's


def test_a_series_of_another_modality_than_the_checkpoints_is_said(tmp_path, ckpts, capsys):
    series = g.ct_slices(series_uid=g.uid(7), study_uid=STUDY)
    for ds in series:
        ds.Modality = "MR"
    g.write_series(tmp_path / "mr", series)
    out = tmp_path / "mr.nii.gz"
    assert (
        main(["predict", str(ckpts["net"]), str(tmp_path / "mr"), "--out", str(out), "--device", "cpu"]) == 0
    )
    warning = "DICOM Modality MR, but the checkpoint maps intensities with the CT window [-125, 275] HU"
    assert warning in capsys.readouterr().err
    assert any(
        warning in w for w in json.loads(out.with_suffix("").with_suffix(".json").read_text())["warnings"]
    )
    # a CT series through the CT window: no word
    g.write_series(tmp_path / "ct", g.ct_slices(series_uid=g.uid(8), study_uid=STUDY))
    argv = ["predict", str(ckpts["net"]), str(tmp_path / "ct"), "--out", str(tmp_path / "ct.nii.gz")]
    assert main(argv) == 0 and "Modality" not in capsys.readouterr().err


def test_modality_mismatch_rule():
    from organseg.data.preprocess import modality_mismatch

    ct = ct_window_spec()
    assert modality_mismatch(ct, "CT", "s") is None and modality_mismatch(ct, "", "s") is None
    assert modality_mismatch(ct, "OT", "s") is None  # says nothing of the intensities
    assert "made for CT" in modality_mismatch(ct, "PT", "s")
    assert "as for MRI" in modality_mismatch({"kind": "zscore_minmax", "clip": [-3, 3]}, "CT", "s")
    assert modality_mismatch({"kind": "minmax"}, "MR", "s") is None
    assert modality_mismatch({"kind": "none"}, "MR", "s") is None
