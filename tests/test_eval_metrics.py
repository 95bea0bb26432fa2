"""Dice / HD95 under the reference and corrected protocols: golden numbers, MedPy itself, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from helpers import edge_cases, random_blobs
from organseg.evaluation.evaluate import corrected_summary, reference_summary
from organseg.metrics import _surface_points, case_metrics, case_metrics_all, dice, hd95, presence

medpy_binary = pytest.importorskip("medpy.metric.binary", reason="MedPy (the 'test' extra) is the reference")


def medpy_case(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """TransUNet / Swin-Unet ``calculate_metric_percase`` for classes 1.., written against MedPy."""
    out = []
    for i in range(1, num_classes):
        p, g = (pred == i).astype(np.uint8), (gt == i).astype(np.uint8)
        if p.sum() > 0 and g.sum() > 0:
            out.append((medpy_binary.dc(p, g), medpy_binary.hd95(p, g)))
        elif p.sum() > 0 and g.sum() == 0:
            out.append((1, 0))
        else:
            out.append((0, 0))
    return np.array(out, dtype=np.float64)


# ---------------------------------------------------------------- golden reference numbers


def test_golden_reference_metrics(golden_dir) -> None:
    ref = np.load(golden_dir / "metric_reference.npz")
    per_class = ref["per_class"]
    for k in range(per_class.shape[0]):
        pred, gt = ref[f"pred{k}"], ref[f"gt{k}"]
        ours = case_metrics(pred, gt, 9, protocol="reference")
        np.testing.assert_allclose(ours, per_class[k], rtol=0, atol=1e-6)
        # Same numbers through the plain (bounding-box EDT) path and through the combined call.
        for c in range(1, 9):
            if (pred == c).any() and (gt == c).any():
                assert dice(pred == c, gt == c) == pytest.approx(per_class[k, c - 1, 0], abs=1e-12)
                assert hd95(pred == c, gt == c) == pytest.approx(per_class[k, c - 1, 1], abs=1e-12)
        np.testing.assert_array_equal(case_metrics_all(pred, gt, 9)["reference"], ours)
    # The documented edge cases of the golden file.
    assert tuple(per_class[1, 2]) == (1.0, 0.0)  # case 1: organ 3 absent from the truth, predicted
    assert tuple(per_class[2, 4]) == (0.0, 0.0)  # case 2: organ 5 missed


# ---------------------------------------------------------------- MedPy itself


@pytest.mark.parametrize("seed", range(12))
def test_random_volumes_equal_medpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(3, 14)), int(rng.integers(8, 40)), int(rng.integers(8, 40)))
    num_classes = int(rng.integers(2, 6))
    gt = random_blobs(rng, shape, num_classes, int(rng.integers(1, 6)))
    pred = gt.copy() if seed % 3 == 0 else random_blobs(rng, shape, num_classes, int(rng.integers(0, 6)))
    if seed % 3 == 0:  # a perturbed copy: shifted, with a few flipped voxels
        pred = np.roll(pred, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 3)))
        flips = rng.random(shape) < 0.02
        pred[flips] = rng.integers(0, num_classes, flips.sum())
    expected = medpy_case(pred, gt, num_classes)
    np.testing.assert_array_equal(case_metrics(pred, gt, num_classes), expected)
    # other dtypes: int64 predictions, float32 truth (the reference's h5 labels are float32)
    other = case_metrics(pred.astype(np.int64), gt.astype(np.float32), num_classes)
    np.testing.assert_array_equal(other, expected)


@pytest.mark.parametrize("name", list(edge_cases()))
def test_edge_case_shapes_equal_medpy(name: str) -> None:
    pred, gt = edge_cases()[name]
    expected = medpy_case(pred, gt, 2)
    np.testing.assert_array_equal(case_metrics(pred, gt, 2), expected)
    assert hd95(pred, gt) == expected[0, 1]


@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.7), (5.0, 1.0, 0.5), (0.9, 0.9, 0.9), (3.0, 0.78125, 0.8)])
def test_corrected_hd95_in_mm_equals_medpy_voxelspacing(spacing) -> None:
    rng = np.random.default_rng(7)
    for _ in range(4):
        gt = random_blobs(rng, (8, 30, 28), 4, 4)
        pred = random_blobs(rng, (8, 30, 28), 4, 4)
        ours = case_metrics(pred, gt, 4, protocol="corrected", spacing=spacing)
        for c in range(1, 4):
            p, g = pred == c, gt == c
            if p.any() and g.any():
                expected = medpy_binary.hd95(p, g, voxelspacing=spacing)
                # Equal bit for bit unless two surface voxels tie in distance: then the last bit of the
                # sum of squares may differ.
                assert ours[c - 1, 1] == pytest.approx(expected, rel=1e-12, abs=0)
                assert hd95(p, g, spacing) == expected  # the plain path is MedPy's own arithmetic
                assert ours[c - 1, 0] == medpy_binary.dc(p, g)


def test_fast_path_equals_plain_path_with_stray_voxels() -> None:
    rng = np.random.default_rng(3)
    gt = random_blobs(rng, (12, 48, 48), 5, 6)
    pred = gt.copy()
    stray = rng.random(gt.shape) < 0.001  # far-away false positives that stretch the bounding box
    pred[stray] = rng.integers(1, 5, stray.sum())
    fast = case_metrics(pred, gt, 5)
    for c in range(1, 5):
        if (pred == c).any() and (gt == c).any():
            assert fast[c - 1, 1] == hd95(pred == c, gt == c)
            assert fast[c - 1, 0] == dice(pred == c, gt == c)


def test_two_dimensional_maps() -> None:
    rng = np.random.default_rng(11)
    gt = random_blobs(rng, (40, 37), 3, 4)
    pred = random_blobs(rng, (40, 37), 3, 4)
    np.testing.assert_array_equal(case_metrics(pred, gt, 3), medpy_case(pred, gt, 3))


# ---------------------------------------------------------------- protocol edge rules


def _absent_missed_case() -> tuple[np.ndarray, np.ndarray]:
    """class 1 both present; class 2 only predicted; class 3 only in the truth; class 4 nowhere."""
    gt = np.zeros((4, 16, 16), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:3, 2:8, 2:8] = 1
    pred[1:3, 3:9, 2:8] = 1
    pred[2, 12:14, 12:14] = 2
    gt[0, 10:14, 1:4] = 3
    return pred, gt


def test_reference_edge_rules() -> None:
    pred, gt = _absent_missed_case()
    m = case_metrics(pred, gt, 5, protocol="reference")
    assert m.shape == (4, 2)
    assert 0 < m[0, 0] < 1 and m[0, 1] > 0
    assert tuple(m[1]) == (1.0, 0.0)  # false positive on an absent organ scores as perfect
    assert tuple(m[2]) == (0.0, 0.0)  # a missed organ gets HD95 0
    assert tuple(m[3]) == (0.0, 0.0)  # both empty: Dice 0
    # spacing is ignored by the reference protocol (MedPy is called without one)
    np.testing.assert_array_equal(case_metrics(pred, gt, 5, "reference", spacing=(3.0, 1.0, 1.0)), m)


def test_corrected_rules() -> None:
    pred, gt = _absent_missed_case()
    spacing = (3.0, 0.5, 0.5)
    m = case_metrics(pred, gt, 5, protocol="corrected", spacing=spacing)
    assert m[0, 0] == case_metrics(pred, gt, 5)[0, 0]
    assert m[0, 1] == medpy_binary.hd95(pred == 1, gt == 1, voxelspacing=spacing)
    assert np.isnan(m[1]).all()  # absent organ, false positive: not scored
    assert m[2, 0] == 0.0 and np.isnan(m[2, 1])  # missed: Dice 0, no HD95
    assert np.isnan(m[3]).all()  # absent
    np.testing.assert_array_equal(
        presence(pred, gt, 5), [[True, True], [True, False], [False, True], [False, False]]
    )
    both = case_metrics_all(pred, gt, 5, spacing=spacing)
    np.testing.assert_array_equal(both["reference"], case_metrics(pred, gt, 5))
    np.testing.assert_array_equal(both["corrected"], m)
    # without a spacing the corrected HD95 is in voxels
    assert case_metrics(pred, gt, 5, "corrected")[0, 1] == case_metrics(pred, gt, 5)[0, 1]


def test_summaries_reference_and_corrected() -> None:
    pred, gt = _absent_missed_case()
    names = ["background", "a", "b", "c", "d"]
    cases = [case_metrics_all(pred, gt, 5, spacing=(1.0, 1.0, 1.0)), case_metrics_all(gt, gt, 5)]
    ref = np.stack([c["reference"] for c in cases])
    s = reference_summary(ref, names)
    assert s["mean_dice"] == pytest.approx(ref.mean(axis=0)[:, 0].mean())
    assert s["mean_hd95"] == pytest.approx(ref[:, :, 1].mean())
    assert s["per_class"]["b"]["dice"] == pytest.approx(0.5)  # (1 from the false positive + 0) / 2
    corr = np.stack([c["corrected"] for c in cases])
    pres = np.stack([c["presence"] for c in cases])
    cs = corrected_summary(corr, pres, names, "mm")
    assert cs["per_class"]["a"]["dice"] == pytest.approx((corr[0, 0, 0] + 1.0) / 2)
    assert cs["per_class"]["b"]["dice"] is None and cs["per_class"]["b"]["false_positive"] == 1
    # class c: missed in case 1 (Dice 0, no HD95), perfect in case 2 (Dice 1, HD95 0)
    assert cs["per_class"]["c"] == {
        "dice": 0.5,
        "hd95": 0.0,
        "scored": 1,
        "missed": 1,
        "false_positive": 0,
        "absent": 0,
    }
    assert cs["per_class"]["d"]["dice"] is None and cs["per_class"]["d"]["absent"] == 2
    assert (cs["missed"], cs["false_positive"], cs["absent"]) == (1, 1, 3)
    assert cs["mean_dice"] == pytest.approx(np.mean([cs["per_class"][n]["dice"] for n in "ac"]))


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors() -> None:
    a = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        case_metrics(a, np.zeros((3, 4, 5), np.uint8), 2)
    with pytest.raises(ValueError, match="negative"):
        case_metrics(a.astype(np.int64) - 1, a, 2)
    with pytest.raises(ValueError, match="non-integer"):
        case_metrics(a + 0.5, a, 2)
    with pytest.raises(ValueError, match="protocol"):
        case_metrics(a, a, 2, protocol="mm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        case_metrics(a, a, 1)
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(a, a, 2, protocol="corrected", spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(a, a, 2, protocol="corrected", spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="non-empty"):
        hd95(a, a)


def test_labels_beyond_num_classes_are_ignored_like_the_reference() -> None:
    gt = np.zeros((3, 10, 10), np.uint8)
    gt[1, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[0, 0, 0] = 7  # a label the reference never looks at
    m = case_metrics(pred, gt, 2)
    assert tuple(m[0]) == (1.0, 0.0)
    assert math.isclose(dice(pred == 1, gt == 1), 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_one_pass_surfaces_equal_erosion_surfaces(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    lab = random_blobs(rng, (7, 25, 19), 6, 8)
    struct = ndimage.generate_binary_structure(3, 1)
    for c, points in enumerate(_surface_points(lab, 6), start=1):
        mask = lab == c
        surface = mask ^ ndimage.binary_erosion(mask, structure=struct, iterations=1)
        fast = np.sort(np.ravel_multi_index(points.T, lab.shape))
        np.testing.assert_array_equal(np.flatnonzero(surface), fast)
