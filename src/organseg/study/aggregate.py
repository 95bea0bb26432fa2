"""Aggregation: finished run folders -> the comparison dict (``comparison.json``), written with its tables and
figures by :func:`collect`.

Everything is read from files (each run's ``config.yaml`` and ``results/<split>_<checkpoint>/``, through
:class:`organseg.run.RunDir`), so runs trained anywhere are collected alike. What was swept is read back from
the configurations: the keys whose values differ between runs of the same network. Runs of one network with
the same swept values form a group; its numbers are the mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from organseg import __version__
from organseg.data.classes import check_same_classes
from organseg.errors import DataError
from organseg.fileio import check_output_dir
from organseg.formatting import fmt_value
from organseg.metrics import PROTOCOLS
from organseg.run import STUDY_RUNS, ResultsDir, RunDir
from organseg.study.efficiency import add_efficiency
from organseg.study.figures import write_figures
from organseg.study.grid import DEFAULT_SEED, NOT_SWEPT, freeze, short_keys
from organseg.study.outputs import write_comparison

CV_DIR = "cv"  # a cross-validation study's pooled out-of-fold results: OUT/cv/<model>__seed<N>/

# Per protocol, the summary fields a run contributes, in comparison.json's order: "stats" fields are
# aggregated over seeds (:func:`_stats`), "first" fields (units, tolerances) are taken from the first run.
PROTOCOL_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "reference": (("stats", "mean_dice"), ("stats", "mean_hd95"), ("first", "hd95_unit")),
    "corrected": (("stats", "mean_dice"), ("stats", "mean_hd95"), ("first", "hd95_unit"),
                  ("stats", "mean_nsd"), ("stats", "mean_assd"), ("first", "nsd_tolerance")),
}  # fmt: skip
COLUMN_METRICS = ("dice", "hd95")  # per organ column


@dataclass
class RunResult:
    """What the aggregation needs from one run folder."""

    run: RunDir
    model: str
    seed: int
    config: dict
    summary: dict
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


def pool_folds(out: Path, runs: Sequence[RunResult], split: str) -> tuple[list[RunResult], list[str]]:
    """Cross-validation: the fold runs of one network x swept values x seed become one result over every
    held-out subject (``OUT/cv/<model>__seed<N>/``: per_case.json and a summary recomputed from the pooled
    cases), so the tables and paired statistics count each subject once, predicted by the fold model that
    never saw it. Runs without ``data.fold`` pass through. Returns the runs and notes (missing folds)."""
    from organseg.evaluation.evaluate import EvaluationResult
    from organseg.study.paired import read_per_case

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
        records: list[dict[str, Any]] = []
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
        timing = {key: sum(float(r.summary.get(key) or 0) for r in members)
                  for key in ("inference_seconds", "slices")}  # fmt: skip
        extra = {
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
            RunResult(first.run, first.model, first.seed, first.config, folder.summary(), folder,
                      dict(first.sweep), folds=members)
        )  # fmt: skip
    return plain + pooled, notes


def fold_table(runs: Sequence[RunResult], model_order: Sequence[str]) -> list[dict[str, Any]]:
    """``comparison.json["folds"]``: each fold run's own numbers on its held-out subjects, in model order."""
    rows = []
    for pooled in sorted(runs, key=lambda r: (list(model_order).index(r.model), r.seed)):
        for r in pooled.folds:
            rows.append({
                "model": r.model, "seed": r.seed, "sweep": dict(pooled.sweep), "fold": r.fold, "run": r.name,
                "subjects": r.summary.get("subjects"), "volumes": r.summary.get("cases"),
                **{p: {"mean_dice": r.summary[p].get("mean_dice"), "mean_hd95": r.summary[p].get("mean_hd95")}
                   for p in PROTOCOLS},
            })  # fmt: skip
    return rows


def cross_validation_record(out: Path, runs: Sequence[RunResult]) -> dict[str, Any]:
    """``comparison.json["cross_validation"]``: folds, fold seed, subjects and volumes pooled, and the
    spread of each group's mean DSC across its folds (mean, sample std, min, max; reference protocol)."""
    pooled = [r for r in runs if r.folds]
    data = pooled[0].config.get("data") or {}
    spread = []
    for r in pooled:
        values = [f.summary["reference"].get("mean_dice") for f in r.folds]
        stats = _stats(values)
        finite = [float(v) for v in values if v is not None]
        spread.append({
            "model": r.model, "seed": r.seed, "sweep": dict(r.sweep), "mean_dice_across_folds": stats,
            "min": min(finite) if finite else None, "max": max(finite) if finite else None,
        })  # fmt: skip
    splits = out / "splits.json"
    return {
        "folds": int(data.get("folds") or len(pooled[0].folds)),
        "fold_seed": data.get("fold_seed"),
        "subjects": pooled[0].summary.get("subjects"),
        "volumes": pooled[0].summary.get("cases"),
        "splits_file": str(splits) if splits.is_file() else None,
        "spread": spread,
    }


