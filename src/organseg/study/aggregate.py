"""Aggregation: finished run folders -> the comparison dict (``comparison.json``), written with its tables and
figures by :func:`collect`.

Everything is read from files (each run's ``config.yaml`` and ``results/<split>_<checkpoint>/``, through
:class:`organseg.run.RunDir`), so runs trained anywhere are collected alike. What was swept is read back from
the configurations: the keys whose values differ between runs of the same network. Runs of one network with
the same swept values form a group; its numbers are the mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from organseg import __version__
from organseg.errors import ConfigError, DataError, OutputError
from organseg.fileio import check_output_dir
from organseg.formatting import fmt_value
from organseg.metrics import PROTOCOLS
from organseg.reporting.tables import PUBLISHED, columns, dataset_kind
from organseg.results import ResultsSummary
from organseg.run import STUDY_RUNS, RunDir
from organseg.study.comparison import (
    Comparison,
    CrossValidationRecord,
    FoldRow,
    GroupCorrected,
    GroupRecord,
    GroupReference,
    PublishedRecord,
    RelativeRecord,
    RunCorrected,
    RunRecord,
    RunReference,
    Stat,
)
from organseg.study.conditions import conditions
from organseg.study.cost import group_cost, run_cost
from organseg.study.crossval import pool_folds
from organseg.study.efficiency import add_efficiency
from organseg.study.figures import write_figures
from organseg.study.grid import NOT_SWEPT, freeze, short_keys
from organseg.study.outputs import write_comparison
from organseg.study.paired import PAIRS, study_paired
from organseg.study.ranking import DEFAULT_RESAMPLES as RANK_RESAMPLES
from organseg.study.ranking import study_ranking
from organseg.study.runs import RunResult, common_class_names, find_runs, read_runs
from organseg.training.config import RUNTIME_KEYS, TRAINER_KEYS, flatten

# Per protocol, the summary fields a run contributes, in comparison.json's order: "stats" fields are
# aggregated over seeds (:func:`_stats`), "first" fields (units, tolerances) are taken from the first run.
PROTOCOL_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "reference": (("stats", "mean_dice"), ("stats", "mean_hd95"), ("first", "hd95_unit")),
    "corrected": (
        ("stats", "mean_dice"),
        ("stats", "mean_hd95"),
        ("first", "hd95_unit"),
        ("stats", "mean_nsd"),
        ("stats", "mean_assd"),
        ("first", "nsd_tolerance"),
    ),
}
COLUMN_METRICS = ("dice", "hd95")  # per organ column


def fold_table(runs: Sequence[RunResult], model_order: Sequence[str]) -> list[FoldRow]:
    """``comparison.json["folds"]``: each fold run's own numbers on its held-out subjects, in model order."""
    rows = []
    for pooled in sorted(runs, key=lambda r: (list(model_order).index(r.model), r.seed)):
        for r in pooled.folds:
            rows.append(
                {
                    "model": r.model,
                    "seed": r.seed,
                    "sweep": dict(pooled.sweep),
                    "fold": r.fold,
                    "run": r.name,
                    "subjects": r.summary.get("subjects"),
                    "volumes": r.summary.get("cases"),
                    **{
                        p: {
                            "mean_dice": r.summary[p].get("mean_dice"),
                            "mean_hd95": r.summary[p].get("mean_hd95"),
                        }
                        for p in PROTOCOLS
                    },
                }
            )
    return rows


def cross_validation_record(out: Path, runs: Sequence[RunResult]) -> CrossValidationRecord:
    """``comparison.json["cross_validation"]``: folds, fold seed, subjects and volumes pooled, and the
    spread of each group's mean DSC across its folds (mean, sample std, min, max; reference protocol)."""
    pooled = [r for r in runs if r.folds]
    data = pooled[0].config.get("data") or {}
    spread = []
    for r in pooled:
        values = [f.summary["reference"].get("mean_dice") for f in r.folds]
        stats = _stats(values)
        finite = [float(v) for v in values if v is not None]
        spread.append(
            {
                "model": r.model,
                "seed": r.seed,
                "sweep": dict(r.sweep),
                "mean_dice_across_folds": stats,
                "min": min(finite) if finite else None,
                "max": max(finite) if finite else None,
            }
        )
    splits = out / "splits.json"
    return {
        "folds": int(data.get("folds") or len(pooled[0].folds)),
        "fold_seed": data.get("fold_seed"),
        "subjects": pooled[0].summary.get("subjects"),
        "volumes": pooled[0].summary.get("cases"),
        "splits_file": str(splits) if splits.is_file() else None,
        "spread": spread,
    }


