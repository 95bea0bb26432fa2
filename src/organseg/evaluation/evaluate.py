"""Evaluate a network on a dataset split: per-case, per-class metrics under both protocols, and summaries.

The reference summary is TransUNet / Swin-Unet ``test.py``: the mean over cases of each class, then the mean
over classes (every case x class pair counts, the (1, 0) and (0, 0) edge entries included). The corrected
summary is documented in :func:`corrected_summary`; it also carries the surface metrics NSD and ASSD
(:func:`organseg.metrics.surface_metrics`), which the reference protocol does not have.

The files it writes are typed by :mod:`organseg.results`: ``summary.json`` a
:class:`~organseg.results.ResultsSummary`, ``per_case.json`` a list of :class:`~organseg.results.CaseRecord`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from organseg.data.base import SegmentationDataset, Volume
from organseg.errors import DataError
from organseg.evaluation.agreement import agreement_record, describe
from organseg.fileio import staged
from organseg.formatting import json_number
from organseg.inference.engine import predict_turned, volume_turn
from organseg.metrics import SURFACE_METRICS, case_metrics_all, nsd_tolerances
from organseg.progress import progress_bar
from organseg.results import (
    AgreementRecord,
    CaseClass,
    CaseRecord,
    CorrectedClass,
    CorrectedSummary,
    ReferenceSummary,
    ResultsSummary,
    SummaryExtra,
)
from organseg.run import ResultsDir

#: status of a (case, class) pair under the corrected protocol
SCORED, MISSED, FALSE_POSITIVE, ABSENT = "scored", "missed", "false_positive", "absent"


# ------------------------------------------------------------------------------------------- summaries


def _status(pred_present: bool, gt_present: bool) -> str:
    if gt_present:
        return SCORED if pred_present else MISSED
    return FALSE_POSITIVE if pred_present else ABSENT


def reference_summary(per_case: np.ndarray, class_names: Sequence[str]) -> ReferenceSummary:
    """``test.py``'s aggregation of a (cases, classes - 1, 2) reference array."""
    per_class = per_case.mean(axis=0)
    return {
        "mean_dice": float(per_class[:, 0].mean()),
        "mean_hd95": float(per_class[:, 1].mean()),
        "hd95_unit": "voxel",
        "per_class": {
            name: {"dice": float(d), "hd95": float(h)}
            for name, (d, h) in zip(class_names[1:], per_class, strict=True)
        },
    }


def _nanmean(x: np.ndarray) -> float:
    return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else math.nan


