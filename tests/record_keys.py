"""A written JSON file against its typed record (organseg's TypedDicts): each dict may hold only its record's
keys and must hold the required ones; over several files, :meth:`Keys.complete` asserts that every key of a
record was written by some writer. Together the two keep a record and its file from drifting apart.

The walkers (:func:`check_summary`, :func:`check_per_case`, :func:`check_sidecar`, :func:`check_comparison`)
visit every nested record of one file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from organseg.prediction.dicomseg import DicomSegRecord, SegmentRecord
from organseg.prediction.predict import ClassVolume, OrientationRecord, Sidecar, TurnRecord
from organseg.results import (
    CaseClass,
    CaseProtocol,
    CaseRecord,
    CorrectedCase,
    CorrectedClass,
    CorrectedSummary,
    ReferenceClass,
    ReferenceSummary,
    ResultsSummary,
)
from organseg.study import comparison as cmp
from organseg.study.comparison import Comparison


def all_keys(record: Any) -> frozenset[str]:
    return frozenset(record.__required_keys__ | record.__optional_keys__)


class Keys:
    """The keys seen per record."""

    def __init__(self) -> None:
        self.seen: dict[Any, set[str]] = {}

    def check(self, data: Mapping[str, Any], record: Any) -> Mapping[str, Any]:
        name = record.__name__
        assert isinstance(data, Mapping), f"{name}: expected a JSON object, got {type(data).__name__}"
        keys = set(data)
        missing = record.__required_keys__ - keys
        extra = keys - all_keys(record)
        assert not missing, f"{name}: the file lacks the required key(s) {sorted(missing)}"
        assert not extra, f"{name}: the file has key(s) the record does not declare: {sorted(extra)}"
        self.seen.setdefault(record, set()).update(keys)
        return data

    def complete(self, record: Any, but: Iterable[str] = ()) -> None:
        """Every key of ``record`` (less ``but``, written by writers another test runs) was seen."""
        unseen = all_keys(record) - set(but) - self.seen.get(record, set())
        assert not unseen, f"{record.__name__}: no file written here has {sorted(unseen)}"


def check_summary(keys: Keys, summary: Mapping[str, Any], record: Any = ResultsSummary) -> None:
    keys.check(summary, record)
    keys.check(summary["reference"], ReferenceSummary)
    keys.check(summary["corrected"], CorrectedSummary)
    for entry in summary["reference"]["per_class"].values():
        keys.check(entry, ReferenceClass)
    for entry in summary["corrected"]["per_class"].values():
        keys.check(entry, CorrectedClass)


def check_per_case(keys: Keys, records: list[Mapping[str, Any]]) -> None:
    assert isinstance(records, list) and records
    for rec in records:
        keys.check(rec, CaseRecord)
        for entry in rec["classes"].values():
            keys.check(entry, CaseClass)
            keys.check(entry["reference"], CaseProtocol)
            keys.check(entry["corrected"], CorrectedCase)


def check_sidecar(keys: Keys, info: Mapping[str, Any]) -> None:
    keys.check(info, Sidecar)
    keys.check(info["orientation"], OrientationRecord)
    if "turn" in info["orientation"]:
        keys.check(info["orientation"]["turn"], TurnRecord)
    for entry in info["classes"]:
        keys.check(entry, ClassVolume)
    if "dicom_seg" in info:
        keys.check(info["dicom_seg"], DicomSegRecord)
        for seg in info["dicom_seg"].get("segments", []):
            keys.check(seg, SegmentRecord)


def _protocols(keys: Keys, rec: Mapping[str, Any], reference: Any, corrected: Any, column: Any) -> None:
    keys.check(rec["reference"], reference)
    keys.check(rec["corrected"], corrected)
    if column is not None:
        for p in ("reference", "corrected"):
            for col in rec[p]["columns"].values():
                keys.check(col, column)


def check_comparison(keys: Keys, c: Mapping[str, Any]) -> None:
    keys.check(c, Comparison)
    keys.check(c["dataset"], cmp.DatasetRecord)
    for r in c["runs"]:
        keys.check(r, cmp.RunRecord)
        _protocols(keys, r, cmp.RunReference, cmp.RunCorrected, cmp.ColumnValues)
    for s in c["skipped"]:
        keys.check(s, cmp.SkippedRun)
    for g in c["groups"]:
        keys.check(g, cmp.GroupRecord)
        _protocols(keys, g, cmp.GroupReference, cmp.GroupCorrected, cmp.ColumnStats)
        for p in ("reference", "corrected"):
            for field in ("mean_dice", "mean_hd95", "mean_nsd", "mean_assd"):
                if field in g[p]:
                    keys.check(g[p][field], cmp.Stat)
    for r in c["relative"]:
        keys.check(r, cmp.RelativeRecord)
        _protocols(keys, r, cmp.Change, cmp.Change, None)
    for r in c["paired"]:
        keys.check(r, cmp.PairedRecord)
    keys.check(c["paired_settings"], cmp.PairedSettings)
    for r in c["ranking"]:
        keys.check(r, cmp.RankingRecord)
        keys.check(r["kendall_tau"], cmp.KendallSummary)
        for e in r["networks"]:
            keys.check(e, cmp.RankEntry)
    if c["published"] is not None:
        keys.check(c["published"], cmp.PublishedRecord)
    for r in c.get("folds", []):
        keys.check(r, cmp.FoldRow)
        _protocols(keys, r, cmp.FoldMeans, cmp.FoldMeans, None)
    if "cross_validation" in c:
        keys.check(c["cross_validation"], cmp.CrossValidationRecord)
        for s in c["cross_validation"]["spread"]:
            keys.check(s, cmp.FoldSpread)
            keys.check(s["mean_dice_across_folds"], cmp.Stat)
    keys.check(c["conditions"], cmp.ConditionsRecord)
    for m in c["conditions"]["models"].values():
        keys.check(m, cmp.ModelConditions)
    keys.check(c["efficiency"], cmp.EfficiencyRecord)
    keys.check(c["efficiency"]["settings"], cmp.EfficiencySettings)
    for p in c["efficiency"]["fraction"]:
        keys.check(p, cmp.FractionPoint)
    for curve in c["efficiency"]["learning"]:
        keys.check(curve, cmp.LearningCurve)
        for point in curve["points"]:
            keys.check(point, cmp.LearningPoint)


#: The records of comparison.json a plain study writes (no cross-validation, no swept training fraction,
#: no validation during training).
PLAIN_STUDY_RECORDS = (
    cmp.DatasetRecord,
    cmp.RunRecord,
    cmp.RunReference,
    cmp.RunCorrected,
    cmp.ColumnValues,
    cmp.GroupRecord,
    cmp.GroupReference,
    cmp.GroupCorrected,
    cmp.ColumnStats,
    cmp.Stat,
    cmp.RelativeRecord,
    cmp.Change,
    cmp.PairedRecord,
    cmp.PairedSettings,
    cmp.RankingRecord,
    cmp.RankEntry,
    cmp.KendallSummary,
    cmp.PublishedRecord,
    cmp.ConditionsRecord,
    cmp.ModelConditions,
    cmp.EfficiencyRecord,
    cmp.EfficiencySettings,
    cmp.LearningCurve,
)