def infer_sweep_keys(configs: Sequence[tuple[str, dict]]) -> list[str]:
    """Keys whose values differ between runs of the same network: what a study swept. ``configs`` are
    (model name, config) pairs; seeds, the model, runtime keys and the values train writes itself (the
    horizon each run fitted to its time budget: runs of one budget fit a few iterations apart) never count."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for model, cfg in configs:
        by_model.setdefault(model, []).append(flatten(cfg))
    keys: list[str] = []
    for flats in by_model.values():
        order = list(dict.fromkeys(k for f in flats for k in f))
        for k in order:
            if k in NOT_SWEPT or k in RUNTIME_KEYS or k in TRAINER_KEYS or k in keys:
                continue
            if len({freeze(f.get(k)) for f in flats}) > 1:
                keys.append(k)
    return keys


def _stats(values: Sequence[float | None]) -> Stat:
    """Mean and sample standard deviation (ddof 1; None for a single value) of the defined values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": float(np.mean(vals)),
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        "n": len(vals),
    }


def protocol_values(
    summary: ResultsSummary, protocol: str, cols: Sequence[tuple[str, int]]
) -> RunReference | RunCorrected:
    """A run's (mean, per-column) values under one protocol (:data:`PROTOCOL_FIELDS`); Dice as a fraction."""
    s = summary[protocol]
    names = summary["class_names"]
    per = s["per_class"]
    return {
        **{key: s.get(key) for _, key in PROTOCOL_FIELDS[protocol]},
        "columns": {t: {m: per[names[i]].get(m) for m in COLUMN_METRICS} for t, i in cols},
    }


def _group_protocol(
    vals: Sequence[RunReference | RunCorrected], protocol: str, titles: Sequence[str]
) -> GroupReference | GroupCorrected:
    """One group's block of one protocol from its runs' :func:`protocol_values`."""
    block: dict[str, Any] = {
        key: _stats([v[key] for v in vals]) if how == "stats" else vals[0][key]
        for how, key in PROTOCOL_FIELDS[protocol]
    }
    block["columns"] = {
        t: {m: _stats([v["columns"][t][m] for v in vals]) for m in COLUMN_METRICS} for t in titles
    }
    return block


def _label(model: str, sweep: dict[str, Any], short: dict[str, str]) -> str:
    return model + "".join(f", {short[k]}={fmt_value(v)}" for k, v in sweep.items())


def _synthetic(summary: ResultsSummary, cfg: dict) -> bool:
    for root in (summary.get("data"), (cfg.get("data") or {}).get("root")):
        if root and (Path(str(root)) / "SYNTHETIC.txt").is_file():
            return True
    return False


def _model_order(runs: Sequence[RunResult], models: Sequence[str] | None) -> list[str]:
    if models is not None:
        order = list(models)
    else:  # the U-Net first, as in the papers' tables: it is the baseline of the HD95 change
        order = sorted(dict.fromkeys(r.model for r in runs), key=lambda m: m != "unet")
    return [m for m in order if any(r.model == m for r in runs)]


def _groups(
    runs: Sequence[RunResult],
    model_order: Sequence[str],
    keys: Sequence[str],
    cols: Sequence[tuple[str, int]],
) -> list[GroupRecord]:
    """One group per (model, swept values), in model order then the order values first appear."""
    short = short_keys(keys)
    members_of: dict[tuple[str, str], list[RunResult]] = {}
    for m in model_order:
        for r in runs:
            if r.model == m:
                members_of.setdefault((m, freeze(r.sweep)), []).append(r)
    titles = [t for t, _ in cols]
    groups = []
    for (m, _), members in members_of.items():
        members.sort(key=lambda r: r.seed)
        groups.append(
            {
                "model": m,
                "sweep": dict(members[0].sweep),
                "label": _label(m, members[0].sweep, short),
                "n": len(members),
                "seeds": [r.seed for r in members],
                "runs": [r.name for r in members],
                **{
                    p: _group_protocol([protocol_values(r.summary, p, cols) for r in members], p, titles)
                    for p in PROTOCOLS
                },
            }
        )
    return groups


def _published(kind: str | None, baseline: str, model_order: Sequence[str]) -> PublishedRecord | None:
    """The paper's rows for this dataset, with their relative HD95 change against the baseline's row."""
    published = PUBLISHED.get(kind) if kind else None
    if not published:
        return None
    rows = published["rows"]
    pub = {"source": published["source"], "rows": rows, "model_row": published["model_row"]}
    base_row = rows.get(published["model_row"].get(baseline, ""), {})
    pub["relative_hd95"] = {
        m: (rows[r]["HD95"] - base_row["HD95"]) / base_row["HD95"]
        for m, r in published["model_row"].items()
        if m != baseline and m in model_order and base_row.get("HD95") and rows[r].get("HD95") is not None
    }
    return pub


