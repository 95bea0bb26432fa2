"""Class orders and label maps: the single source of truth (reference_protocol.md §3.4)."""

from __future__ import annotations

import numpy as np

from organseg.data.classes import (
    ACDC_CLASSES,
    ACDC_PAPER_COLUMNS,
    BTCV_CLASSES,
    BTCV_TO_SYNAPSE,
    SYNAPSE_CLASSES,
    SYNAPSE_PAPER_COLUMNS,
    TOTALSEG_TO_BTCV,
    paper_columns,
    remap_labels,
    unknown_ids,
)


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
