"""The tested run folders of a study as the aggregation reads them: :class:`RunResult` (one run's
configuration, test summary and results folder), found under ``OUT/runs`` or given, read, and checked to be
tested on the same classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from organseg.data.classes import check_same_classes
from organseg.errors import DataError
from organseg.results import ResultsSummary
from organseg.run import STUDY_RUNS, ResultsDir, RunDir
from organseg.study.comparison import SkippedRun
from organseg.study.grid import DEFAULT_SEED


@dataclass
class RunResult:
    """What the aggregation needs from one run folder."""

    run: RunDir
    model: str
    seed: int
    config: dict
    summary: ResultsSummary
    results: ResultsDir
    sweep: dict[str, Any] = field(default_factory=dict)
    folds: list[RunResult] = field(default_factory=list)  # a cross-validation's fold runs, pooled here

    @property
    def name(self) -> str:
        return cv_name(self.run.name) if self.folds else self.run.name

    @property
    def fold(self) -> int | None:
        return (self.config.get("data") or {}).get("fold")


def cv_name(run_name: str) -> str:
    """``unet__seed1234_fold3`` -> ``unet__seed1234``: the name of the pooled cross-validation of a seed."""
    head, sep, k = run_name.rpartition("_fold")
    return head if sep and k.isdigit() else run_name


def find_runs(out: str | Path) -> list[Path]:
    """Run folders (holding ``config.yaml``) under ``OUT/runs``."""
    base = Path(out) / STUDY_RUNS
    return sorted(p for p in base.iterdir() if RunDir(p).is_run()) if base.is_dir() else []


def read_runs(
    dirs: Sequence[Path], split: str, checkpoint: str, models: Sequence[str] | None
) -> tuple[list[RunResult], list[SkippedRun]]:
    """The tested runs among ``dirs`` (of ``models``), and the others as skipped records: untested, or tested
    otherwise than as they are now (:meth:`ResultsDir.stale`: another checkpoint, a part of the split).

    A folder named twice (the same path, or two paths of one folder: a symbolic link, ``runs/x`` and
    ``./runs/x``) is counted once, with a note: counting it twice would make one run two seeds."""
    runs, skipped = [], []
    seen: dict[str, Path] = {}
    for d in dirs:
        key = os.path.realpath(d)
        if key in seen:
            print(
                f"organseg compare: {d}: the run folder {seen[key]} again; counted once (duplicate dropped)",
                flush=True,
            )
            continue
        seen[key] = Path(d)
        run = RunDir(d)
        if not run.is_run():
            raise DataError(f"{d}: not a run folder (no config.yaml)")
        cfg = run.config
        model = str(cfg["model"].get("name"))
        if models is not None and model not in models:
            continue
        results = run.results(split, checkpoint)
        # Only a complete test of the checkpoint as it is now, on the whole split, is collected.
        again = f"`organseg test {d} --checkpoint {checkpoint} --split {split}`"
        if not results.exists():
            reason = f"no {results.summary_file}: test it with {again}"
        else:
            stale = results.stale(run.checkpoint(checkpoint), split=split)
            reason = (
                None
                if stale is None
                else (
                    f"{results.summary_file} is not the test of {checkpoint}.pt as it is now: {stale}; "
                    f"test it again with {again}"
                )
            )
        if reason is not None:
            print(f"organseg compare: skipping {d.name}: {reason}", flush=True)
            skipped.append({"run_dir": str(d), "reason": reason})
            continue
        seed = (cfg.get("train") or {}).get("seed", DEFAULT_SEED)
        runs.append(RunResult(run, model, int(seed), cfg, results.summary(), results))
    return runs, skipped


def common_class_names(runs: Sequence[RunResult]) -> list[str]:
    """The class names every run was tested on; DataError naming the first run tested on others."""
    class_names = runs[0].summary["class_names"]
    for r in runs[1:]:
        check_same_classes(
            r.summary["class_names"],
            class_names,
            source=r.results.summary_file,
            names_are="this run was tested on classes",
            expected_are=f"{runs[0].name} on",
            then="these runs were tested on different datasets",
        )
    return class_names
