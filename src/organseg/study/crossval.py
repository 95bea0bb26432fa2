"""Cross-validation studies: the fold runs of one network x swept values x seed pooled into one result over
every held-out subject (``OUT/cv/<model>__seed<N>/``), so a subject counts once, predicted by the fold model
that never saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from organseg.errors import DataError
from organseg.evaluation.evaluate import EvaluationResult
from organseg.results import CaseRecord, SummaryExtra
from organseg.run import ResultsDir
from organseg.study.grid import freeze
from organseg.study.paired import read_per_case
from organseg.study.runs import RunResult, cv_name

CV_DIR = "cv"  # a cross-validation study's pooled out-of-fold results: OUT/cv/<model>__seed<N>/


def pool_folds(out: Path, runs: Sequence[RunResult], split: str) -> tuple[list[RunResult], list[str]]:
    """Cross-validation: the fold runs of one network x swept values x seed become one result over every
    held-out subject (``OUT/cv/<model>__seed<N>/``: per_case.json and a summary recomputed from the pooled
    cases), so the tables and paired statistics count each subject once, predicted by the fold model that
    never saw it. Runs without ``data.fold`` pass through. Returns the runs and notes (missing folds)."""
    plain = [r for r in runs if r.fold is None]
    by_key: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in runs:
        if r.fold is not None:
            by_key.setdefault((r.model, freeze(r.sweep), r.seed), []).append(r)
    pooled, notes = [], []
    for members in by_key.values():
        members.sort(key=lambda r: int(r.fold or 0))
        first = members[0]
        k = int((first.config.get("data") or {}).get("folds") or len(members))
        have = [int(r.fold or 0) for r in members]
        if have != list(range(k)):
            notes.append(
                f"{cv_name(first.run.name)}: folds {have} of {k} are tested; the pooled results hold only "
                "their held-out subjects"
            )
        records: list[CaseRecord] = []
        seen: dict[str, str] = {}
        for r in members:
            for rec in read_per_case(r.results.path):
                case = str(rec["case"])
                if case in seen:
                    raise DataError(
                        f"{r.results.path}: case {case} is held out in {seen[case]} too: these runs are not "
                        "folds of one cross-validation"
                    )
                seen[case] = r.name
                records.append(rec)
        class_names = first.summary["class_names"]
        tolerance = (first.summary.get("corrected") or {}).get("nsd_tolerance")
        result = EvaluationResult.from_per_case(records, class_names, split, tolerance)
        folder = ResultsDir(out / CV_DIR / cv_name(first.run.name))
        timing = {
            key: sum(float(r.summary.get(key) or 0) for r in members)
            for key in ("inference_seconds", "slices")
        }
        extra: SummaryExtra = {
            "pooled_folds": [r.name for r in members],
            "folds": k,
            "checkpoint": first.summary.get("checkpoint"),
            "precision": first.summary.get("precision"),
            "data": first.summary.get("data"),
            "inference_seconds": round(timing["inference_seconds"], 3),
            "slices": int(timing["slices"]),
        }
        if records:
            extra["inference_seconds_per_case"] = round(timing["inference_seconds"] / len(records), 4)
        if timing["slices"]:
            extra["inference_seconds_per_slice"] = round(timing["inference_seconds"] / timing["slices"], 5)
        result.write(folder.path, extra)
        pooled.append(
            RunResult(
                first.run,
                first.model,
                first.seed,
                first.config,
                folder.summary(),
                folder,
                dict(first.sweep),
                folds=members,
            )
        )
    return plain + pooled, notes