RISE_DSC = 0.005  # half a DSC point: a validation curve still rising by more is "still improving"
LOSS_DROP = 0.02  # a training loss 2 % lower in the last quarter than in the third is still falling


def still_improving(run: RunDir, iterations: int | None) -> tuple[bool | None, str]:
    """Whether a run was still improving at its end, and by which record: its validation mean DSC at the
    end against the last validation at or before 75 % of the run (rising by more than :data:`RISE_DSC`);
    without a validation there, its training loss over the last quarter against the third (falling by
    more than :data:`LOSS_DROP`); None when neither is recorded."""
    try:
        vals = [v for v in run.metrics("val") if v.get("mean_dice") is not None]
        if iterations and len(vals) >= 2:
            earlier = [v for v in vals[:-1] if v["iter"] <= 0.75 * iterations]
            if earlier:
                return vals[-1]["mean_dice"] - earlier[-1]["mean_dice"] > RISE_DSC, "validation DSC"
        train = [t for t in run.metrics("train") if t.get("loss") is not None]
    except DataError:
        return None, "no record"
    if train:
        end = train[-1]["iter"]
        third = [t["loss"] for t in train if 0.5 * end < t["iter"] <= 0.75 * end]
        last = [t["loss"] for t in train if t["iter"] > 0.75 * end]
        if third and last:
            return float(np.mean(last)) < (1 - LOSS_DROP) * float(np.mean(third)), "training loss"
    return None, "no record"


def conditions(runs: Sequence[RunResult], split: str, checkpoint: str) -> dict[str, Any]:
    """``comparison.json["conditions"]``: under which conditions the verdict holds, from the runs' own
    records: per network the training budget (minutes, iterations, epochs, images seen), initialisation,
    data fraction, device, and the runs still improving at their end; for the study the split or folds
    and what chose the checkpoint."""
    if checkpoint == "best":
        selection = "best.pt, chosen on the validation split" + (
            " — the split these numbers are from, so they are optimistic" if split == "val" else ""
        )
    elif checkpoint == "last":
        selection = "last.pt, chosen by no data (the end of the schedule)"
    else:
        selection = f"{checkpoint}.pt, a fixed epoch"
    models: dict[str, dict[str, Any]] = {}
    for r in runs:
        for member in r.folds or [r]:
            m = models.setdefault(member.model, {"runs": [], "improving": [], "evidence": set()})
            summary = member.run.summary()
            seconds = summary.train_seconds if summary else None
            env = member.run.env()
            train = member.config.get("train") or {}
            iters = summary.iterations if summary else None
            improving, evidence = still_improving(member.run, iters)
            m["runs"].append({
                "minutes": None if seconds is None else seconds / 60,
                "iterations": iters, "epochs": summary.epochs if summary else None,
                "images": None if iters is None else iters * int(train.get("batch_size") or 0),
                "device": env.device_name or env.device if env else None,
                "threads": env.torch_threads if env else None,
                "init": (member.config.get("model") or {}).get("pretrained") or "scratch",
                "fraction": (member.config.get("data") or {}).get("train_fraction") or 1.0,
                "budget_min": train.get("time_budget_min"), "precision": train.get("precision"),
            })  # fmt: skip
            if improving:
                m["improving"].append(member.name)
            m["evidence"].add(evidence)
    out = {}
    for model, m in models.items():
        rows = m["runs"]

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
            vals = [x[key] for x in rows if x[key] is not None]
            return float(np.mean(vals)) if vals else None

        out[model] = {
            "runs": len(rows),
            "train_minutes": mean("minutes"), "iterations": mean("iterations"), "epochs": mean("epochs"),
            "images_seen": mean("images"),
            "time_budget_min": sorted({x["budget_min"] for x in rows if x["budget_min"] is not None}),
            "init": sorted({str(x["init"]) for x in rows}),
            "train_fraction": sorted({float(x["fraction"]) for x in rows}),
            "device": sorted({str(x["device"]) for x in rows if x["device"]}),
            "threads": sorted({int(x["threads"]) for x in rows if x["threads"]}),
            "precision": sorted({str(x["precision"]) for x in rows if x["precision"]}),
            "still_improving": m["improving"],
            "improving_by": sorted(m["evidence"]),
        }  # fmt: skip
    folds = sorted({int(f.config["data"]["folds"]) for r in runs for f in r.folds}) or None
    return {"split": split, "checkpoint": checkpoint, "selection": selection, "folds": folds, "models": out}


