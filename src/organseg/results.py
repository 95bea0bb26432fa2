"""The records of a results folder's JSON files (:class:`organseg.run.ResultsDir`), field by field.

``summary.json`` is a :class:`ResultsSummary` (its protocol blocks :class:`ReferenceSummary` and
:class:`CorrectedSummary`), ``per_case.json`` a list of :class:`CaseRecord`. They are plain dicts at run time,
in the key order written; :mod:`organseg.evaluation.evaluate` writes them, the run folder, the reports, the
tables and the study read them. Nothing here imports the rest of the package, so every reader can.
"""

from __future__ import annotations

from typing import TypedDict


class ReferenceClass(TypedDict):
    """One organ under the reference protocol: the mean over the cases (every case counts, with the edge
    rules of :mod:`organseg.metrics`: (1, 0) for a prediction on an absent organ, (0, 0) for none)."""

    dice: float  #: Dice as a fraction
    hd95: float  #: HD95 in voxels


class ReferenceSummary(TypedDict):
    """``summary.json["reference"]``: ``test.py``'s aggregation (:func:`reference_summary`)."""

    mean_dice: float  #: the mean over the organs of ``per_class[*].dice``
    mean_hd95: float  #: the mean over the organs of ``per_class[*].hd95``
    hd95_unit: str  #: always ``"voxel"``
    per_class: dict[str, ReferenceClass]  #: by foreground class name, in class order


class _CorrectedClassCounts(TypedDict):
    #: the mean over the cases whose truth has the organ (a missed one counts 0); None where no case has it
    dice: float | None
    hd95: float | None  #: the mean over the cases where both have it; None where no case has both
    scored: int  #: cases where both have the organ
    missed: int  #: cases whose truth has it and the prediction not
    false_positive: int  #: cases whose prediction has it and the truth not (not scored)
    absent: int  #: cases where neither has it (not scored)


class CorrectedClass(_CorrectedClassCounts, total=False):
    """One organ under the corrected protocol. ``nsd`` and ``assd`` are there when the evaluation measured
    the surface metrics (every organseg test does): the means over the cases with a value, NSD as Dice
    (a missed organ counts 0), ASSD as HD95 (both must have the organ); None where no case has one."""

    nsd: float | None
    assd: float | None


class _CorrectedCore(TypedDict):
    mean_dice: float | None  #: the mean of the organs' ``dice`` over the organs that have one
    mean_hd95: float | None  #: the mean of the organs' ``hd95`` over the organs that have one
    hd95_unit: str  #: ``"mm"``, ``"voxel"`` or ``"mixed (mm where the case has a spacing)"``
    per_class: dict[str, CorrectedClass]  #: by foreground class name, in class order
    missed: int  #: (case, organ) pairs missed, over all organs
    false_positive: int  #: (case, organ) pairs predicted on an absent organ
    absent: int  #: (case, organ) pairs absent from both


class CorrectedSummary(_CorrectedCore, total=False):
    """``summary.json["corrected"]`` (:func:`corrected_summary`). With the surface metrics: ``mean_nsd`` and
    ``mean_assd`` (the means over the organs that have one), ``nsd_tolerance`` (one per foreground class, in
    the HD95 unit; None when not recorded) and ``assd_unit`` (the HD95 unit)."""

    mean_nsd: float | None
    mean_assd: float | None
    nsd_tolerance: list[float] | None
    assd_unit: str


class _SummaryCore(TypedDict):
    split: str  #: the dataset split tested (``test``, ``val``)
    cases: int  #: volumes tested
    #: distinct subjects (patients) among them; summaries written before organseg recorded subjects lack it
    #: (readers then count each volume as its subject)
    subjects: int
    class_names: list[str]  #: the dataset's classes, background first
    reference: ReferenceSummary
    corrected: CorrectedSummary
    seconds: float  #: evaluation wall time (prediction and metrics), 2 decimals


class ProtocolMeans(TypedDict, total=False):
    """A member's means under one protocol (the keys its summary block has of these three)."""

    mean_dice: float | None
    mean_hd95: float | None
    hd95_unit: str


class MemberSummary(TypedDict):
    """``members[k]`` of an ensemble's or TTA's ``summary.json``: one member tested alone."""

    checkpoint: str
    results_dir: str  #: the member's own results folder
    reference: ProtocolMeans
    corrected: ProtocolMeans


class AgreementRecord(TypedDict):
    """``summary.json["agreement"]``: a reduced precision chosen by ``--precision auto`` measured against the
    fp32 path (whose predictions equal the reference loop's) on a sample, the first case of the split
    (:mod:`organseg.evaluation.agreement`)."""

    case: str  #: the sample: the split's first case (after ``--max-cases``)
    precision: str  #: the precision checked (``bf16``)
    voxels: int  #: voxels of the sample
    differing_voxels: int  #: voxels whose label differs between the two predictions
    voxel_agreement: float  #: the share of equal voxels, 0..1
    dice_fp32: dict[str, float]  #: reference-protocol Dice per foreground class, fp32 prediction
    dice: dict[str, float]  #: the same of the ``precision`` prediction
    dice_difference: dict[str, float]  #: ``dice - dice_fp32`` per class
    max_abs_dice_difference: float
    seconds_fp32: float  #: predicting the sample in fp32
    seconds: float  #: predicting the sample at ``precision``
    min_voxel_agreement: float  #: the fallback rule's bounds (module constants when written)
    max_dice_difference: float
    passed: bool  #: False: the run fell back to fp32 for every case


