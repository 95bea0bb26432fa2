"""Under which conditions a comparison's verdict holds (``comparison.json["conditions"]``), from the runs'
own records: the training budget, initialisation, data fraction and device per network, what chose the
checkpoint, and whether a run was still improving at its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from organseg.errors import DataError
from organseg.run import RunDir
from organseg.study.comparison import ConditionsRecord, ModelConditions
from organseg.study.runs import RunResult

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


def conditions(runs: Sequence[RunResult], split: str, checkpoint: str) -> ConditionsRecord:
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
            m["runs"].append(
                {
                    "minutes": None if seconds is None else seconds / 60,
                    "iterations": iters,
                    "epochs": summary.epochs if summary else None,
                    "images": None if iters is None else iters * int(train.get("batch_size") or 0),
                    "device": env.device_name or env.device if env else None,
                    "threads": env.torch_threads if env else None,
                    "init": (member.config.get("model") or {}).get("pretrained") or "scratch",
                    "fraction": (member.config.get("data") or {}).get("train_fraction") or 1.0,
                    "budget_min": train.get("time_budget_min"),
                    "precision": train.get("precision"),
                }
            )
            if improving:
                m["improving"].append(member.name)
            m["evidence"].add(evidence)
    out: dict[str, ModelConditions] = {}
    for model, m in models.items():
        rows = m["runs"]

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
            vals = [x[key] for x in rows if x[key] is not None]
            return float(np.mean(vals)) if vals else None

        out[model] = {
            "runs": len(rows),
            "train_minutes": mean("minutes"),
            "iterations": mean("iterations"),
            "epochs": mean("epochs"),
            "images_seen": mean("images"),
            "time_budget_min": sorted({x["budget_min"] for x in rows if x["budget_min"] is not None}),
            "init": sorted({str(x["init"]) for x in rows}),
            "train_fraction": sorted({float(x["fraction"]) for x in rows}),
            "device": sorted({str(x["device"]) for x in rows if x["device"]}),
            "threads": sorted({int(x["threads"]) for x in rows if x["threads"]}),
            "precision": sorted({str(x["precision"]) for x in rows if x["precision"]}),
            "still_improving": m["improving"],
            "improving_by": sorted(m["evidence"]),
        }
    folds = sorted({int(f.config["data"]["folds"]) for r in runs for f in r.folds}) or None
    return {"split": split, "checkpoint": checkpoint, "selection": selection, "folds": folds, "models": out}