def find_runs(out: str | Path) -> list[Path]:
    """Run folders (holding ``config.yaml``) under ``OUT/runs``."""
    base = Path(out) / STUDY_RUNS
    return sorted(p for p in base.iterdir() if RunDir(p).is_run()) if base.is_dir() else []


def _flat(cfg: dict) -> dict[str, Any]:
    from organseg.training.config import flatten

    return flatten(cfg)


def infer_sweep_keys(configs: Sequence[tuple[str, dict]]) -> list[str]:
    """Keys whose values differ between runs of the same network: what a study swept. ``configs`` are
    (model name, config) pairs; seeds, the model and runtime keys never count."""
    from organseg.training.config import RUNTIME_KEYS

    by_model: dict[str, list[dict[str, Any]]] = {}
    for model, cfg in configs:
        by_model.setdefault(model, []).append(_flat(cfg))
    keys: list[str] = []
    for flats in by_model.values():
        order = list(dict.fromkeys(k for f in flats for k in f))
        for k in order:
            if k in NOT_SWEPT or k in RUNTIME_KEYS or k in keys:
                continue
            if len({freeze(f.get(k)) for f in flats}) > 1:
                keys.append(k)
    return keys


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; None for a single value) of the defined values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": float(np.mean(vals)),
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        "n": len(vals),
    }


def protocol_values(summary: dict, protocol: str, cols: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """A run's (mean, per-column) values under one protocol (:data:`PROTOCOL_FIELDS`); Dice as a fraction."""
    s = summary[protocol]
    names = summary["class_names"]
    per = s["per_class"]
    return {
        **{key: s.get(key) for _, key in PROTOCOL_FIELDS[protocol]},
        "columns": {t: {m: per[names[i]].get(m) for m in COLUMN_METRICS} for t, i in cols},
    }


def _group_protocol(vals: Sequence[dict[str, Any]], protocol: str, titles: Sequence[str]) -> dict[str, Any]:
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


def _synthetic(summary: dict, cfg: dict) -> bool:
    for root in (summary.get("data"), (cfg.get("data") or {}).get("root")):
        if root and (Path(str(root)) / "SYNTHETIC.txt").is_file():
            return True
    return False


def _read_runs(
    dirs: Sequence[Path], split: str, checkpoint: str, models: Sequence[str] | None
) -> tuple[list[RunResult], list[dict[str, str]]]:
    """The tested runs among ``dirs`` (of ``models``), and the untested ones as skipped records."""
    runs, skipped = [], []
    for d in dirs:
        run = RunDir(d)
        if not run.is_run():
            raise DataError(f"{d}: not a run folder (no config.yaml)")
        cfg = run.config
        model = str(cfg["model"].get("name"))
        if models is not None and model not in models:
            continue
        results = run.results(split, checkpoint)
        if not results.exists():
            reason = (
                f"no {results.summary_file}: test it with "
                f"`organseg test {d} --checkpoint {checkpoint} --split {split}`"
            )
            print(f"organseg compare: skipping {d.name}: {reason}", flush=True)
            skipped.append({"run_dir": str(d), "reason": reason})
            continue
        seed = (cfg.get("train") or {}).get("seed", DEFAULT_SEED)
        runs.append(RunResult(run, model, int(seed), cfg, results.summary(), results))
    return runs, skipped


def _check_same_classes(runs: Sequence[RunResult]) -> list[str]:
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
) -> list[dict[str, Any]]:
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
        groups.append({
            "model": m,
            "sweep": dict(members[0].sweep),
            "label": _label(m, members[0].sweep, short),
            "n": len(members),
            "seeds": [r.seed for r in members],
            "runs": [r.name for r in members],
            **{p: _group_protocol([protocol_values(r.summary, p, cols) for r in members], p, titles)
               for p in PROTOCOLS},
        })  # fmt: skip
    return groups


