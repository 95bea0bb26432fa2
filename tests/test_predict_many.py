"""``organseg predict`` at scale: many inputs per call (files, folders, globs, DICOM series), a failing case
in the middle, skip/overwrite, ensembles and TTA equal to their definitions, official checkpoints, study
folders, DICOM-SEG and viewer outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import (
    TINY_SWIN,
    TINY_SWIN_CFG,
    noise_ct_scan,
    one_line_error,
    tiny_swin_checkpoint,
    tiny_swin_net,
    tiny_swin_run,
    two_ct_volumes,
)
from organseg.checkpoint import atomic_torch_save, make_checkpoint
from organseg.cli.main import main
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.data.preprocess import apply_preprocessing, ct_window_spec
from organseg.imageio.volumes import read_image
from organseg.inference.engine import averaged, predict_volume
from organseg.models import create_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    scans = root / "scans"
    scans.mkdir()
    for i in range(3):
        noise_ct_scan(scans / f"case{i}.nii.gz", i)
    return {
        "root": root,
        "scans": scans,
        "a": tiny_swin_checkpoint(root / "a.pt", 1),
        "b": tiny_swin_checkpoint(root / "b.pt", 2),
        "c": tiny_swin_checkpoint(root / "c.pt", 3),
    }


def _expected(ckpts: list[Path], scan: Path, tta: bool = False) -> np.ndarray:
    """The definition: argmax of the mean of the members' softmax over the mirror flips (if TTA)."""
    nets = []
    for p in ckpts:
        from organseg.checkpoint import model_from_checkpoint

        nets.append(model_from_checkpoint(p)[0])
    raw, _ = read_image(scan)
    image = apply_preprocessing(raw, ct_window_spec())
    return predict_volume(averaged(nets, tta=tta), image, 64)


def test_many_inputs_with_a_failing_case_in_the_middle(world, tmp_path, capsys):
    scans = world["scans"]
    broken = tmp_path / "in" / "broken.nii.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"not a NIfTI file at all")
    out = tmp_path / "out"
    argv = ["predict", str(world["a"]), str(scans / "case0.nii.gz"), str(broken), str(scans / "case1.nii.gz")]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 1
    printed = capsys.readouterr().out
    assert "2 done, 0 skipped (outputs exist), 1 failed" in printed
    assert f"FAILED {broken}: {broken}" in printed  # the reason names the file
    written = sorted(p.name for p in out.iterdir())
    assert written == ["case0.json", "case0.nii.gz", "case1.json", "case1.nii.gz"]
    for name in ("case0", "case1"):
        pred, geom = read_image(out / f"{name}.nii.gz")
        np.testing.assert_array_equal(pred, _expected([world["a"]], scans / f"{name}.nii.gz"))
        assert geom.spacing == pytest.approx((2.5, 0.8, 0.8))
        assert json.loads((out / f"{name}.json").read_text())["input"] == str(scans / f"{name}.nii.gz")


def test_folder_glob_skip_and_overwrite(world, tmp_path, capsys):
    out = tmp_path / "out"
    scans = world["scans"]
    assert main(["predict", str(world["a"]), str(scans), "--out", str(out), "--device", "cpu"]) == 0
    assert "3 done, 0 skipped (outputs exist), 0 failed" in capsys.readouterr().out
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert len(before) == 6
    pattern = str(scans / "case*.nii.gz")
    assert main(["predict", str(world["a"]), pattern, "--out", str(out), "--device", "cpu"]) == 0
    assert "0 done, 3 skipped (outputs exist), 0 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten
    (out / "case1.json").unlink()  # an incomplete case is redone even without --overwrite
    assert main(["predict", str(world["a"]), pattern, "--out", str(out), "--device", "cpu"]) == 0
    assert "1 done, 2 skipped" in capsys.readouterr().out
    assert (
        main(["predict", str(world["a"]), pattern, "--out", str(out), "--overwrite", "--device", "cpu"]) == 0
    )
    assert "3 done, 0 skipped" in capsys.readouterr().out


