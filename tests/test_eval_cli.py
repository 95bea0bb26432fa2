"""``organseg test`` / ``predict`` / ``report`` end to end: run folders, real ACDC volumes, real CT (NIfTI and
DICOM), the files written and the errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import PNG_MAGIC, make_run, one_line_error, tiny_swin
from organseg.cli.main import main
from organseg.data.base import ArrayDataset, Volume
from organseg.data.classes import ACDC_CLASSES, SYNAPSE_CLASSES
from organseg.data.preprocess import ct_window_spec
from organseg.errors import CheckpointError, DataError
from organseg.evaluation.evaluate import evaluate_dataset
from organseg.evaluation.tester import run_test
from organseg.inference.targets import resolve_target
from organseg.metrics import case_metrics

# ---------------------------------------------------------------- organseg test


def test_cli_test_on_real_acdc_validation(tmp_path: Path, acdc_dir: Path, capsys) -> None:
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "minmax"})
    argv = ["test", str(run), "--data", str(acdc_dir), "--split", "val", "--max-cases", "2"]
    argv += ["--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| Swin-Unet (paper) | 90.00 |" in out and "| RV | Myo | LV |" in out
    assert "Δ ours (reference) − Swin-Unet" in out
    res = run / "results" / "val_best"
    summary = json.loads((res / "summary.json").read_text())
    assert summary["cases"] == 2 and summary["split"] == "val" and summary["model_name"] == "swin_unet"
    assert summary["corrected"]["hd95_unit"] == "voxel"  # ACDC h5 has no spacing
    # The stored numbers are the metrics of the stored cases, recomputed independently here.
    from organseg.data import open_dataset

    ds = open_dataset(acdc_dir)
    per_case = json.loads((res / "per_case.json").read_text())
    model = tiny_swin(4)
    from organseg.inference.engine import predict_volume

    for entry in per_case:
        vol = ds.volume(entry["case"])
        m = case_metrics(predict_volume(model, vol.image, 64), vol.label, 4)
        got = [
            [entry["classes"][n]["reference"]["dice"], entry["classes"][n]["reference"]["hd95"]]
            for n in ACDC_CLASSES[1:]
        ]
        np.testing.assert_allclose(got, m, rtol=0, atol=1e-12)
    rows = (res / "per_case.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 and rows[0].startswith("case,class_index,class,dice_reference")
    log = (res / "reference_log.txt").read_text().splitlines()
    assert log[0] == "2 test iterations per epoch"
    assert log[-1].startswith("Testing performance in best val model: mean_dice : ")
    report = (run / "report.md").read_text()
    assert "## val_best" in report and "## Training" in report
    for png in ("val_best_dice.png", "val_best_overlays.png", "training_curves.png"):
        assert (run / "report" / png).read_bytes()[:8] == PNG_MAGIC


def test_run_test_save_nifti_keeps_spacing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vols = [
        Volume(
            f"case{i}",
            rng.random((3, 40, 48)).astype(np.float32),
            rng.integers(0, 4, (3, 40, 48)),
            (2.5, 0.8, 0.7),
            {"origin": (10.0, -5.0, 3.0)},
        )
        for i in range(2)
    ]
    ds = ArrayDataset([], {"test": vols}, class_names=ACDC_CLASSES)
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "none"})
    summary = run_test(run, data=ds, save_nifti=True, checkpoint="last", device="cpu", progress=False)
    res = Path(summary["results_dir"])
    assert res == run / "results" / "test_last"
    assert summary["corrected"]["hd95_unit"] == "mm"
    for kind in ("img", "pred", "gt"):
        img = sitk.ReadImage(str(res / "nifti" / f"case1_{kind}.nii.gz"))
        assert img.GetSize() == (48, 40, 3)
        np.testing.assert_allclose(img.GetSpacing(), (0.7, 0.8, 2.5))
        np.testing.assert_allclose(img.GetOrigin(), (10.0, -5.0, 3.0))
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(res / "nifti" / "case1_gt.nii.gz")))
    np.testing.assert_array_equal(gt, vols[1].label)
    # evaluate_dataset gives the same arrays as the stored results
    direct = evaluate_dataset(tiny_swin(4), ds, "test", patch_size=64, progress=False)
    stored = json.loads((res / "per_case.json").read_text())
    assert [c["case"] for c in stored] == direct.case_ids
    assert stored[0]["mean_dice_reference"] == pytest.approx(direct.reference[0, :, 0].mean(), abs=1e-12)


def test_cli_test_errors(tmp_path: Path, capsys) -> None:
    one_line_error(capsys, ["test", str(tmp_path / "nope")], "no such run folder")
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "minmax"})
    one_line_error(capsys, ["test", str(run), "--checkpoint", "epoch_7"], "epoch_7.pt", "available: best")
    one_line_error(capsys, ["test", str(run), "--checkpoint", "final"], "best, last or epoch_N")
    # data.root is null in this run's configuration
    one_line_error(capsys, ["test", str(run)], "--data")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    one_line_error(capsys, ["test", str(bad), "--data", str(tmp_path)], str(bad))
    ds = ArrayDataset(
        [],
        {"test": [Volume("a", np.zeros((1, 8, 8), np.float32), np.zeros((1, 8, 8)))]},
        class_names=SYNAPSE_CLASSES,
    )
    with pytest.raises(DataError, match="trained on classes"):
        run_test(run, data=ds, device="cpu", progress=False)
    ds_unlabelled = ArrayDataset(
        [], {"test": [Volume("a", np.zeros((1, 8, 8), np.float32), None)]}, class_names=ACDC_CLASSES
    )
    with pytest.raises(DataError, match="no label"):
        run_test(run, data=ds_unlabelled, device="cpu", progress=False)
    with pytest.raises(DataError, match="no cases"):
        run_test(run, data=ds_unlabelled, split="val", device="cpu", progress=False)


def test_resolve_target(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "none"})
    assert resolve_target(run).checkpoint_name == "best"
    (run / "checkpoints" / "best.pt").unlink()
    assert resolve_target(run).checkpoint_name == "last"  # best.pt, else last.pt
    t = resolve_target(run / "checkpoints" / "last.pt")
    assert t.run_dir == run and t.checkpoint_name == "last"
    loose = tmp_path / "loose.pt"
    shutil.copy(run / "checkpoints" / "last.pt", loose)
    assert resolve_target(loose).run_dir is None
    with pytest.raises(CheckpointError, match="checkpoint file"):
        resolve_target(loose, "best")


# ---------------------------------------------------------------- organseg report


def test_cli_report(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run", list(SYNAPSE_CLASSES), ct_window_spec())
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "training_curves.png" in md
    assert (run / "report" / "training_curves.png").read_bytes()[:8] == PNG_MAGIC
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, ["report", str(empty)], "nothing to report")
    (run / "metrics.jsonl").write_text('{"kind": "train"}\nnot json\n')
    one_line_error(capsys, ["report", str(run)], "metrics.jsonl:2")


# ---------------------------------------------------------------- organseg predict


@pytest.fixture(scope="module")
def ct_checkpoint(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("ct") / "run", list(SYNAPSE_CLASSES), ct_window_spec())
    return run / "checkpoints" / "best.pt"


@pytest.mark.parametrize("source", ["example_ct.nii.gz", "example_ct_dicom"])
def test_cli_predict_keeps_geometry(
    tmp_path: Path, totalseg_dir: Path, ct_checkpoint: Path, source: str, capsys
) -> None:
    from organseg.imageio.volumes import read_image

    src = totalseg_dir / source
    out = tmp_path / "seg.nii.gz"
    png = tmp_path / "seg.png"
    argv = ["predict", str(ct_checkpoint), str(src), "--out", str(out), "--overlay", str(png)]
    argv += ["--device", "cpu"]
    assert main(argv) == 0
    assert "liver" in capsys.readouterr().out
    raw, geom = read_image(src)
    pred, pred_geom = read_image(out)
    assert pred.shape == raw.shape
    np.testing.assert_allclose(pred_geom.spacing, geom.spacing, rtol=1e-6)
    np.testing.assert_allclose(pred_geom.origin, geom.origin, atol=1e-4)
    np.testing.assert_allclose(pred_geom.direction, geom.direction, atol=1e-6)
    assert pred.dtype == np.uint8 and pred.max() < len(SYNAPSE_CLASSES)
    info = json.loads((tmp_path / "seg.json").read_text())
    assert [c["name"] for c in info["classes"]] == list(SYNAPSE_CLASSES)
    voxel_ml = float(np.prod(geom.spacing)) / 1000
    assert sum(c["voxels"] for c in info["classes"]) == pred.size
    for c in info["classes"]:
        assert c["voxels"] == int((pred == c["index"]).sum())
        assert c["volume_ml"] == pytest.approx(c["voxels"] * voxel_ml, abs=1e-3)
    assert info["preprocessing"] == {"kind": "ct_window", "window": [-125.0, 275.0]}
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cli_predict_bad_inputs(tmp_path: Path, totalseg_dir: Path, ct_checkpoint: Path, capsys) -> None:
    ck = str(ct_checkpoint)
    out = str(tmp_path / "o.nii.gz")
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image")
    one_line_error(capsys, ["predict", ck, str(text), "--out", out], str(text))
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(flat))
    one_line_error(capsys, ["predict", ck, str(flat), "--out", out], str(flat), "2-D")
    empty = tmp_path / "empty_dicom"
    empty.mkdir()
    one_line_error(capsys, ["predict", ck, str(empty), "--out", out], str(empty), "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in sorted((totalseg_dir / "example_ct_dicom").iterdir())[:3]:
        shutil.copy(f, mixed)
    other = sitk.GetImageFromArray(np.zeros((16, 16), np.int16))
    other.SetMetaData("0008|0060", "CT")
    sitk.WriteImage(other, str(mixed / "other.dcm"))  # a second series in the same folder
    one_line_error(capsys, ["predict", ck, str(mixed), "--out", out], str(mixed), "series")
    one_line_error(
        capsys,
        ["predict", ck, str(totalseg_dir / "example_ct.nii.gz"), "--out", str(tmp_path / "o.png")],
        "image suffix",
    )
    one_line_error(capsys, ["predict", str(tmp_path / "missing.pt"), str(flat), "--out", out], "missing.pt")


def test_predict_turns_a_non_axial_first_scan(tmp_path: Path, totalseg_dir: Path, ct_checkpoint: Path):
    """A scan stored with another axis first is predicted along its axial axis and written back unturned."""
    from organseg.imageio.volumes import read_image
    from organseg.prediction.predict import predict_file

    src = totalseg_dir / "example_ct_sm.nii.gz"
    img = sitk.ReadImage(str(src))
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    turned = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(1, 0, 2)))  # array axes (y, z, x)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    sx, sy, sz = img.GetSpacing()
    turned.SetDirection(tuple(d[:, [0, 2, 1]].ravel()))  # image axes (x, z, y)
    turned.SetSpacing((sx, sz, sy))
    turned.SetOrigin(img.GetOrigin())
    sitk.WriteImage(turned, str(tmp_path / "turned.nii.gz"))
    a = predict_file(ct_checkpoint, src, tmp_path / "a.nii.gz", device="cpu", progress=False)
    b = predict_file(
        ct_checkpoint, tmp_path / "turned.nii.gz", tmp_path / "b.nii.gz", device="cpu", progress=False
    )
    assert (a["axial_axis"], b["axial_axis"]) == (0, 1)
    pred_a, _ = read_image(tmp_path / "a.nii.gz")
    pred_b, geom_b = read_image(tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(pred_b, pred_a.transpose(1, 0, 2))
    np.testing.assert_allclose(geom_b.direction, turned.GetDirection())