def corrected_summary(
    per_case: np.ndarray,
    presence_: np.ndarray,
    class_names: Sequence[str],
    hd95_unit: str,
    surface: np.ndarray | None = None,
    nsd_tolerance: Sequence[float] | None = None,
) -> CorrectedSummary:
    """Corrected aggregation of a (cases, classes - 1, 2) corrected array and its (cases, classes - 1, 2)
    presence flags (prediction present, ground truth present).

    * Per class: Dice is the mean over the cases whose ground truth has the organ (a missed organ counts 0);
      HD95 the mean over the cases where both have it. Cases without the organ are counted, not scored.
    * ``mean_dice`` / ``mean_hd95``: the mean of the per-class values over the classes that have one (as the
      papers' DSC column is the mean of the organ columns).
    * ``missed`` / ``false_positive`` / ``absent`` count (case, class) pairs per class and in total.
    * With ``surface`` (cases, classes - 1, 2) NSD and ASSD: the same means over the cases that have a value
      (NSD: the truth has the organ, a missed one counts 0, as Dice; ASSD: both have it, as HD95), per class
      and ``mean_nsd`` / ``mean_assd`` over the classes, with ``nsd_tolerance`` per class (HD95's unit).
    """
    names = list(class_names[1:])
    out_classes: dict[str, CorrectedClass] = {}
    dices, hds = [], []
    surface_means: dict[str, list[float]] = {m: [] for m in SURFACE_METRICS}
    totals = {MISSED: 0, FALSE_POSITIVE: 0, ABSENT: 0, SCORED: 0}
    for i, name in enumerate(names):
        d = per_case[:, i, 0]
        h = per_case[:, i, 1]
        dice = float(np.mean(d[~np.isnan(d)])) if np.any(~np.isnan(d)) else math.nan
        hd = float(np.mean(h[~np.isnan(h)])) if np.any(~np.isnan(h)) else math.nan
        counts = {SCORED: 0, MISSED: 0, FALSE_POSITIVE: 0, ABSENT: 0}
        for p, g in presence_[:, i]:
            counts[_status(bool(p), bool(g))] += 1
        for k, v in counts.items():
            totals[k] += v
        out_classes[name] = {"dice": json_number(dice), "hd95": json_number(hd), **counts}
        if surface is not None:
            for k, metric in enumerate(SURFACE_METRICS):
                value = _nanmean(surface[:, i, k])
                out_classes[name][metric] = json_number(value)
                surface_means[metric].append(value)
        if math.isfinite(dice):
            dices.append(dice)
        if math.isfinite(hd):
            hds.append(hd)
    out: CorrectedSummary = {
        "mean_dice": json_number(float(np.mean(dices))) if dices else None,
        "mean_hd95": json_number(float(np.mean(hds))) if hds else None,
        "hd95_unit": hd95_unit,
        "per_class": out_classes,
        "missed": totals[MISSED],
        "false_positive": totals[FALSE_POSITIVE],
        "absent": totals[ABSENT],
    }
    if surface is not None:
        for metric, values in surface_means.items():
            finite = [v for v in values if math.isfinite(v)]
            out[f"mean_{metric}"] = json_number(float(np.mean(finite))) if finite else None
        out["nsd_tolerance"] = None if nsd_tolerance is None else [float(t) for t in nsd_tolerance]
        out["assd_unit"] = hd95_unit
    return out


