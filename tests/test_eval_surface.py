"""NSD and ASSD of the corrected protocol: equal to MONAI's ``compute_surface_dice`` and MedPy's ``assd``,
the corrected protocol's edge rules, and the one-pass call that shares HD95's distances."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from helpers import edge_cases, random_blobs
from organseg.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    case_metrics,
    case_metrics_all,
    surface_metrics,
)

medpy_binary = pytest.importorskip(
    "medpy.metric.binary", reason="MedPy (the 'test' extra) is the ASSD reference"
)


def monai_nsd(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing, tolerances) -> np.ndarray:
    """MONAI's NSD of classes 1.. (one-hot, background excluded); skips when MONAI is not installed."""
    pytest.importorskip("monai", reason="MONAI (the 'test' extra) is the NSD reference")
    import torch
    from monai.metrics import compute_surface_dice

    def onehot(lab: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([lab == c for c in range(num_classes)])[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks; the edge rules are tested below
        out = compute_surface_dice(
            onehot(pred), onehot(gt), list(tolerances), include_background=False, spacing=spacing
        )
    return out[0].double().numpy()


def expected_assd(pred: np.ndarray, gt: np.ndarray, c: int, spacing) -> float:
    p, g = pred == c, gt == c
    if not g.any() or not p.any():
        return math.nan
    return float(medpy_binary.assd(p, g, voxelspacing=spacing))


def check_against_references(pred, gt, num_classes, spacing, tolerances) -> None:
    ours = surface_metrics(pred, gt, num_classes, spacing, tolerance_mm=tolerances)
    tol = np.broadcast_to(np.asarray(tolerances, dtype=np.float64), (num_classes - 1,))
    nsd = monai_nsd(pred, gt, num_classes, spacing, tol)
    for c in range(1, num_classes):
        if not (gt == c).any():
            # Our rule: absent from the truth is not scored. MONAI: NaN when both are empty, 0 otherwise.
            assert np.isnan(ours[c - 1]).all()
            continue
        assert ours[c - 1, 0] == pytest.approx(nsd[c - 1], abs=1e-6), f"NSD class {c}"
        exp = expected_assd(pred, gt, c, spacing)
        if math.isnan(exp):
            assert math.isnan(ours[c - 1, 1]) and ours[c - 1, 0] == 0.0  # missed: NSD 0, ASSD not scored
        else:
            assert ours[c - 1, 1] == pytest.approx(exp, abs=1e-6), f"ASSD class {c}"


# The tolerances are kept away from distances that occur: MONAI compares float32 distances (from its own
# k-d tree on scaled coordinates) with the tolerance, we compare the exact float64 distance, so a distance
# within float32 rounding of the tolerance could count on one side only. Integer spacings with integer
# tolerances are exact on both sides and are tested too.
SPACINGS = [None, (1.0, 1.0, 1.0), (2.5, 0.7, 0.7), (5.0, 1.0, 0.5), (3.0, 0.78125, 0.8)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("spacing", SPACINGS, ids=str)
def test_random_volumes_equal_monai_and_medpy(seed: int, spacing) -> None:
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(3, 12)), int(rng.integers(8, 32)), int(rng.integers(8, 32)))
    num_classes = int(rng.integers(2, 5))
    gt = random_blobs(rng, shape, num_classes, int(rng.integers(1, 6)))
    pred = random_blobs(rng, shape, num_classes, int(rng.integers(0, 6)))
    if seed % 2 == 0:  # a near copy: most surface voxels within a small tolerance
        pred = np.roll(gt, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 3)))
        flips = rng.random(shape) < 0.02
        pred[flips] = rng.integers(0, num_classes, flips.sum())
    integral = spacing is None or all(float(s).is_integer() for s in spacing)
    for tol in [1.0, 2.0, 3.0] if integral else [1.37, 2.21, 4.03]:
        check_against_references(pred, gt, num_classes, spacing, tol)
    # per-class tolerances
    check_against_references(pred, gt, num_classes, spacing, [1.37 + 0.9 * k for k in range(num_classes - 1)])


@pytest.mark.parametrize("name", list(edge_cases()))
@pytest.mark.parametrize("spacing", [None, (3.0, 0.78125, 0.8)], ids=str)
def test_edge_case_shapes_equal_monai_and_medpy(name: str, spacing) -> None:
    pred, gt = edge_cases()[name]
    for tol in (0.0, 1.37, 2.21, 7.5):
        check_against_references(pred, gt, 2, spacing, tol)
        check_against_references(gt, pred, 2, spacing, tol)


def test_edge_rules_missed_absent_and_empty() -> None:
    gt = np.zeros((4, 16, 16), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:3, 2:8, 2:8] = 1
    pred[1:3, 2:8, 2:8] = 1  # class 1: identical -> NSD 1, ASSD 0
    pred[2, 12:14, 12:14] = 2  # class 2: only predicted -> not scored
    gt[0, 10:14, 1:4] = 3  # class 3: missed -> NSD 0, ASSD NaN; class 4: nowhere -> not scored
    m = surface_metrics(pred, gt, 5, (2.0, 1.0, 1.0))
    assert tuple(m[0]) == (1.0, 0.0)
    assert np.isnan(m[1]).all() and np.isnan(m[3]).all()
    assert m[2, 0] == 0.0 and math.isnan(m[2, 1])
    # the missed organ's NSD agrees with MONAI's, which sees a truth surface and no prediction
    assert monai_nsd(pred, gt, 5, (2.0, 1.0, 1.0), [1.0] * 4)[2] == 0.0
    # both maps empty
    empty = np.zeros((3, 4, 4), np.uint8)
    assert np.isnan(surface_metrics(empty, empty, 3, None)).all()