def check_comparisons(
    models: Sequence[str], baseline: str | None, pairs: str, where: str = "--models"
) -> str:
    """The baseline of a study of ``models`` (those given, or found in the runs: ``where`` says which):
    ``baseline`` when given, else ``unet`` when present, else the first network. A ConfigError when
    ``baseline`` is not one of them, ``pairs`` is not one of :data:`PAIRS`, or ``--baseline`` / ``--pairs
    all`` is asked of fewer than two networks (there is nothing to compare)."""
    if pairs not in PAIRS:
        raise ConfigError(f"--pairs {pairs}: one of {', '.join(PAIRS)}")
    names = ", ".join(models) or "none"
    if baseline is not None and baseline not in models:
        raise ConfigError(f"--baseline {baseline}: not one of the networks ({where}: {names})")
    if len(models) < 2 and (baseline is not None or pairs != "baseline"):
        option = f"--baseline {baseline}" if baseline is not None else f"--pairs {pairs}"
        raise ConfigError(f"{option}: needs two networks or more to compare; {where}: {names} only")
    if baseline is not None:
        return baseline
    return "unet" if "unet" in models else models[0]


def _costs(groups: Sequence[GroupRecord], runs: Sequence[RunResult], n_classes: int) -> list[dict[str, Any]]:
    by_name = {r.name: r for r in runs}

    def one(name: str) -> dict[str, Any]:
        r = by_name[name]
        return run_cost(r.run.path, r.results.path, r.config, n_classes)

    # A cross-validation costs what its fold runs cost: each fold is a run.
    by_name.update({f.name: f for r in runs for f in r.folds})
    members = {r.name: [f.name for f in r.folds] or [r.name] for r in runs}
    return [
        group_cost(g["model"], g["label"], g["sweep"], [one(m) for n in g["runs"] for m in members[n]])
        for g in groups
    ]


def _check_out_outside_runs(out: Path, dirs: Sequence[Path]) -> None:
    """The comparison files may not go into a run folder being collected (nor below one): they would mix with
    the run's own files, and a later collect would read that folder as a study."""
    where = Path(os.path.realpath(out))
    for d in dirs:
        run = Path(os.path.realpath(d))
        if RunDir(d).is_run() and (where == run or run in where.parents):  # not a run: read_runs says so
            raise OutputError(
                f"--out {out}: is {'' if where == run else 'inside '}the run folder {d} being collected; "
                "write the comparison to a folder of its own"
            )