def test_bad_plans_are_refused_before_any_work(world, tmp_path, capsys):
    scans = world["scans"]
    two = [str(scans / "case0.nii.gz"), str(scans / "case1.nii.gz")]
    err = one_line_error(capsys, ["predict", str(world["a"]), *two, "--out", str(tmp_path / "x.nii.gz")])
    assert "2 inputs are written into a folder" in err
    twin = tmp_path / "twin"
    twin.mkdir()
    noise_ct_scan(twin / "case0.nii.gz", 9)
    same = [str(scans / "case0.nii.gz"), str(twin / "case0.nii.gz")]
    err = one_line_error(capsys, ["predict", str(world["a"]), *same, "--out", str(tmp_path / "o")])
    assert "inputs with the same name would write the same files: case0" in err
    err = one_line_error(capsys, ["predict", str(world["a"]), str(scans), "--out", str(scans)])
    assert "lies inside INPUT" in err or "is the same as INPUT" in err
    nothing = str(tmp_path / "nothing*.nii.gz")
    err = one_line_error(capsys, ["predict", str(world["a"]), nothing, "--out", "o"])
    assert "no file or folder matches this pattern" in err
    err = one_line_error(
        capsys,
        [
            "predict",
            str(world["a"]),
            str(scans / "case0.nii.gz"),
            "--out",
            str(tmp_path / "d.nii.gz"),
            "--format",
            "dicom-seg",
        ],
    )
    assert "needs a DICOM series as input" in err and not (tmp_path / "d.dcm").exists()
    assert not (tmp_path / "o").exists()