def test_tolerance_changes_nsd_not_assd() -> None:
    """Shifting a cube by one 3-mm slice: at 1 mm only the surface voxels unaffected by the shift count, at
    3 mm all do; ASSD does not depend on the tolerance."""
    gt = np.zeros((10, 12, 12), np.uint8)
    gt[2:6, 3:9, 3:9] = 1
    pred = np.roll(gt, 1, axis=0)
    spacing = (3.0, 1.0, 1.0)
    low = surface_metrics(pred, gt, 2, spacing, tolerance_mm=1.0)
    high = surface_metrics(pred, gt, 2, spacing, tolerance_mm=3.0)
    assert 0.0 < low[0, 0] < 1.0 and high[0, 0] == 1.0
    assert low[0, 1] == high[0, 1] > 0
    default = surface_metrics(pred, gt, 2, spacing)
    np.testing.assert_array_equal(default, surface_metrics(pred, gt, 2, spacing, DEFAULT_NSD_TOLERANCE_MM))


def test_one_pass_call_equals_separate_calls() -> None:
    """case_metrics_all's surface metrics are surface_metrics', and its HD95 is case_metrics' (shared
    distances change nothing)."""
    rng = np.random.default_rng(5)
    gt = random_blobs(rng, (8, 30, 28), 5, 6)
    pred = random_blobs(rng, (8, 30, 28), 5, 6)
    spacing = (2.5, 0.7, 0.7)
    tol = [1.0, 2.0, 3.0, 5.0]
    both = case_metrics_all(pred, gt, 5, spacing=spacing, tolerance_mm=tol)
    np.testing.assert_array_equal(both["surface"], surface_metrics(pred, gt, 5, spacing, tol))
    np.testing.assert_array_equal(both["corrected"], case_metrics(pred, gt, 5, "corrected", spacing))
    np.testing.assert_array_equal(both["reference"], case_metrics(pred, gt, 5))


def test_two_dimensional_maps() -> None:
    rng = np.random.default_rng(21)
    gt = random_blobs(rng, (40, 37), 3, 4)
    pred = random_blobs(rng, (40, 37), 3, 4)
    check_against_references(pred, gt, 3, (0.7, 1.3), 1.37)


def test_bad_tolerance_raises_clear_errors() -> None:
    gt = np.zeros((3, 6, 6), np.uint8)
    gt[1, 2:4, 2:4] = 1
    with pytest.raises(ValueError, match="one per foreground class"):
        surface_metrics(gt, gt, 3, None, tolerance_mm=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        surface_metrics(gt, gt, 3, None, tolerance_mm=-1.0)
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(gt, gt, 3, (1.0, 1.0), tolerance_mm=1.0)


def test_evaluate_dataset_writes_nsd_and_assd(tmp_path) -> None:
    """The corrected protocol's per-case files and summary carry NSD / ASSD equal to surface_metrics on the
    predictions, with the tolerance used, the slices and the prediction time."""
    import csv
    import json

    from helpers import tiny_swin
    from organseg.data.base import ArrayDataset, Volume
    from organseg.data.classes import ACDC_CLASSES
    from organseg.evaluation.evaluate import evaluate_dataset

    rng = np.random.default_rng(0)
    spacing = (2.5, 0.8, 0.7)
    vols = [
        Volume(
            f"case{i}",
            rng.random((3, 40, 48)).astype(np.float32),
            rng.integers(0, 4, (3, 40, 48)),
            spacing,
            {},
        )
        for i in range(2)
    ]
    ds = ArrayDataset([], {"test": vols}, class_names=ACDC_CLASSES)
    preds: list[np.ndarray] = []
    res = evaluate_dataset(
        tiny_swin(4),
        ds,
        "test",
        patch_size=64,
        progress=False,
        on_case=lambda v, p, m: preds.append(p),
        nsd_tolerance_mm=[1.0, 2.0, 3.0],
    )
    assert res.surface is not None and res.surface.shape == (2, 3, 2)
    for n, vol in enumerate(vols):
        expected = surface_metrics(preds[n], vol.label, 4, spacing, [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(res.surface[n], expected)
    paths = res.write(tmp_path)
    summary = json.loads(paths["summary"].read_text())
    corr = summary["corrected"]
    assert corr["nsd_tolerance"] == [1.0, 2.0, 3.0] and corr["assd_unit"] == "mm"
    per_class_nsd = [np.nanmean(res.surface[:, i, 0]) for i in range(3)]
    for i, name in enumerate(ACDC_CLASSES[1:]):
        assert corr["per_class"][name]["nsd"] == pytest.approx(per_class_nsd[i], abs=1e-12)
    assert corr["mean_nsd"] == pytest.approx(np.mean(per_class_nsd), abs=1e-12)
    assert summary["slices"] == 6 and summary["inference_seconds"] > 0
    # inference_seconds is rounded to the millisecond: per slice agrees with it up to 0.5 ms / 6 slices
    assert summary["inference_seconds_per_slice"] == pytest.approx(
        summary["inference_seconds"] / 6, rel=1e-2, abs=1e-4
    )
    rows = list(csv.DictReader(paths["per_case_csv"].open()))
    assert {"nsd_corrected", "assd_corrected"} <= set(rows[0])
    assert float(rows[0]["nsd_corrected"]) == pytest.approx(res.surface[0, 0, 0], abs=1e-12)
    case0 = json.loads(paths["per_case_json"].read_text())[0]
    assert set(case0["classes"][ACDC_CLASSES[1]]["corrected"]) == {"dice", "hd95", "nsd", "assd"}
    with pytest.raises(ValueError, match="one per foreground class"):
        evaluate_dataset(tiny_swin(4), ds, "test", patch_size=64, progress=False, nsd_tolerance_mm=[1.0, 2.0])
