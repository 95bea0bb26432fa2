"""Issue 22: one scan, one answer, whatever its voxel order.

The real CT (``../shared/data/totalseg/example_ct_sm.nii.gz``, stored RAS) is written in all 48 axis
permutations and flips with the same physical geometry. A small U-Net trained here on its LPS-turned slices
(liver and spleen from the TotalSegmentator labels) must give the same label map in physical space for every
copy: each output is resampled (nearest neighbour: an exact reindexing, the grids coincide) onto the original
file's grid and compared voxel for voxel, in ``predict``, ``test`` (an nnU-Net folder of the 48 copies),
an ensemble with mirror TTA, and ONNX Runtime. A checkpoint without the orientation field keeps the old
behaviour (stored voxel order) and says so; oblique and sheared direction matrices are handled as
docs/evaluation.md decides.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import zoom

from organseg.checkpoint import atomic_torch_save, make_checkpoint, read_checkpoint
from organseg.data.preprocess import apply_preprocessing, ct_window_spec
from organseg.errors import CheckpointError, ConfigError, DataError
from organseg.imageio.orientation import (
    Reorientation,
    reorientation,
    scan_orientation,
    transposed_code,
    volume_orientation,
)
from organseg.imageio.volumes import Geometry, read_image
from organseg.models import create_model
from organseg.prediction.predict import expand_inputs, load_predictor, plan_cases, predict_file, predict_many
from synthetic_scan import RAS_STORAGE, diagonal_frame, reoriented, synthetic_scan

CLASSES = ["background", "liver", "spleen"]
ORGANS = {5: 1, 1: 2}  # TotalSegmentator "total" ids -> our classes
SIZE = 32  # network input side: small, so that 48 copies x 4 paths stay cheap
NET_ARGS = {"num_classes": len(CLASSES), "width": 0.125}
CONFIG = {"model": {"name": "unet", "args": {"width": 0.125}}, "train": {"img_size": SIZE}}
FLIPS = list(itertools.product((False, True), repeat=3))
VARIANTS = [(p, f) for p in itertools.permutations(range(3)) for f in FLIPS]  # the 48 storage orders


def _labels(seg: sitk.Image) -> sitk.Image:
    arr = sitk.GetArrayFromImage(seg)
    out = np.zeros(arr.shape, np.uint8)
    for src, dst in ORGANS.items():
        out[arr == src] = dst
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(seg)
    return img


def _train(image: np.ndarray, label: np.ndarray, iterations: int, seed: int = 0) -> list[dict]:
    """A tiny U-Net trained on the slices of one volume (already in the training orientation); the state
    dicts at half and at all ``iterations`` (two different networks for the ensemble)."""
    x = np.stack([zoom(s, (SIZE / s.shape[0], SIZE / s.shape[1]), order=3) for s in image])
    y = np.stack([zoom(s, (SIZE / s.shape[0], SIZE / s.shape[1]), order=0) for s in label])
    xt, yt = torch.from_numpy(x).float()[:, None], torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(seed)
    net = create_model("unet", **NET_ARGS)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    weight = torch.tensor([1.0, 2.0, 4.0])
    states = []
    for it in range(iterations):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt, weight=weight)
        loss.backward()
        opt.step()
        if it + 1 in (iterations // 2, iterations):
            states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    return states


def _checkpoint(path: Path, state: dict, orientation: str | None = "LPS", legacy: bool = False) -> Path:
    net = create_model("unet", **NET_ARGS)
    net.load_state_dict(state)
    ckpt = make_checkpoint(
        net,
        model_name="unet",
        model_args=NET_ARGS,
        class_names=CLASSES,
        preprocessing=ct_window_spec(),
        orientation=orientation,
        config=CONFIG,
    )
    if legacy:
        del ckpt["orientation"]  # as written before checkpoints recorded it
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The machine this runs on is often shared: one intra-op thread wastes no time waiting for a second.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def world(tmp_path_factory, totalseg_dir: Path) -> dict:
    root = tmp_path_factory.mktemp("orient")
    ct = sitk.ReadImage(str(totalseg_dir / "example_ct_sm.nii.gz"))
    seg = _labels(sitk.ReadImage(str(totalseg_dir / "example_seg.nii.gz")))
    # Training slices in LPS (what DICOM series and the TransUNet files have), turned by SimpleITK, not by
    # the code under test.
    ct_lps, seg_lps = sitk.DICOMOrient(ct, "LPS"), sitk.DICOMOrient(seg, "LPS")
    assert np.allclose(ct_lps.GetDirection(), np.eye(3).ravel())
    image = apply_preprocessing(sitk.GetArrayFromImage(ct_lps), ct_window_spec(), source="ct")
    half, full = _train(image, sitk.GetArrayFromImage(seg_lps), iterations=60)
    scans = root / "scans"
    scans.mkdir()
    for k, (perm, flips) in enumerate(VARIANTS):
        sitk.WriteImage(reoriented(ct, perm, flips), str(scans / f"v{k:02d}.nii"))
    return {
        "root": root,
        "ct": ct,
        "seg": seg,
        "scans": scans,
        "ckpt": _checkpoint(root / "net.pt", full),
        "ckpt_half": _checkpoint(root / "net_half.pt", half),
        "legacy": _checkpoint(root / "legacy.pt", full, legacy=True),
    }


def _on_reference_grid(path: Path, reference: sitk.Image) -> np.ndarray:
    """A label map resampled onto ``reference``'s grid: nearest neighbour over coinciding voxel centres."""
    out = sitk.ReadImage(str(path))
    resampled = sitk.Resample(out, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
    return sitk.GetArrayFromImage(resampled)


def _predict_all(world: dict, out: Path, checkpoint: Path, **kw) -> list[dict]:
    predictor = load_predictor(checkpoint, device="cpu", batch_size=32, **kw)
    cases = plan_cases(expand_inputs([world["scans"]]), out)
    outcomes = predict_many(predictor, cases, progress=False)
    assert [o.status for o in outcomes] == ["done"] * len(VARIANTS), [o.reason for o in outcomes]
    return [o.info for o in outcomes]


def _torch_map(world: dict, out: Path) -> np.ndarray:
    """``predict`` of the stored file with the PyTorch checkpoint, on the reference grid (cross-checks)."""
    predict_file(world["ckpt"], world["scans"] / "v00.nii", out, device="cpu", progress=False)
    return _on_reference_grid(out, world["ct"])


def _assert_one_answer(world: dict, paths: list[Path], min_dice: float = 0.7) -> np.ndarray:
    maps = [_on_reference_grid(p, world["ct"]) for p in paths]
    first = maps[0]
    assert (first == 255).sum() == 0  # every voxel of the reference grid was covered
    # a trained network, not an empty answer: both organs are found, mostly where the labels put them
    truth = sitk.GetArrayFromImage(world["seg"])
    for organ in (1, 2):
        assert (first == organ).sum() > 100, f"class {organ} predicted in {(first == organ).sum()} voxels"
    liver_dice = 2 * ((first == 1) & (truth == 1)).sum() / ((first == 1).sum() + (truth == 1).sum())
    assert liver_dice > min_dice, liver_dice
    for (perm, flips), m in zip(VARIANTS, maps, strict=True):
        assert np.array_equal(m, first), f"storage perm {perm} flips {flips} gives another label map"
    return first


def test_predict_48_storage_orders_one_answer(world: dict, tmp_path: Path) -> None:
    infos = _predict_all(world, tmp_path, world["ckpt"])
    _assert_one_answer(world, [tmp_path / f"v{k:02d}.nii.gz" for k in range(len(VARIANTS))])
    assert len({json.dumps(i["classes"]) for i in infos}) == 1  # the same volumes in mL
    assert {i["orientation"]["network"] for i in infos} == {"LPS"}
    assert len({i["orientation"]["scan"] for i in infos}) == 48
    assert all(not i["warnings"] for i in infos)
    for k, info in enumerate(infos):  # each label map keeps its own scan's grid
        _, geom_in = read_image(world["scans"] / f"v{k:02d}.nii")
        _, geom_out = read_image(tmp_path / f"v{k:02d}.nii.gz")
        assert geom_out.close_to(geom_in)
        assert info["shape"] == list(sitk.ReadImage(str(world["scans"] / f"v{k:02d}.nii")).GetSize()[::-1])


def test_ensemble_with_tta_48_storage_orders_one_answer(world: dict, tmp_path: Path) -> None:
    infos = _predict_all(world, tmp_path, world["ckpt"], ensemble=[world["ckpt_half"]], tta=True)
    # mirror TTA shows this network flips it never saw in training: a lower Dice, still the same everywhere
    paths = [tmp_path / f"v{k:02d}.nii.gz" for k in range(len(VARIANTS))]
    _assert_one_answer(world, paths, min_dice=0.5)
    assert infos[0]["ensemble"] and infos[0]["tta"]


def test_onnx_48_storage_orders_one_answer(world: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from organseg.inference.onnx import export_onnx, load_onnx

    onnx_path = tmp_path / "net.onnx"
    meta = export_onnx(world["ckpt"], onnx_path)
    assert meta["orientation"] == "LPS" and load_onnx(onnx_path)[1]["orientation"] == "LPS"
    out = tmp_path / "out"
    _predict_all(world, out, onnx_path)
    onnx_map = _assert_one_answer(world, [out / f"v{k:02d}.nii.gz" for k in range(len(VARIANTS))])
    assert np.array_equal(onnx_map, _torch_map(world, tmp_path / "torch.nii.gz"))


def _nnunet_folder(world: dict, root: Path) -> Path:
    """An nnU-Net raw folder: a training case stored in an odd order, the 48 copies as labelled test cases."""
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    odd = ((2, 0, 1), (True, False, True))
    sitk.WriteImage(reoriented(world["ct"], *odd), str(root / "imagesTr" / "train_0000.nii"))
    sitk.WriteImage(reoriented(world["seg"], *odd), str(root / "labelsTr" / "train.nii"))
    for k, (perm, flips) in enumerate(VARIANTS):
        shutil.copy(world["scans"] / f"v{k:02d}.nii", root / "imagesTs" / f"v{k:02d}_0000.nii")
        sitk.WriteImage(reoriented(world["seg"], perm, flips), str(root / "labelsTs" / f"v{k:02d}.nii"))
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {n: i for i, n in enumerate(CLASSES)},
        "numTraining": 1,
        "file_ending": ".nii",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_test_verb_48_storage_orders_one_answer(world: dict, tmp_path: Path) -> None:
    """``organseg test`` on an nnU-Net folder of the 48 copies: the reader turns every case to the training
    case's orientation, the evaluation turns it to the network's; metrics and the saved label maps agree."""
    from organseg.data.nnunet import NnUNetDataset
    from organseg.evaluation.tester import run_test

    data = _nnunet_folder(world, tmp_path / "data")
    ds = NnUNetDataset(data, progress=False)
    # isotropic voxels: no axis is coarsest, so the training case's own order is the dataset's
    train_code = scan_orientation(read_image(data / "imagesTr" / "train_0000.nii")[1].direction).code
    assert ds.orientation == train_code != "LPS"
    summary = run_test(
        world["ckpt"],
        data=ds,
        split="test",
        save_nifti=True,
        out=tmp_path / "res",
        report=False,
        viewer=False,
        progress=False,
    )
    assert summary["orientation"] == "LPS"
    per_case = json.loads((tmp_path / "res" / "per_case.json").read_text())
    scores = {json.dumps(c["classes"], sort_keys=True) for c in per_case}
    assert len(per_case) == 48 and len(scores) == 1, "cases differ in their metrics"
    nifti = tmp_path / "res" / "nifti"
    maps = _assert_one_answer(world, [nifti / f"v{k:02d}_pred.nii.gz" for k in range(len(VARIANTS))])
    assert np.array_equal(maps, _torch_map(world, tmp_path / "predicted.nii.gz"))


def test_legacy_checkpoint_keeps_stored_order_and_says_so(world: dict, tmp_path: Path, capsys) -> None:
    """The issue's measurement: the RAS file and a copy with its rows reversed (LAS, same physical grid)."""
    from organseg.cli.main import main

    rows_reversed = world["scans"] / f"v{VARIANTS.index(((0, 1, 2), (False, True, False))):02d}.nii"
    ras = world["scans"] / f"v{VARIANTS.index(((0, 1, 2), (False, False, False))):02d}.nii"
    volumes = {}
    for name in ("legacy", "ckpt"):
        for scan in (ras, rows_reversed):
            out = tmp_path / f"{name}_{scan.stem}.nii.gz"
            assert main(["predict", str(world[name]), str(scan), "--out", str(out), "--device", "cpu"]) == 0
            printed = capsys.readouterr().out
            if name == "legacy":
                assert "predates orientation records" in printed and "stored voxel order" in printed
            else:
                assert "predates" not in printed
            info = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
            volumes[name, scan.stem] = info["classes"][1]["volume_ml"]
            world.setdefault("maps", {})[name, scan.stem] = _on_reference_grid(out, world["ct"])
    print("liver mL (RAS file, rows reversed):", {k: v for k, v in volumes.items()})
    maps = world["maps"]
    assert np.array_equal(maps["ckpt", ras.stem], maps["ckpt", rows_reversed.stem])
    assert not np.array_equal(maps["legacy", ras.stem], maps["legacy", rows_reversed.stem])
    assert volumes["ckpt", ras.stem] == volumes["ckpt", rows_reversed.stem]


def _redirected(path: Path, src: sitk.Image, direction: np.ndarray) -> Path:
    img = sitk.Image(src)
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    sitk.WriteImage(img, str(path))
    return path


def _rot_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def test_oblique_scans_nearest_with_a_warning_or_refused(world: dict, tmp_path: Path, capsys) -> None:
    from organseg.cli.main import main

    ras = np.asarray(world["ct"].GetDirection()).reshape(3, 3)
    straight = _redirected(tmp_path / "straight.nii", world["ct"], ras)
    tilted = _redirected(tmp_path / "tilted.nii", world["ct"], _rot_z(10) @ ras)
    steep = _redirected(tmp_path / "steep.nii", world["ct"], diagonal_frame())
    assert main(["predict", str(world["ckpt"]), str(straight), "--out", str(tmp_path / "a.nii.gz")]) == 0
    capsys.readouterr()
    assert main(["predict", str(world["ckpt"]), str(tilted), "--out", str(tmp_path / "b.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "tilted.nii" in err and "10.00 degrees" in err and "RAS" in err
    info = json.loads((tmp_path / "b.json").read_text())
    assert info["orientation"]["tilt_degrees"] == pytest.approx(10, abs=1e-3) and info["warnings"]
    # nearest orientation: the same voxel order goes in, the same labels come out
    assert np.array_equal(read_image(tmp_path / "a.nii.gz")[0], read_image(tmp_path / "b.nii.gz")[0])
    assert main(["predict", str(world["ckpt"]), str(steep), "--out", str(tmp_path / "c.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "steep.nii" in err and "54.7 degrees" in err
    assert not (tmp_path / "c.nii.gz").exists()
    sheared = sitk.Image(world["ct"])
    d = np.eye(3)
    d[0, 1] = 0.3
    sheared.SetDirection(tuple(d.ravel()))
    sitk.WriteImage(sheared, str(tmp_path / "sheared.mha"))  # MetaImage keeps a shear (NIfTI does not)
    assert (
        main(
            [
                "predict",
                str(world["ckpt"]),
                str(tmp_path / "sheared.mha"),
                "--out",
                str(tmp_path / "d.nii.gz"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sheared.mha" in err and "not orthonormal" in err


def test_checkpoint_orientation_field_is_checked(world: dict, tmp_path: Path) -> None:
    ckpt = read_checkpoint(world["ckpt"])
    assert ckpt["orientation"] == "LPS"
    for bad in ("LPX", "LLS", "lps", 3):
        ckpt["orientation"] = bad
        atomic_torch_save(ckpt, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="bad.pt: field 'orientation'"):
            load_predictor(tmp_path / "bad.pt", device="cpu")
    ckpt["orientation"] = "RAS"
    atomic_torch_save(ckpt, tmp_path / "ras.pt")
    with pytest.raises(ConfigError, match="other orientations: LPS vs RAS"):
        load_predictor(world["ckpt"], ensemble=[tmp_path / "ras.pt"], device="cpu")
    # a member without an orientation follows the others, and a note says so
    p = load_predictor(world["legacy"], ensemble=[world["ckpt"]], device="cpu")
    assert p.orientation == "LPS" and any("turned to LPS" in n for n in p.notes)


# ---------------------------------------------------------------- the arithmetic alone (no network)


def test_reorientation_is_exact_for_every_storage_order() -> None:
    base = synthetic_scan(RAS_STORAGE)
    ref_arr, ref_geom = sitk.GetArrayFromImage(base), Geometry.from_sitk(base)
    assert scan_orientation(ref_geom.direction).code == "RAS"
    codes = set()
    for perm, flips in VARIANTS:
        img = reoriented(base, perm, flips)
        arr, geom = sitk.GetArrayFromImage(img), Geometry.from_sitk(img)
        code = scan_orientation(geom.direction).code
        codes.add(code)
        turn = reorientation(code, "RAS")
        assert np.array_equal(turn.apply(arr), ref_arr)
        assert np.array_equal(turn.undo(turn.apply(arr)), arr)
        assert turn.geometry(geom, arr.shape).close_to(ref_geom)
        assert turn.shape(arr.shape) == ref_arr.shape and turn.spacing(geom.spacing) == ref_geom.spacing
        assert reorientation(code, code).identity
    assert len(codes) == 48
    assert transposed_code("LPS", (1, 0, 2)) == "LSP"
    assert Reorientation().identity and not reorientation("LPS", "RAS").identity
    assert volume_orientation({"direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}) == "LPS"
    assert volume_orientation({"orientation": "RAS", "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}) == "RAS"
    assert volume_orientation({}) is None


def test_scan_orientation_tilts_and_refusals() -> None:
    ras = np.diag([-1.0, -1.0, 1.0])
    assert scan_orientation(ras.ravel()).tilt == 0 and not scan_orientation(ras.ravel()).oblique
    tilted = scan_orientation((_rot_z(44) @ ras).ravel(), "t.nii")
    assert tilted.code == "RAS" and tilted.oblique and tilted.tilt == pytest.approx(44)
    assert scan_orientation((_rot_z(46) @ ras).ravel()).code in ("PLS", "ALS", "PRS", "ARS")
    with pytest.raises(DataError, match=r"t.nii: image axis x is 45.0 degrees"):
        scan_orientation((_rot_z(45) @ ras).ravel(), "t.nii")
    with pytest.raises(DataError, match="not orthonormal"):
        scan_orientation((1, 0.3, 0, 0, 1, 0, 0, 0, 1), "s.mha")
    with pytest.raises(DataError, match="9 finite"):
        scan_orientation((1, 0, 0))