@dataclass
class EvaluationResult:
    """Metrics of one split. Arrays are (cases, classes - 1, 2): (Dice, HD95) per case and foreground class;
    ``presence`` holds (prediction has the class, ground truth has the class); ``surface`` (NSD, ASSD) of the
    corrected protocol at ``nsd_tolerance`` (one per foreground class); ``slices`` the slices of each case
    and ``inference_seconds`` the time spent predicting (``seconds`` adds the metrics)."""

    split: str
    class_names: tuple[str, ...]
    case_ids: list[str]
    reference: np.ndarray
    corrected: np.ndarray
    presence: np.ndarray
    spacings: list[tuple[float, float, float] | None]
    seconds: float = 0.0
    meta: SummaryExtra = field(default_factory=SummaryExtra)
    surface: np.ndarray | None = None
    nsd_tolerance: list[float] | None = None
    slices: list[int] | None = None
    inference_seconds: float | None = None
    subjects: list[str] | None = None  # the subject (patient) of each case; None: each case is one
    precision: str | None = None  # the precision every case was predicted at (after a fallback)
    agreement: AgreementRecord | None = None  # the sample's measured agreement (evaluate_dataset's check)

    @property
    def hd95_unit(self) -> str:
        has = {s is not None for s in self.spacings}
        if has == {True}:
            return "mm"
        return "voxel" if has <= {False} else "mixed (mm where the case has a spacing)"

    def summary(self) -> ResultsSummary:
        """Both protocols' summaries, JSON-ready (NaN written as null)."""
        return {
            "split": self.split,
            "cases": len(self.case_ids),
            "subjects": len(set(self.subject_ids)),
            "class_names": list(self.class_names),
            "reference": reference_summary(self.reference, self.class_names),
            "corrected": corrected_summary(
                self.corrected,
                self.presence,
                self.class_names,
                self.hd95_unit,
                self.surface,
                self.nsd_tolerance,
            ),
            "seconds": round(self.seconds, 2),
            **self._timing(),
            **self.meta,
        }

    @classmethod
    def from_per_case(
        cls,
        records: Sequence[CaseRecord],
        class_names: Sequence[str],
        split: str,
        nsd_tolerance: Sequence[float] | None = None,
    ) -> EvaluationResult:
        """The result whose :meth:`per_case` gave ``records`` (``per_case.json``): how a cross-validation's
        folds, each tested on its held-out subjects, are pooled into one result over every subject (the
        summaries are recomputed from the cases, never averaged over folds)."""
        names = list(class_names[1:])
        shape = (len(records), len(names), 2)
        reference, corrected = np.zeros(shape), np.full(shape, np.nan)
        presence = np.zeros(shape, bool)
        surface = np.full((len(records), len(names), len(SURFACE_METRICS)), np.nan)
        flags = {
            SCORED: (True, True),
            MISSED: (False, True),
            FALSE_POSITIVE: (True, False),
            ABSENT: (False, False),
        }
        for n, rec in enumerate(records):
            for i, name in enumerate(names):
                entry = rec["classes"][name]
                reference[n, i] = entry["reference"]["dice"], entry["reference"]["hd95"]
                corr = entry["corrected"]
                corrected[n, i] = [math.nan if corr.get(m) is None else corr[m] for m in ("dice", "hd95")]
                surface[n, i] = [math.nan if corr.get(m) is None else corr[m] for m in SURFACE_METRICS]
                presence[n, i] = flags[entry["status"]]
        first = records[0]["classes"][names[0]]["corrected"] if records and names else {}
        has_surface = any(m in first for m in SURFACE_METRICS)
        return cls(
            split=split,
            class_names=tuple(class_names),
            case_ids=[str(r["case"]) for r in records],
            reference=reference,
            corrected=corrected,
            presence=presence,
            spacings=[None if r.get("spacing") is None else tuple(r["spacing"]) for r in records],
            surface=surface if has_surface else None,
            nsd_tolerance=None if nsd_tolerance is None else list(nsd_tolerance),
            subjects=[str(r.get("subject", r["case"])) for r in records],
        )

    @property
    def subject_ids(self) -> list[str]:
        return list(self.subjects) if self.subjects is not None else list(self.case_ids)

    def _timing(self) -> SummaryExtra:
        """Slices and prediction time, for the cost table of ``organseg compare``."""
        out: SummaryExtra = {}
        if self.slices is not None:
            out["slices"] = int(sum(self.slices))
        if self.inference_seconds is not None:
            out["inference_seconds"] = round(self.inference_seconds, 3)
            if self.case_ids:
                out["inference_seconds_per_case"] = round(self.inference_seconds / len(self.case_ids), 4)
            if self.slices:
                out["inference_seconds_per_slice"] = round(self.inference_seconds / sum(self.slices), 5)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per (case, class): the per-case table written as CSV."""
        rows = []
        for n, case in enumerate(self.case_ids):
            for i, name in enumerate(self.class_names[1:]):
                p, g = self.presence[n, i]
                rows.append(
                    {
                        "case": case,
                        "class_index": i + 1,
                        "class": name,
                        "dice_reference": float(self.reference[n, i, 0]),
                        "hd95_reference": float(self.reference[n, i, 1]),
                        "dice_corrected": json_number(self.corrected[n, i, 0]),
                        "hd95_corrected": json_number(self.corrected[n, i, 1]),
                        **self._surface_cells(n, i, "{}_corrected"),
                        "status": _status(bool(p), bool(g)),
                    }
                )
        return rows

    def _surface_cells(self, n: int, i: int, key: str = "{}") -> dict[str, float | None]:
        if self.surface is None:
            return {}
        return {key.format(m): json_number(self.surface[n, i, k]) for k, m in enumerate(SURFACE_METRICS)}

    def per_case(self) -> list[CaseRecord]:
        """The per-case JSON: each case with its spacing, per-class values and its reference-style means."""
        out = []
        for n, case in enumerate(self.case_ids):
            classes: dict[str, CaseClass] = {}
            for i, name in enumerate(self.class_names[1:]):
                p, g = self.presence[n, i]
                r, c = self.reference[n, i], self.corrected[n, i]
                classes[name] = {
                    "reference": {"dice": float(r[0]), "hd95": float(r[1])},
                    "corrected": {
                        "dice": json_number(c[0]),
                        "hd95": json_number(c[1]),
                        **self._surface_cells(n, i),
                    },
                    "status": _status(bool(p), bool(g)),
                }
            sp = self.spacings[n]
            out.append(
                {
                    "case": case,
                    "subject": self.subject_ids[n],
                    "spacing": None if sp is None else [float(v) for v in sp],
                    "mean_dice_reference": float(self.reference[n, :, 0].mean()),
                    "mean_hd95_reference": float(self.reference[n, :, 1].mean()),
                    "classes": classes,
                }
            )
        return out

    def reference_log(self) -> str:
        """The lines the reference ``test.py`` logs, with its format strings, for side-by-side diffs."""
        # The reference's own %-format strings, kept verbatim so logs diff cleanly.
        lines = [f"{len(self.case_ids)} test iterations per epoch"]
        for n, case in enumerate(self.case_ids):
            m = self.reference[n].mean(axis=0)
            lines.append("idx %d case %s mean_dice %f mean_hd95 %f" % (n, case, m[0], m[1]))  # noqa: UP031
        per_class = self.reference.mean(axis=0)
        for i, (d, h) in enumerate(per_class):
            lines.append("Mean class %d mean_dice %f mean_hd95 %f" % (i + 1, d, h))  # noqa: UP031
        means = (per_class[:, 0].mean(), per_class[:, 1].mean())
        lines.append("Testing performance in best val model: mean_dice : %f mean_hd95 : %f" % means)  # noqa: UP031
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path, extra_summary: SummaryExtra | None = None) -> dict[str, Path]:
        """Write ``per_case.csv``, ``per_case.json``, ``reference_log.txt``, ``summary.json`` atomically, as
        one set: a full disk leaves the previous results folder as it was, not a mix of old and new files.
        ``summary.json`` comes last: it marks the results folder complete (:meth:`ResultsDir.exists`), so the
        caller writes every other file of the folder before this."""
        res = ResultsDir(folder)
        paths = {
            "per_case_csv": res.file(res.PER_CASE_CSV),
            "per_case_json": res.file(res.PER_CASE_JSON),
            "reference_log": res.file(res.REFERENCE_LOG),
            "summary": res.summary_file,
        }
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["case"], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        summary: ResultsSummary = {**self.summary(), **(extra_summary or {})}
        texts = [
            buf.getvalue(),
            json.dumps(self.per_case(), indent=1) + "\n",
            self.reference_log(),
            json.dumps(summary, indent=1) + "\n",
        ]
        with staged(*paths.values()) as temps:
            for tmp, text in zip(temps, texts, strict=True):
                tmp.write_text(text, encoding="utf-8")
        return paths


def evaluate_dataset(
    model: nn.Module,
    dataset: SegmentationDataset,
    split: str = "test",
    *,
    patch_size: int | Sequence[int] = 224,
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    reference_loop: bool = False,
    max_cases: int | None = None,
    progress: bool = True,
    on_case: Callable[[Volume, np.ndarray, np.ndarray], None] | None = None,
    nsd_tolerance_mm: float | Sequence[float] | None = None,
    orientation: str | None = None,
    agreement_check: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Predict every case of ``split`` and score it under both protocols.

    ``orientation``: the network's (its checkpoint's) orientation code. A volume whose orientation is known
    (:func:`organseg.imageio.orientation.volume_orientation`) and differs is turned to it before the network
    sees it and its label map turned back (exact), so predictions and metrics are on the volume's own grid.
    None gives every volume as stored.

    ``on_case(volume, prediction, reference_metrics)`` is called after each case (for saving NIfTI files or
    picking report slices) so predictions need not stay in memory. ``max_cases`` keeps the first N cases.
    ``nsd_tolerance_mm``: the NSD tolerance, one value or one per foreground class (default
    :data:`organseg.metrics.DEFAULT_NSD_TOLERANCE_MM`).

    ``agreement_check`` (with a ``precision`` other than fp32, batched): the first case is predicted at
    ``precision`` and in fp32 and compared (:mod:`organseg.evaluation.agreement`); when the comparison fails
    the fallback rule, the whole split is predicted in fp32 and ``on_warning`` gets the sentence that says so.
    The result's ``precision`` and ``agreement`` record what happened; ``inference_seconds`` counts the path
    used, not the check's second prediction (its time is in the record).
    """
    case_ids = dataset.case_ids(split)
    if max_cases is not None:
        case_ids = case_ids[:max_cases]
    if not case_ids:
        raise DataError(f"{dataset.location}: the {split!r} split has no cases")
    num_classes = dataset.num_classes
    tolerances = nsd_tolerances(nsd_tolerance_mm, num_classes)  # a bad value fails before any prediction
    ref, corr, pres, spacings, surf, slices = [], [], [], [], [], []
    infer_seconds = 0.0
    check = agreement_check and precision != "fp32" and not reference_loop
    agreement: AgreementRecord | None = None
    start = time.perf_counter()
    bar = progress_bar(case_ids, desc=f"{split} cases", unit="case", disable=not progress)
    for case_id in bar:
        vol = dataset.volume(case_id)
        if vol.label is None:
            where = vol.meta.get("source", case_id)
            raise DataError(f"{where}: case {case_id!r} has no label to evaluate against")
        turn = volume_turn(vol.meta, orientation, str(vol.meta.get("source", case_id)))
        t0 = time.perf_counter()
        pred = predict_turned(
            model, vol.image, turn, patch_size, batch_size, precision, device, reference_loop=reference_loop
        )
        seconds = time.perf_counter() - t0
        infer_seconds += seconds
        if check:
            check = False
            t0 = time.perf_counter()
            pred_fp32 = predict_turned(model, vol.image, turn, patch_size, batch_size, "fp32", device)
            seconds_fp32 = time.perf_counter() - t0
            agreement = agreement_record(
                case_id,
                precision,
                pred,
                pred_fp32,
                vol.label,
                dataset.class_names,
                seconds,
                seconds_fp32,
            )
            if not agreement["passed"]:
                # The rule failed on the sample: every case in fp32, this one's fp32 prediction included.
                precision, pred = "fp32", pred_fp32
                infer_seconds += seconds_fp32 - seconds
                if on_warning is not None:
                    on_warning(f"{describe(agreement)}: falling back to fp32 for the whole run")
        m = case_metrics_all(pred, vol.label, num_classes, spacing=vol.spacing, tolerance_mm=tolerances)
        r = m["reference"]
        ref.append(r)
        corr.append(m["corrected"])
        surf.append(m["surface"])
        slices.append(int(pred.shape[0]) if pred.ndim == 3 else 1)
        pres.append(m["presence"])
        spacings.append(None if vol.spacing is None else tuple(float(v) for v in vol.spacing))
        bar.set_postfix(dice=f"{r[:, 0].mean():.3f}")
        if on_case is not None:
            on_case(vol, pred, r)
    bar.close()
    shape = (0, num_classes - 1, 2)
    return EvaluationResult(
        split=split,
        class_names=tuple(dataset.class_names),
        case_ids=list(case_ids),
        reference=np.stack(ref) if ref else np.zeros(shape),
        corrected=np.stack(corr) if corr else np.zeros(shape),
        presence=np.stack(pres) if pres else np.zeros(shape, bool),
        spacings=spacings,
        seconds=time.perf_counter() - start,
        surface=np.stack(surf) if surf else np.zeros(shape),
        nsd_tolerance=[float(t) for t in tolerances],
        slices=slices,
        inference_seconds=infer_seconds,
        subjects=[dataset.subject_of(c) for c in case_ids],
        precision=precision,
        agreement=agreement,
    )