def _published(kind: str | None, baseline: str, model_order: Sequence[str]) -> dict[str, Any] | None:
    """The paper's rows for this dataset, with their relative HD95 change against the baseline's row."""
    from organseg.reporting.tables import PUBLISHED

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


def _costs(groups: Sequence[dict[str, Any]], runs: Sequence[RunResult], n_classes: int) -> list[dict]:
    from organseg.study.cost import group_cost, run_cost

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
) -> dict[str, Any]:
    """Aggregate finished run folders and write ``OUT/comparison.{md,json,csv}`` and the figures.

    ``run_dirs``: default every run folder in ``OUT/runs``. A run without
    ``results/<split>_<checkpoint>/summary.json`` is listed as skipped (with the command that tests it).
    ``sweep_keys``: default inferred (:func:`infer_sweep_keys`). ``models``: keep / order these networks.
    ``split``: default ``test``, or ``val`` (each fold's held-out subjects) for a cross-validation study,
    whose fold runs are pooled (:func:`pool_folds`).
    """
    from organseg.reporting.tables import columns, dataset_kind
    from organseg.study.paired import study_paired
    out = check_output_dir(out)
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else find_runs(out)
    if not dirs:
        raise DataError(f"{out / STUDY_RUNS}: no run folders (with config.yaml) to collect")
    if split is None:
        folds = [(RunDir(d).config.get("data") or {}).get("fold") for d in dirs if RunDir(d).is_run()]
        cv = any(f is not None for f in folds)
        split = "val" if cv else "test"
    runs, skipped = _read_runs(dirs, split, checkpoint, models)
    skipped = [{"run_dir": k, "reason": v} for k, v in (failed or {}).items()] + skipped
    if not runs:
        raise DataError(
            f"{out}: none of the {len(dirs)} run folder(s) has {split}_{checkpoint} results "
            f"(test them with `organseg test RUN_DIR --checkpoint {checkpoint} --split {split}`)"
        )
    class_names = _check_same_classes(runs)
    keys = (
        list(sweep_keys) if sweep_keys is not None else infer_sweep_keys([(r.model, r.config) for r in runs])
    )
    for r in runs:
        flat = _flat(r.config)
        r.sweep = {k: flat.get(k) for k in keys}
    runs, cv_notes = pool_folds(out, runs, split)
    model_order = _model_order(runs, models)
    cols = columns(class_names)
    kind = dataset_kind(class_names)
    groups = _groups(runs, model_order, keys, cols)
    baseline = "unet" if "unet" in model_order else model_order[0]
    paired, paired_settings, paired_notes = study_paired(
        groups, {r.name: r.results.path for r in runs}, class_names, cols
    )
    comparison: dict[str, Any] = {
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
        "cost": _costs(groups, runs, len(class_names)),
        "published": _published(kind, baseline, model_order),
        "notes": [*notes, *cv_notes, *paired_notes],
    }
    if any(r.folds for r in runs):
        comparison["folds"] = fold_table(runs, model_order)
        comparison["cross_validation"] = cross_validation_record(out, runs)
    comparison["conditions"] = conditions(runs, split, checkpoint)
    comparison["figures"] = write_figures(out, comparison)
    add_efficiency(out, comparison)  # DSC against the data fraction, learning curves: figures and numbers
    write_comparison(out, comparison)
    return comparison


def _run_record(r: RunResult, cols: Sequence[tuple[str, int]]) -> dict[str, Any]:
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


def _relative_changes(groups: Sequence[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each network against the baseline at the same swept values: the seed write-up's relative HD95
    change ``(HD_other - HD_base) / HD_base`` and the DSC difference in points, per protocol."""
    out = []
    base = {freeze(g["sweep"]): g for g in groups if g["model"] == baseline}
    for g in groups:
        b = base.get(freeze(g["sweep"]))
        if g["model"] == baseline or b is None:
            continue
        rec: dict[str, Any] = {"model": g["model"], "baseline": baseline, "sweep": g["sweep"]}
        for p in PROTOCOLS:
            hd, hd0 = g[p]["mean_hd95"]["mean"], b[p]["mean_hd95"]["mean"]
            d, d0 = g[p]["mean_dice"]["mean"], b[p]["mean_dice"]["mean"]
            rec[p] = {
                "hd95_change": None if hd is None or not hd0 else (hd - hd0) / hd0,
                "dice_points": None if d is None or d0 is None else 100.0 * (d - d0),
            }
        out.append(rec)
    return out
