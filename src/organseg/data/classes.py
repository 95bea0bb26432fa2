"""Class names, label-id maps and paper column orders: the single source of truth.

The Synapse class *index* order (what the TransUNet h5/npz files store) is not the order the papers print
their columns in; issues in the reference repositories argue about it. Everything in organseg that needs
either order imports it from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from organseg.errors import DataError, OrgansegError

# Index order of the TransUNet Synapse data (reference_protocol.md §3.4, SAMed mapping).
SYNAPSE_CLASSES: tuple[str, ...] = (
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

# (column title, class index) in the order the Swin-Unet / TransUNet tables print them.
SYNAPSE_PAPER_COLUMNS: tuple[tuple[str, int], ...] = (
    ("Aorta", 7),
    ("Gallbladder", 4),
    ("Kidney(L)", 3),
    ("Kidney(R)", 2),
    ("Liver", 5),
    ("Pancreas", 8),
    ("Spleen", 1),
    ("Stomach", 6),
)

# The 13 organ ids of the BTCV "Multi-Atlas Labeling Beyond the Cranial Vault" release.
BTCV_CLASSES: tuple[str, ...] = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal vein and splenic vein",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)

# BTCV id -> Synapse index. Ids 5, 9, 10, 12, 13 (esophagus, IVC, veins, adrenals) become background, as in
# the data the papers trained on.
BTCV_TO_SYNAPSE: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}

# TotalSegmentator v2 "total" ids of the eight Synapse organs -> BTCV ids (for building raw-BTCV-shaped cases
# from TotalSegmentator label maps; every other TotalSegmentator id is background).
TOTALSEG_TO_BTCV: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 7, 7: 11, 52: 8}

ACDC_CLASSES: tuple[str, ...] = ("background", "RV", "Myo", "LV")
ACDC_PAPER_COLUMNS: tuple[tuple[str, int], ...] = (("RV", 1), ("Myo", 2), ("LV", 3))


def same_class_names(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two lists name the same classes in the same order, case aside ("rv" is "RV"): the one
    comparison of a checkpoint's, a run's and a dataset's classes."""
    return [str(n).lower() for n in a] == [str(n).lower() for n in b]


def check_same_classes(
    names: Sequence[str] | None,
    expected: Sequence[str] | None,
    *,
    source: str | Path,
    names_are: str,
    expected_are: str,
    then: str = "",
    error: type[OrgansegError] = DataError,
) -> None:
    """Raise ``error`` when ``names`` (a checkpoint's, a run's classes) are not ``expected`` (the dataset's,
    another network's or run's) by :func:`same_class_names`. An empty list is unknown and agrees with any
    (an official Swin-Unet checkpoint names no classes). One message, naming the file and both lists:
    ``SOURCE: NAMES_ARE [names], but EXPECTED_ARE [expected]: THEN``."""
    if not names or not expected or same_class_names(names, expected):
        return
    consequence = f": {then}" if then else ""
    raise error(f"{source}: {names_are} {list(names)}, but {expected_are} {list(expected)}{consequence}")


def paper_columns(class_names: Sequence[str]) -> list[tuple[str, int]]:
    """Table columns (title, class index) for a dataset's class names.

    Synapse and ACDC get the papers' column order; any other dataset gets its foreground classes in index
    order, titled by their names.
    """
    names = tuple(str(n) for n in class_names)
    if same_class_names(names, SYNAPSE_CLASSES):
        return list(SYNAPSE_PAPER_COLUMNS)
    if same_class_names(names, ACDC_CLASSES):
        return list(ACDC_PAPER_COLUMNS)
    return [(name, i) for i, name in enumerate(names) if i > 0]


def remap_labels(label: np.ndarray, mapping: Mapping[int, int], *, default: int = 0) -> np.ndarray:
    """Map label ids through ``mapping`` (ids not in it become ``default``); returns uint8 when it fits.

    Callers check for unexpected ids first (see ``unknown_ids``): this function never fails on them.
    """
    label = np.asarray(label)
    if label.size == 0:
        return label.astype(np.uint8)
    lo, hi = int(label.min()), int(label.max())
    if lo >= 0 and hi < 65536:
        # A lookup table is one pass over the volume, much faster than one mask per id.
        lut = np.full(hi + 1, default, dtype=np.int64)
        for src, dst in mapping.items():
            if 0 <= src <= hi:
                lut[src] = dst
        out = lut[label]
    else:
        out = np.full(label.shape, default, dtype=np.int64)
        for src, dst in mapping.items():
            out[label == src] = dst
    top = max([default, *mapping.values()])
    return out.astype(np.uint8 if top < 256 else np.int64)


def unknown_ids(label: np.ndarray, known: Sequence[int] | set[int]) -> dict[int, int]:
    """{id: voxel count} of the ids in ``label`` that are not in ``known``."""
    values, counts = np.unique(np.asarray(label), return_counts=True)
    known = set(int(k) for k in known)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if int(v) not in known}