def collect(
    out: str | Path,
    run_dirs: Sequence[str | Path] | None = None,
    *,
    split: str | None = None,
    checkpoint: str = "last",
    sweep_keys: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    notes: Sequence[str] = (),
    failed: dict[str, str] | None = None,
    baseline: str | None = None,
    pairs: str = "baseline",
    rank_resamples: int = RANK_RESAMPLES,
) -> Comparison:
    """Aggregate finished run folders and write ``OUT/comparison.{md,json,csv}`` and the figures.

    ``run_dirs``: default every run folder in ``OUT/runs``. A run without
    ``results/<split>_<checkpoint>/summary.json`` is listed as skipped (with the command that tests it).
    ``sweep_keys``: default inferred (:func:`infer_sweep_keys`). ``models``: keep / order these networks.
    ``split``: default ``test``, or ``val`` (each fold's held-out subjects) for a cross-validation study,
    whose fold runs are pooled (:func:`pool_folds`). ``baseline``: the network the others are compared with
    (default ``unet`` when present, else the first network); ``pairs``: ``"baseline"`` (each network against
    it) or ``"all"`` (every pair) for the paired statistics (:func:`~organseg.study.paired.study_paired`);
    ``rank_resamples``: bootstrap resamples of the ranking (:mod:`~organseg.study.ranking`).
    """
    if pairs not in PAIRS:  # before any folder is read
        raise ConfigError(f"--pairs {pairs}: one of {', '.join(PAIRS)}")
    out = check_output_dir(out)
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else find_runs(out)
    if not dirs:
        raise DataError(f"{out / STUDY_RUNS}: no run folders (with config.yaml) to collect")
    _check_out_outside_runs(out, dirs)
    if split is None:
        folds = [(RunDir(d).config.get("data") or {}).get("fold") for d in dirs if RunDir(d).is_run()]
        cv = any(f is not None for f in folds)
        split = "val" if cv else "test"
    runs, skipped = read_runs(dirs, split, checkpoint, models)
    skipped = [{"run_dir": k, "reason": v} for k, v in (failed or {}).items()] + skipped
    if not runs:
        # The reason of the first (a stale result says what it is of) rather than only "no results".
        first = f"; {Path(skipped[-1]['run_dir']).name}: {skipped[-1]['reason']}" if skipped else ""
        raise DataError(
            f"{out}: none of the {len(dirs)} run folder(s) has {split}_{checkpoint} results "
            f"(test them with `organseg test RUN_DIR --checkpoint {checkpoint} --split {split}`){first}"
        )
    class_names = common_class_names(runs)
    keys = (
        list(sweep_keys) if sweep_keys is not None else infer_sweep_keys([(r.model, r.config) for r in runs])
    )
    for r in runs:
        flat = flatten(r.config)
        r.sweep = {k: flat.get(k) for k in keys}
    runs, cv_notes = pool_folds(out, runs, split)
    model_order = _model_order(runs, models)
    cols = columns(class_names)
    kind = dataset_kind(class_names)
    groups = _groups(runs, model_order, keys, cols)
    baseline = check_comparisons(model_order, baseline, pairs, where="the runs collected")
    results_dirs = {r.name: r.results.path for r in runs}
    paired, paired_settings, paired_notes = study_paired(
        groups, results_dirs, class_names, cols, baseline=baseline, pairs=pairs
    )
    ranking, ranking_notes = study_ranking(groups, results_dirs, class_names, cols, resamples=rank_resamples)
    comparison: Comparison = {
        "organseg": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "split": split,
        "checkpoint": checkpoint,
        "dataset": {
            "kind": kind,
            "class_names": list(class_names),
            "columns": [t for t, _ in cols],
            "synthetic": any(_synthetic(r.summary, r.config) for r in runs),
            "data": sorted({str(r.summary.get("data")) for r in runs}),
        },
        "models": model_order,
        "baseline": baseline,
        "sweep_keys": keys,
        "runs": [_run_record(x, cols) for r in runs for x in (r.folds or [r])],
        "skipped": skipped,
        "groups": groups,
        "relative": _relative_changes(groups, baseline),
        "paired": paired,
        "paired_settings": paired_settings,
        "ranking": ranking,
        "cost": _costs(groups, runs, len(class_names)),
        "published": _published(kind, baseline, model_order),
        "notes": [*notes, *cv_notes, *paired_notes, *ranking_notes],
    }
    if any(r.folds for r in runs):
        comparison["folds"] = fold_table(runs, model_order)
        comparison["cross_validation"] = cross_validation_record(out, runs)
    comparison["conditions"] = conditions(runs, split, checkpoint)
    comparison["figures"] = write_figures(out, comparison)
    add_efficiency(out, comparison)  # DSC against the data fraction, learning curves: figures and numbers
    write_comparison(out, comparison)
    return comparison


def _run_record(r: RunResult, cols: Sequence[tuple[str, int]]) -> RunRecord:
    train = r.run.summary()
    return {
        "name": r.name,
        "run_dir": str(r.run.path),
        "model": r.model,
        "seed": r.seed,
        "sweep": r.sweep,
        "iterations": train.iterations if train else None,
        "train_seconds": train.train_seconds if train else None,
        "stopped": train.stopped if train else None,
        "results_dir": str(r.results.path),
        "cases": r.summary.get("cases"),
        **{p: protocol_values(r.summary, p, cols) for p in PROTOCOLS},
    }


def _relative_changes(groups: Sequence[GroupRecord], baseline: str) -> list[RelativeRecord]:
    """Each network against the baseline at the same swept values: the seed write-up's relative HD95
    change ``(HD_other - HD_base) / HD_base`` and the DSC difference in points, per protocol."""
    out = []
    base = {freeze(g["sweep"]): g for g in groups if g["model"] == baseline}
    for g in groups:
        b = base.get(freeze(g["sweep"]))
        if g["model"] == baseline or b is None:
            continue
        rec: RelativeRecord = {"model": g["model"], "baseline": baseline, "sweep": g["sweep"]}
        for p in PROTOCOLS:
            hd, hd0 = g[p]["mean_hd95"]["mean"], b[p]["mean_hd95"]["mean"]
            d, d0 = g[p]["mean_dice"]["mean"], b[p]["mean_dice"]["mean"]
            rec[p] = {
                "hd95_change": None if hd is None or not hd0 else (hd - hd0) / hd0,
                "dice_points": None if d is None or d0 is None else 100.0 * (d - d0),
            }
        out.append(rec)
    return out