class SummaryExtra(TypedDict, total=False):
    """The fields of ``summary.json`` that depend on who wrote it, in the order they are written.

    Timing, from :func:`evaluate_dataset` (absent in a result rebuilt from ``per_case.json``):
    ``slices`` (total), ``inference_seconds`` (prediction only, 3 decimals), ``inference_seconds_per_case``
    (4 decimals) and ``inference_seconds_per_slice`` (5 decimals).

    ``organseg test`` (:func:`organseg.evaluation.tester.run_test`): ``model_name`` (None for an official
    checkpoint), ``checkpoint`` (the path), ``data`` (the dataset root or name), ``precision``, ``device``,
    ``inference`` (``"batched (N slices)"`` or ``"reference loop"``), ``engine`` (``torch`` or
    ``onnxruntime``: an ONNX model), ``orientation`` (the network's
    orientation code; None: volumes as stored) and ``orientation_notes``; then what the results are of, so
    that they are reused only for the same (:meth:`organseg.run.ResultsDir.stale`): ``checkpoint_sha256`` (the
    SHA-256 of the checkpoint file tested; None for an ensemble or TTA), ``max_cases`` (the ``--max-cases``
    that cut the split short; None: the whole split)
    and ``data_fingerprint`` (the dataset's, :mod:`organseg.data.identity`; None when not recorded); with
    ``--ensemble`` or ``--tta`` also ``ensemble`` (every member's checkpoint path), ``tta`` and ``members``
    (each member tested alone: :class:`MemberSummary`). The precision fields: ``precision`` is the precision
    every case was predicted at; ``precision_requested`` the ``--precision`` given (``auto`` too),
    ``precision_choice`` why ``precision`` was used, in words, ``agreement`` the measured agreement of an
    ``auto`` choice of bf16 with fp32 (:class:`AgreementRecord`; None when nothing was checked) and
    ``precision_note`` the sentence the console and the report show.

    A cross-validation's pooled folds (:func:`organseg.study.crossval.pool_folds`, ``OUT/cv/<run>/``):
    ``pooled_folds`` (the fold run names), ``folds`` (k), ``checkpoint``, ``precision`` and ``data`` of the
    first fold, and the timing fields summed over the folds."""

    slices: int
    inference_seconds: float
    inference_seconds_per_case: float
    inference_seconds_per_slice: float
    model_name: str | None
    checkpoint: str | None
    data: str | None
    precision: str | None
    precision_requested: str
    precision_choice: str
    agreement: AgreementRecord | None
    precision_note: str
    device: str
    inference: str
    engine: str
    orientation: str | None
    orientation_notes: list[str]
    checkpoint_sha256: str | None
    max_cases: int | None
    data_fingerprint: str | None
    ensemble: list[str]
    tta: bool
    members: list[MemberSummary]
    pooled_folds: list[str]
    folds: int


class ResultsSummary(_SummaryCore, SummaryExtra):
    """``summary.json`` of a results folder: :meth:`EvaluationResult.summary` (the fields above
    ``SummaryExtra``'s, always there) followed by the writer's :class:`SummaryExtra` fields."""


class CaseProtocol(TypedDict):
    """One (case, organ) under one protocol."""

    dice: float | None  #: reference: always a number; corrected: None where the organ is not scored
    hd95: float | None  #: reference: voxels, always a number; corrected: in the summary's unit, or None


class CorrectedCase(CaseProtocol, total=False):
    """The corrected values of one (case, organ), with ``nsd`` and ``assd`` when surfaces were measured."""

    nsd: float | None
    assd: float | None


class CaseClass(TypedDict):
    """One organ of one case in ``per_case.json``."""

    reference: CaseProtocol
    corrected: CorrectedCase
    status: str  #: ``scored``, ``missed``, ``false_positive`` or ``absent``


class CaseRecord(TypedDict):
    """One case of ``per_case.json`` (:meth:`EvaluationResult.per_case`); the file is a list of them in the
    order the cases were tested. Files written before organseg recorded subjects lack ``subject``."""

    case: str
    subject: str  #: the case's subject (patient); the case itself when the dataset names none
    spacing: list[float] | None  #: (z, y, x) in mm; None without one (HD95 then in voxels)
    mean_dice_reference: float  #: the case's mean reference Dice over the organs
    mean_hd95_reference: float  #: the case's mean reference HD95 over the organs
    classes: dict[str, CaseClass]  #: by foreground class name, in class order
