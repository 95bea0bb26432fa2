"""Class orders and label maps: the single source of truth (reference_protocol.md §3.4)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from organseg.checkpoint import atomic_torch_save, make_checkpoint
from organseg.data.classes import (
    ACDC_CLASSES,
    ACDC_PAPER_COLUMNS,
    BTCV_CLASSES,
    BTCV_TO_SYNAPSE,
    SYNAPSE_CLASSES,
    SYNAPSE_PAPER_COLUMNS,
    TOTALSEG_TO_BTCV,
    check_same_classes,
    paper_columns,
    remap_labels,
    same_class_names,
    unknown_ids,
)
from organseg.errors import ConfigError, DataError
from organseg.inference.sources import load_members
from organseg.models import create_model


def test_synapse_index_order_and_paper_columns():
    assert SYNAPSE_CLASSES == (
        "background",
        "spleen",
        "right kidney",
        "left kidney",
        "gallbladder",
        "liver",
        "stomach",
        "aorta",
        "pancreas",
    )
    # The papers print Aorta, Gallbladder, Kidney(L), Kidney(R), Liver, Pancreas, Spleen, Stomach.
    assert [i for _, i in SYNAPSE_PAPER_COLUMNS] == [7, 4, 3, 2, 5, 8, 1, 6]
    for title, i in SYNAPSE_PAPER_COLUMNS:
        name = SYNAPSE_CLASSES[i].replace("left kidney", "kidney(l)").replace("right kidney", "kidney(r)")
        assert title.lower() == name


def test_btcv_map_matches_names():
    assert BTCV_TO_SYNAPSE == {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
    for btcv, syn in BTCV_TO_SYNAPSE.items():
        assert BTCV_CLASSES[btcv] == SYNAPSE_CLASSES[syn]
    dropped = {BTCV_CLASSES[i] for i in range(1, 14) if i not in BTCV_TO_SYNAPSE}
    assert dropped == {
        "esophagus",
        "inferior vena cava",
        "portal vein and splenic vein",
        "right adrenal gland",
        "left adrenal gland",
    }
    # TotalSegmentator -> BTCV lands on the same organ names (data README).
    assert {BTCV_CLASSES[b] for b in TOTALSEG_TO_BTCV.values()} == set(SYNAPSE_CLASSES[1:])


def test_paper_columns_per_dataset():
    assert paper_columns(SYNAPSE_CLASSES) == list(SYNAPSE_PAPER_COLUMNS)
    assert paper_columns([n.upper() for n in SYNAPSE_CLASSES]) == list(SYNAPSE_PAPER_COLUMNS)
    assert paper_columns(ACDC_CLASSES) == list(ACDC_PAPER_COLUMNS) == [("RV", 1), ("Myo", 2), ("LV", 3)]
    assert paper_columns(["background", "liver", "tumour"]) == [("liver", 1), ("tumour", 2)]
    assert paper_columns(["background"]) == []


def test_remap_labels_lut_and_edge_cases():
    btcv = np.arange(14).reshape(2, 7)
    out = remap_labels(btcv, BTCV_TO_SYNAPSE)
    assert out.dtype == np.uint8
    assert out.ravel().tolist() == [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0]
    # ids beyond the map become background; empty arrays pass through
    assert remap_labels(np.array([[200, 1]]), BTCV_TO_SYNAPSE).tolist() == [[0, 1]]
    assert remap_labels(np.zeros((0, 3), int), BTCV_TO_SYNAPSE).shape == (0, 3)
    # negative ids take the slow path and still map to the default
    assert remap_labels(np.array([-1, 11]), BTCV_TO_SYNAPSE).tolist() == [0, 8]


def test_unknown_ids_counts():
    label = np.array([0, 0, 1, 14, 14, 255])
    assert unknown_ids(label, range(14)) == {14: 2, 255: 1}
    assert unknown_ids(label, [0, 1, 14, 255]) == {}


def test_one_class_name_check_case_aside_and_empty_is_unknown():
    assert same_class_names(["Background", "rv", "MYO", "lv"], ACDC_CLASSES)
    assert not same_class_names(ACDC_CLASSES, ACDC_CLASSES[:3])
    assert not same_class_names(["a", "b"], ["b", "a"])
    check_same_classes(["background", "rv"], ("Background", "RV"), source="x", names_are="", expected_are="")
    check_same_classes([], ACDC_CLASSES, source="x", names_are="", expected_are="")  # an official checkpoint
    with pytest.raises(DataError) as err:
        check_same_classes(
            list(SYNAPSE_CLASSES[:3]),
            ACDC_CLASSES,
            source="run/last.pt",
            names_are="the run was trained on classes",
            expected_are="the dataset acdc has",
            then="use the run's dataset",
        )
    assert str(err.value) == (
        "run/last.pt: the run was trained on classes ['background', 'spleen', 'right kidney'], but the "
        "dataset acdc has ['background', 'RV', 'Myo', 'LV']: use the run's dataset"
    )
    with pytest.raises(ConfigError, match=r"^a\.pt: x \['a'\], but y \['b'\]$"):
        check_same_classes(["a"], ["b"], source="a.pt", names_are="x", expected_are="y", error=ConfigError)


def test_ensemble_members_of_other_classes_are_refused_naming_both(tmp_path):
    """One of the callers: ``predict`` / ``test`` with several networks (the others: test, train --resume,
    compare --collect)."""
    torch.manual_seed(0)
    paths = []
    for name, classes in (("a.pt", ["background", "liver", "spleen"]), ("b.pt", ["background", "RV", "LV"])):
        net = create_model("unet", num_classes=3, width=0.125)
        ckpt = make_checkpoint(
            net,
            model_name="unet",
            model_args={"num_classes": 3, "width": 0.125},
            class_names=classes,
            preprocessing={"kind": "minmax"},
        )
        atomic_torch_save(ckpt, tmp_path / name)
        paths.append(tmp_path / name)
    with pytest.raises(ConfigError) as err:
        load_members(paths, torch.device("cpu"))
    assert str(err.value) == (
        f"{paths[1]}: this ensemble member was trained on classes ['background', 'RV', 'LV'], but ensemble "
        f"member {paths[0]} on ['background', 'liver', 'spleen']"
    )
    same = shutil.copy(paths[0], tmp_path / "c.pt")
    assert len(load_members([paths[0], same], torch.device("cpu"))) == 2
