"""Results tables in the papers' format, with the published rows beside ours.

Published numbers: Swin-Unet paper Table 1 (Synapse; DSC %, HD) and Table 2 (ACDC; DSC %), as transcribed in
``shared/spec/reference_protocol.md`` §5. Our rows are the reference protocol (comparable with the papers) and
the corrected protocol (HD95 in mm, absent organs excluded, missed organs counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from organseg.data.classes import ACDC_CLASSES, SYNAPSE_CLASSES, paper_columns, same_class_names
from organseg.formatting import num
from organseg.results import CorrectedSummary, ReferenceSummary, ResultsSummary

#: (column titles after the method, published rows). None = not reported.
SYNAPSE_PUBLISHED: dict[str, dict[str, float | None]] = {
    "U-Net": {
        "DSC": 76.85,
        "HD95": 39.70,
        "Aorta": 89.07,
        "Gallbladder": 69.72,
        "Kidney(L)": 77.77,
        "Kidney(R)": 68.60,
        "Liver": 93.43,
        "Pancreas": 53.98,
        "Spleen": 86.67,
        "Stomach": 75.58,
    },
    "TransUNet": {
        "DSC": 77.48,
        "HD95": 31.69,
        "Aorta": 87.23,
        "Gallbladder": 63.13,
        "Kidney(L)": 81.87,
        "Kidney(R)": 77.02,
        "Liver": 94.08,
        "Pancreas": 55.86,
        "Spleen": 85.08,
        "Stomach": 75.62,
    },
    "Swin-Unet": {
        "DSC": 79.13,
        "HD95": 21.55,
        "Aorta": 85.47,
        "Gallbladder": 66.53,
        "Kidney(L)": 83.28,
        "Kidney(R)": 79.61,
        "Liver": 94.29,
        "Pancreas": 56.58,
        "Spleen": 90.66,
        "Stomach": 76.60,
    },
}

ACDC_PUBLISHED: dict[str, dict[str, float | None]] = {
    "R50 U-Net": {"DSC": 87.55, "HD95": None, "RV": 87.10, "Myo": 80.63, "LV": 94.92},
    "TransUNet": {"DSC": 89.71, "HD95": None, "RV": 88.86, "Myo": 84.53, "LV": 95.73},
    "Swin-Unet": {"DSC": 90.00, "HD95": None, "RV": 88.55, "Myo": 85.62, "LV": 95.83},
}

PUBLISHED: dict[str, dict[str, Any]] = {
    "synapse": {
        "source": "Swin-Unet paper, Table 1 (Synapse; DSC %, HD)",
        "rows": SYNAPSE_PUBLISHED,
        # Which published row our networks are compared with.
        "model_row": {"swin_unet": "Swin-Unet", "unet": "U-Net"},
    },
    "acdc": {
        "source": "Swin-Unet paper, Table 2 (ACDC; DSC %; no HD reported)",
        "rows": ACDC_PUBLISHED,
        # The paper has no plain U-Net on ACDC; R50 U-Net is the closest published baseline.
        "model_row": {"swin_unet": "Swin-Unet", "unet": "R50 U-Net"},
    },
}


def dataset_kind(class_names: Sequence[str]) -> str | None:
    """ "synapse" or "acdc" when the class names are that dataset's, else None (no published rows)."""
    if same_class_names(class_names, SYNAPSE_CLASSES):
        return "synapse"
    if same_class_names(class_names, ACDC_CLASSES):
        return "acdc"
    return None


def columns(class_names: Sequence[str]) -> list[tuple[str, int]]:
    """(title, class index) of the organ columns, in the papers' order for Synapse and ACDC."""
    return list(paper_columns(class_names))


def _our_row(
    protocol_summary: ReferenceSummary | CorrectedSummary, class_names: Sequence[str]
) -> dict[str, float | None]:
    """A summary's values in table units: Dice in %, HD95 as is."""
    per_class = protocol_summary["per_class"]

    def pct(v: float | None) -> float | None:
        return None if v is None else 100.0 * v

    row: dict[str, float | None] = {
        "DSC": pct(protocol_summary["mean_dice"]),
        "HD95": protocol_summary["mean_hd95"],
    }
    for title, idx in columns(class_names):
        row[title] = pct(per_class[class_names[idx]]["dice"])
    return row


def results_table(summary: ResultsSummary, model_name: str | None = None, label: str = "ours") -> str:
    """A Markdown table (also readable on a console): published rows of the dataset, our reference-protocol
    and corrected-protocol rows, and our reference row minus the published row of the same network."""
    class_names = summary["class_names"]
    titles = ["DSC", "HD95"] + [t for t, _ in columns(class_names)]
    kind = dataset_kind(class_names)
    published = PUBLISHED[kind] if kind else None
    ref = _our_row(summary["reference"], class_names)
    corr = _our_row(summary["corrected"], class_names)
    unit = summary["corrected"].get("hd95_unit", "mm")
    lines = ["| Method | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]

    def add(name: str, row: dict[str, float | None]) -> None:
        lines.append(f"| {name} | " + " | ".join(num(row.get(t)) for t in titles) + " |")

    if published:
        for name, row in published["rows"].items():
            add(f"{name} (paper)", row)
    add(f"{label}, reference protocol (HD95 voxels)", ref)
    add(f"{label}, corrected protocol (HD95 {unit})", corr)
    target = published["model_row"].get(model_name or "") if published else None
    if target:
        paper = published["rows"][target]
        diff = {
            t: None if ref.get(t) is None or paper.get(t) is None else ref[t] - paper[t]  # type: ignore[operator]
            for t in titles
        }
        lines.append(
            f"| Δ {label} (reference) − {target} | " + " | ".join(num(diff[t], "+.2f") for t in titles) + " |"
        )
    notes = []
    if published:
        notes.append(f"Published rows: {published['source']}.")
    c = summary["corrected"]
    notes.append(
        f"Corrected protocol over {summary['cases']} cases: {c['missed']} missed organ(s) (Dice 0, no HD95), "
        f"{c['false_positive']} false positive(s) on absent organs and {c['absent']} absent organ(s), "
        "neither scored."
    )
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"
