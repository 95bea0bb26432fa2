"""Whether a reduced precision keeps the reference protocol's numbers: measured on a sample, never assumed.

``organseg test --precision auto`` picks bf16 where the hardware has fast bf16
(:func:`organseg.precision.resolve_precision`). bf16 logits round differently from fp32 ones, so a few
boundary voxels can change label. Before the run goes on in bf16, :func:`organseg.evaluation.evaluate_dataset`
predicts the **sample**, the split's first case (after ``--max-cases``; deterministic, no randomness), both in
bf16 and in fp32 (the batched fp32 path, whose predictions equal the reference loop's), and compares them with
:func:`agreement_record`.

**The fallback rule.** bf16 is kept when, on the sample, at least :data:`MIN_VOXEL_AGREEMENT` of the voxels
have the same label in both predictions **and** no foreground class's reference-protocol Dice (against the
ground truth) differs by more than :data:`MAX_DICE_DIFFERENCE`. Otherwise the whole run falls back to fp32
(the sample's fp32 prediction is kept, every other case is predicted in fp32) with a warning. The record goes
into ``summary.json["agreement"]`` either way (:class:`organseg.results.AgreementRecord`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from organseg.metrics import case_metrics
from organseg.results import AgreementRecord

#: The share of the sample's voxels that must have the same label in the reduced-precision and fp32 runs.
MIN_VOXEL_AGREEMENT = 0.999
#: The largest change of a class's reference-protocol Dice on the sample (0.005 = half a DSC point).
MAX_DICE_DIFFERENCE = 0.005


def agreement_record(
    case_id: str,
    precision: str,
    pred: np.ndarray,
    pred_fp32: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    seconds: float,
    seconds_fp32: float,
) -> AgreementRecord:
    """How ``pred`` (at ``precision``) agrees with ``pred_fp32`` on one case, and whether it passes the rule
    (module docstring). Dice is the reference protocol's (:func:`organseg.metrics.case_metrics`)."""
    if pred.shape != pred_fp32.shape:
        raise ValueError(f"predictions of shapes {pred.shape} and {pred_fp32.shape} cannot be compared")
    names = list(class_names[1:])
    differing = int(np.count_nonzero(pred != pred_fp32))
    voxels = int(pred.size)
    agree = 1.0 - differing / voxels if voxels else 1.0
    fast = case_metrics(pred, label, len(class_names))[:, 0]
    ref = case_metrics(pred_fp32, label, len(class_names))[:, 0]
    diff = fast - ref
    worst = float(np.abs(diff).max()) if diff.size else 0.0
    return {
        "case": str(case_id),
        "precision": precision,
        "voxels": voxels,
        "differing_voxels": differing,
        "voxel_agreement": agree,
        "dice_fp32": {n: float(v) for n, v in zip(names, ref, strict=True)},
        "dice": {n: float(v) for n, v in zip(names, fast, strict=True)},
        "dice_difference": {n: float(v) for n, v in zip(names, diff, strict=True)},
        "max_abs_dice_difference": worst,
        "seconds_fp32": round(float(seconds_fp32), 3),
        "seconds": round(float(seconds), 3),
        "min_voxel_agreement": MIN_VOXEL_AGREEMENT,
        "max_dice_difference": MAX_DICE_DIFFERENCE,
        "passed": bool(agree >= MIN_VOXEL_AGREEMENT and worst <= MAX_DICE_DIFFERENCE),
    }


def describe(record: AgreementRecord) -> str:
    """The record in one sentence, for the console, the warning and the report."""
    return (
        f"on case {record['case']}, {record['precision']} vs fp32: "
        f"{100 * record['voxel_agreement']:.3f} % of voxels equal ({record['differing_voxels']} differ), "
        f"largest per-class DSC change {record['max_abs_dice_difference']:.4f} "
        f"(fp32 if under {100 * record['min_voxel_agreement']:g} % or over {record['max_dice_difference']:g})"
    )
