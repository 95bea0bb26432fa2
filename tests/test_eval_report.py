"""Report pieces: case picking, colours, figures, training-curve input."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import PNG_MAGIC
from organseg.data.classes import ACDC_CLASSES, SYNAPSE_CLASSES
from organseg.evaluation.evaluate import EvaluationResult
from organseg.formatting import slice_caption
from organseg.prediction.predict import axial_axis, class_volumes, sidecar_path
from organseg.reporting.report import (
    OverlayCollector,
    _caption,
    colorize,
    load_overlays,
    plot_dice_bars,
    plot_overlays,
    plot_training_curves,
    representative,
)
from organseg.reporting.tables import dataset_kind, results_table


def test_representative_picks_best_median_worst() -> None:
    items = [{"dice": d} for d in (0.2, 0.9, 0.5, 0.7, 0.1)]
    assert [it["dice"] for it in representative(items)] == [0.9, 0.5, 0.1]
    assert [it["dice"] for it in representative(items[:2])] == [0.9, 0.2]
    assert representative([]) == []


def test_colorize_background_transparent() -> None:
    rgba = colorize(np.array([[0, 1], [2, 3]]), 4)
    assert rgba.shape == (2, 2, 4) and rgba[0, 0, 3] == 0 and (rgba[[0, 1, 1], [1, 0, 1], 3] == 1).all()
    assert len({tuple(rgba[i, j, :3]) for i, j in ((0, 1), (1, 0), (1, 1))}) == 3


def _result(class_names, n_cases: int = 3) -> EvaluationResult:
    rng = np.random.default_rng(0)
    c = len(class_names) - 1
    ref = np.stack([rng.random((c, 2)) * [1, 20] for _ in range(n_cases)])
    corr = ref.copy()
    corr[0, 0] = np.nan
    pres = np.ones((n_cases, c, 2), bool)
    pres[0, 0] = (True, False)
    return EvaluationResult(
        "test",
        tuple(class_names),
        [f"case{i}" for i in range(n_cases)],
        ref,
        corr,
        pres,
        [(3.0, 1.0, 1.0)] * n_cases,
    )


def test_tables_in_paper_order() -> None:
    assert dataset_kind(SYNAPSE_CLASSES) == "synapse" and dataset_kind(ACDC_CLASSES) == "acdc"
    assert dataset_kind(["background", "tumour"]) is None
    res = _result(SYNAPSE_CLASSES)
    table = results_table(res.summary(), "unet")
    header = table.splitlines()[0]
    assert header.startswith("| Method | DSC | HD95 | Aorta | Gallbladder | Kidney(L) | Kidney(R) | Liver |")
    ours = next(line for line in table.splitlines() if line.startswith("| ours, reference"))
    # Aorta is class 7 in the data: the first organ column is that class's mean DSC in %
    assert ours.split("|")[4].strip() == f"{100 * res.reference[:, 6, 0].mean():.2f}"
    delta = next(line for line in table.splitlines() if line.startswith("| Δ"))
    assert "U-Net" in delta
    assert f"{100 * res.reference[:, :, 0].mean() - 76.85:+.2f}" in delta
    assert "1 false positive(s)" in table
    generic = results_table(_result(["background", "a", "b"]).summary())
    assert "(paper)" not in generic and "| a | b |" in generic


def test_figures_are_written(tmp_path) -> None:
    res = _result(ACDC_CLASSES)
    assert plot_dice_bars(res.summary(), tmp_path / "bars.png", "swin_unet").read_bytes()[:8] == PNG_MAGIC
    from organseg.data.base import Volume

    collector = OverlayCollector()
    rng = np.random.default_rng(1)
    labels = []
    for i in range(4):
        label = np.zeros((3, 20, 24), np.int64)
        label[i % 3, 5:12, 6:15] = 1 + i % 3
        labels.append(label)
        vol = Volume(f"c{i}", rng.random((3, 20, 24)).astype(np.float32), label)
        collector(vol, label.astype(np.uint8), np.full((3, 2), 0.1 * i))
    assert [it["z"] for it in collector.items] == [0, 1, 2, 0]
    collector.save(tmp_path / "ov.npz")
    items = load_overlays(tmp_path / "ov.npz")
    assert [it["case"] for it in items] == ["c0", "c1", "c2", "c3"]
    # one slice caption everywhere: display number from 1 of the count, then the index in the file
    assert [(it["file_z"], it["count"]) for it in items] == [(0, 3), (1, 3), (2, 3), (0, 3)]
    assert _caption(items[1]) == slice_caption(1, 3, 1) == "slice 2 / 3 (file slice 1)"
    assert _caption({"z": 4, "count": -1, "file_z": -1}) == "slice 5"  # an overlay file of an older organseg
    np.testing.assert_array_equal(items[2]["label"], labels[2][2])  # the slice with the most foreground
    assert "label" not in collector.items[2]  # the slices went to disk as the cases came
    # a report reads the slices of the three cases it draws (best, median, worst), in case order
    picked = load_overlays(tmp_path / "ov.npz", only=3)
    assert [it["case"] for it in picked] == ["c0", "c1", "c3"]
    np.testing.assert_array_equal(picked[2]["pred"], items[3]["pred"])
    assert plot_overlays(items, ACDC_CLASSES, tmp_path / "ov.png").read_bytes()[:8] == PNG_MAGIC
    records = [
        {"kind": "train", "iter": i, "loss": 1 / (i + 1), "ce": 0.5, "dice": 0.5, "lr": 0.01}
        for i in range(5)
    ]
    records.append({"kind": "val", "epoch": 0, "mean_dice": 0.4, "per_class": {"RV": {"dice": 0.4}}})
    assert plot_training_curves(records, tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_training_curves([{"kind": "val", "mean_dice": 0.1}], tmp_path / "none.png") is None


def test_predict_helpers() -> None:
    assert axial_axis((1, 0, 0, 0, 1, 0, 0, 0, 1)) == 0
    assert axial_axis((-1, 0, 0, 0, -1, 0, 0, 0, 1)) == 0
    assert axial_axis((1, 0, 0, 0, 0, 1, 0, -1, 0)) == 1  # image y points head-foot: array axis 1
    assert axial_axis((0, 0, 1, 0, 1, 0, 1, 0, 0)) == 2
    vols = class_volumes(np.array([0, 1, 1, 2]), ["bg", "a", "b"], (2.0, 0.5, 0.5))
    assert [v["voxels"] for v in vols] == [1, 2, 1]
    assert vols[1]["volume_ml"] == pytest.approx(2 * 0.5 / 1000)
    assert sidecar_path("x/seg.nii.gz").name == "seg.json" and sidecar_path("seg.mha").name == "seg.json"