def test_ensemble_and_tta_equal_their_definition(world, tmp_path, capsys):
    scan = world["scans"] / "case2.nii.gz"
    out = tmp_path / "ens.nii.gz"
    argv = ["predict", str(world["a"]), str(scan), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--ensemble", str(world["b"]), str(world["c"])]) == 0
    pred, _ = read_image(out)
    want = _expected([world["a"], world["b"], world["c"]], scan)
    np.testing.assert_array_equal(pred, want)
    singles = [_expected([world[k]], scan) for k in "abc"]
    assert any((want != s).any() for s in singles)  # the average is not just one member
    info = json.loads(out.with_name("ens.json").read_text())
    assert info["ensemble"] == [str(world[k]) for k in "abc"] and info["tta"] is False

    out2 = tmp_path / "tta.nii.gz"
    assert main(["predict", str(world["a"]), str(scan), "--out", str(out2), "--tta", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read_image(out2)[0], _expected([world["a"]], scan, tta=True))


def test_ensemble_members_must_agree(world, tmp_path, capsys):
    other = tmp_path / "acdc.pt"
    torch.manual_seed(5)
    net = create_model("swin_unet", num_classes=4, **TINY_SWIN)
    atomic_torch_save(
        make_checkpoint(
            net,
            model_name="swin_unet",
            model_args={**TINY_SWIN, "num_classes": 4},
            class_names=["background", "RV", "Myo", "LV"],
            preprocessing={"kind": "minmax"},
            config=TINY_SWIN_CFG,
        ),
        other,
    )
    err = one_line_error(
        capsys,
        [
            "predict",
            str(world["a"]),
            str(world["scans"] / "case0.nii.gz"),
            "--out",
            str(tmp_path / "o.nii.gz"),
            "--ensemble",
            str(other),
        ],
    )
    assert "predict 9 and 4 classes" in err


def test_study_folder_with_a_model_filter(world, tmp_path, capsys):
    study = tmp_path / "study"
    tiny_swin_run(study / "runs" / "swin_unet_seed1", 1)
    tiny_swin_run(study / "runs" / "swin_unet_seed2", 2)
    scan = world["scans"] / "case0.nii.gz"
    out = tmp_path / "s.nii.gz"
    assert (
        main(
            ["predict", str(study), str(scan), "--out", str(out), "--models", "swin_unet", "--device", "cpu"]
        )
        == 0
    )
    np.testing.assert_array_equal(read_image(out)[0], _expected([world["a"], world["b"]], scan))
    err = one_line_error(
        capsys, ["predict", str(study), str(scan), "--out", str(tmp_path / "u.nii.gz"), "--models", "unet"]
    )
    assert "no finished run of network(s) unet" in err


def test_official_checkpoint_applied_directly(world, tmp_path, capsys):
    official = tmp_path / "epoch_149.pth"
    torch.save(
        {"module." + k: v for k, v in tiny_swin_net(1).state_dict().items()}, official
    )  # DataParallel names
    scan = world["scans"] / "case1.nii.gz"
    out = tmp_path / "off.nii.gz"
    assert main(["predict", str(official), str(scan), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "official Swin-Unet checkpoint, 9 classes from its head" in printed
    assert "the Synapse classes and the reference CT window [-125, 275] HU" in printed
    # The same weights as the organseg checkpoint "a", the same (reference) CT window: the same labels.
    np.testing.assert_array_equal(read_image(out)[0], _expected([world["a"]], scan))
    info = json.loads(out.with_name("off.json").read_text())
    assert [c["name"] for c in info["classes"]] == list(SYNAPSE_CLASSES)
    assert any("records no classes" in n for n in info["notes"])
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in tiny_swin_net(1).state_dict().items() if ".output." not in k}, headless)
    err = one_line_error(capsys, ["predict", str(headless), str(scan), "--out", str(tmp_path / "h.nii.gz")])
    assert "without a class head" in err


def test_viewer_and_overlay_named_after_the_case(world, tmp_path):
    out = tmp_path / "v"
    two = [str(world["scans"] / "case0.nii.gz"), str(world["scans"] / "case1.nii.gz")]
    argv = ["predict", str(world["a"]), *two]
    assert main([*argv, "--out", str(out), "--viewer", "--overlay", "--device", "cpu"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"case{i}.{ext}" for i in (0, 1) for ext in ("html", "json", "nii.gz", "png"))
    page = (out / "case0.html").read_text()
    assert "<html" in page.lower() and "http://" not in page and "https://" not in page


def test_dicom_seg_from_the_real_series(world, tmp_path, totalseg_dir, capsys):
    hd = pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
    series = totalseg_dir / "example_ct_dicom"
    out = tmp_path / "ct.nii.gz"
    argv = ["predict", str(world["a"]), str(series), "--out", str(out), "--format", "both", "--device", "cpu"]
    assert main(argv) == 0
    label, geometry = read_image(out)
    seg = hd.seg.segread(tmp_path / "ct.dcm")
    info = json.loads((tmp_path / "ct.json").read_text())
    segments = info["dicom_seg"]["segments"]
    assert [s["class"] for s in segments] == sorted(int(c) for c in np.unique(label) if c)
    import pydicom

    files = sorted(series.iterdir())
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = [str(h.file_meta.MediaStorageSOPInstanceUID) for h in headers]
    numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    back = np.zeros(numbers.shape, np.uint8)
    for s in segments:
        back[numbers == s["segment"]] = s["class"]
    d = np.asarray(geometry.direction).reshape(3, 3)
    ks = [
        round(
            float(np.dot(np.asarray(h.ImagePositionPatient, float) - geometry.origin, d[:, 2]))
            / geometry.spacing[0]
        )
        for h in headers
    ]
    np.testing.assert_array_equal(back, label[ks])  # voxel for voxel, placed by patient position
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert str(algorithm.AlgorithmName).startswith("organseg swin_unet")


def test_test_reports_the_ensemble_beside_its_members(world, tmp_path):
    from organseg.evaluation.evaluate import evaluate_dataset
    from organseg.evaluation.tester import run_test

    runs = [tiny_swin_run(tmp_path / f"r{s}", s) for s in (1, 2)]
    ds = two_ct_volumes()
    summary = run_test(
        runs[0],
        data=ds,
        ensemble=[runs[1]],
        tta=True,
        device="cpu",
        report=False,
        viewer=False,
        progress=False,
    )
    folder = Path(summary["results_dir"])
    assert folder == runs[0] / "results" / "test_best_ensemble2_tta"
    assert summary["ensemble"] == [str(r / "checkpoints" / "best.pt") for r in runs] and summary["tta"]
    assert [m["checkpoint"] for m in summary["members"]] == summary["ensemble"]
    for r, m in zip(runs, summary["members"], strict=True):  # each member tested alone, in its own folder
        assert Path(m["results_dir"]) == r / "results" / "test_best"
        assert (r / "results" / "test_best" / "summary.json").is_file()
    assert "member 1:" in summary["table"] and "**ensemble + mirror TTA**" in summary["table"]
    # The ensemble's numbers are those of the averaged network itself.
    nets = [tiny_swin_net(1), tiny_swin_net(2)]
    direct = evaluate_dataset(averaged(nets, tta=True), ds, "test", patch_size=64, progress=False).summary()
    assert summary["reference"]["mean_dice"] == pytest.approx(direct["reference"]["mean_dice"], abs=1e-12)
    assert json.loads((folder / "summary.json").read_text())["tta"] is True


def test_test_applies_an_official_checkpoint_with_the_dataset_classes(tmp_path):
    from organseg.evaluation.tester import run_test

    official = tmp_path / "epoch_149.pth"
    torch.save(tiny_swin_net(1).state_dict(), official)
    summary = run_test(
        official, data=two_ct_volumes(), device="cpu", report=False, viewer=False, progress=False
    )
    ref = run_test(
        tiny_swin_checkpoint(tmp_path / "same.pt", 1),
        data=two_ct_volumes(),
        device="cpu",
        report=False,
        viewer=False,
        progress=False,
    )
    assert summary["class_names"] == list(SYNAPSE_CLASSES)
    assert summary["reference"]["mean_dice"] == ref["reference"]["mean_dice"]


def test_predict_with_an_exported_onnx_model(world, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    model = tmp_path / "a.onnx"
    assert main(["export", str(world["a"]), "--onnx", str(model)]) == 0
    scan = world["scans"] / "case0.nii.gz"
    out = tmp_path / "onnx.nii.gz"
    assert main(["predict", str(model), str(scan), "--out", str(out), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read_image(out)[0], _expected([world["a"]], scan))
    err = one_line_error(
        capsys, ["predict", str(model), str(scan), "--out", str(tmp_path / "b.nii.gz"), "--precision", "bf16"]
    )
    assert "ONNX models run in fp32" in err


# ------------------------------------------------------------ nothing skipped or ignored silently (issue 27)


def _damage_zero(p: Path) -> None:
    p.write_bytes(b"")


def _damage_half(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _damage_json(p: Path) -> None:
    p.write_text('{"input": ')


def _other_input(p: Path) -> None:
    info = json.loads(p.read_text())
    p.write_text(json.dumps({**info, "input": "/elsewhere/scan.nii.gz"}))


@pytest.mark.parametrize(
    ("file", "damage", "why"),
    [
        ("case1.nii.gz", _damage_zero, "case1.nii.gz is damaged (0 bytes)"),
        ("case1.nii.gz", _damage_half, "case1.nii.gz is damaged (file is truncated or corrupt"),
        ("case1.json", _damage_json, "case1.json is damaged (not JSON"),
        ("case1.json", _other_input, "case1.json names another input (/elsewhere/scan.nii.gz)"),
    ],
)
def test_a_case_with_a_damaged_output_is_redone_and_said(world, tmp_path, capsys, file, damage, why):
    out, scans = tmp_path / "out", world["scans"]
    argv = ["predict", str(world["a"]), str(scans), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    good = (out / "case1.nii.gz").read_bytes()
    damage(out / file)
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"organseg predict: redoing case1: its previous output {out / why}" in printed
    assert "1 done, 2 skipped (outputs exist), 0 failed; 1 redone" in printed
    assert (out / "case1.nii.gz").read_bytes() == good or read_image(out / "case1.nii.gz")[0].size
    assert json.loads((out / "case1.json").read_text())["input"] == str(scans / "case1.nii.gz")
    assert main(argv) == 0 and "0 done, 3 skipped" in capsys.readouterr().out  # whole again: skipped


def test_an_option_that_cannot_apply_is_refused(world, tmp_path, capsys):
    scans, ckpt = world["scans"], str(world["a"])
    two = [str(scans / "case0.nii.gz"), str(scans / "case1.nii.gz")]
    out = tmp_path / "o"
    one_line_error(
        capsys, ["predict", ckpt, *two, "--out", out, "--overlay", "x.png"], "--overlay x.png", "o"
    )
    one = str(scans / "case0.nii.gz")
    one_line_error(capsys, ["predict", ckpt, one, "--out", out, "--series-uid", "1.2"], "--series 1.2", one)
    one_line_error(
        capsys, ["predict", ckpt, one, "--out", tmp_path / "x.dcm"], "--out", "x.dcm", "--format nifti"
    )
    one_line_error(capsys, ["predict", ckpt, *two, "--out", out, "--format", "both"], "--format both")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was predicted


def test_a_missing_extra_is_found_before_any_work(world, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_highdicom(name, *args, **kwargs):
        if name.startswith("highdicom"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_highdicom)
    called = []
    monkeypatch.setattr("organseg.prediction.predict.predict_case", lambda *a, **k: called.append(a))
    series = tmp_path / "series"  # the extra is checked before any series is read
    series.mkdir()
    argv = ["predict", world["a"], series, "--out", tmp_path / "s.dcm", "--format", "dicom-seg"]
    one_line_error(capsys, argv, "pip install 'organseg[dicom]'")
    assert not called and not (tmp_path / "s.dcm").exists()


def test_test_checks_every_members_results_folder_before_any_work(world, tmp_path):
    from organseg.errors import OutputError
    from organseg.evaluation.tester import run_test

    runs = [tiny_swin_run(tmp_path / f"r{s}", s) for s in (1, 2)]
    (runs[1] / "results").write_text("a file where the member's results folder goes")
    with pytest.raises(OutputError, match=r"r2/results is a file, not a folder"):
        run_test(
            runs[0], data=two_ct_volumes(), ensemble=[runs[1]], device="cpu", report=False, progress=False
        )
    assert not (runs[0] / "results").exists()  # the first member was not tested meanwhile
