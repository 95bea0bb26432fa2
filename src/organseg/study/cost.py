"""What each network of a study cost, read from the same runs as its accuracy.

Per run: parameters and forward GFLOPs per image (counted by :mod:`organseg.models.flops` on the network the
run's configuration builds, at its training input size; a multiply-add is 2 FLOPs), training throughput
(images/s), total training time and peak memory from the run's own ``summary.json``, the training device
from its ``env.json``, and prediction time per volume and per slice from the test summary (its
``inference_seconds``; older results without it fall back to the test's ``seconds``, which include the
metrics, and say so). A study's cost record per network is the mean over its seeds (peak memory: the
largest; training time: also the sum).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from organseg.errors import DataError, OrgansegError
from organseg.formatting import MISSING, duration, num
from organseg.models import check_model_args
from organseg.models.flops import model_profile
from organseg.run import ResultsDir, RunDir, RunEnv, TrainSummary
from organseg.training.config import model_args

_PROFILE_CACHE: dict[str, dict[str, Any] | None] = {}


def _profile(cfg: dict, num_classes: int) -> dict[str, Any] | None:
    """Parameters and GFLOPs of the network a run configuration builds; None (cells left empty) when this
    organseg cannot build it: the configuration gives no input size, or names a network or arguments its
    registry or constructor refuse (OrgansegError: a network not registered here, an argument the network
    does not take or of another type, a Swin-Unet layout that does not fit; ValueError: a U-Net width or
    class count out of range). Any other exception is a fault of organseg and propagates."""
    img_size = (cfg.get("train") or {}).get("img_size")
    key = json.dumps([cfg.get("model"), img_size, num_classes], sort_keys=True, default=str)
    if key not in _PROFILE_CACHE:
        profile = None
        if img_size is not None:
            try:
                args = model_args(cfg, num_classes)
                # An argument the constructor lacks is a ConfigError here, not the TypeError of the call.
                check_model_args(cfg["model"]["name"], args)
                img = int(args.pop("img_size", img_size))
                profile = model_profile(cfg["model"]["name"], img, **args)
            except (OrgansegError, ValueError):
                profile = None
        _PROFILE_CACHE[key] = profile  # a fault raised above is not cached: it raises again next time
    return _PROFILE_CACHE[key]


def _device(env: RunEnv | None) -> str | None:
    if env is None or not env.raw:
        return None
    dev = str(env.device if "device" in env.raw else "?")
    name = env.device_name
    threads = env.torch_threads
    world = env.world_size or 1
    text = f"{dev} ({name})" if name and name != dev else dev
    if dev.startswith("cpu") and threads:
        text += f", {threads} thread{'s' if threads != 1 else ''}"
    if world > 1:
        text += f", {world} processes"
    return text


def run_cost(run_dir: str | Path, results_dir: str | Path, cfg: dict, num_classes: int) -> dict[str, Any]:
    """The cost of one run from its folder (see the module docstring); None where a record is missing."""
    # A missing or damaged record leaves its cells empty; it never stops a comparison.
    run = RunDir(run_dir)
    train = run.summary() or TrainSummary()
    try:
        test = ResultsDir(results_dir).summary()
    except DataError:
        test = {}
    prof = _profile(cfg, num_classes)
    cases = test.get("cases") or 0
    infer = test.get("inference_seconds")
    infer_kind = "prediction"
    if infer is None and test.get("seconds") is not None:
        infer, infer_kind = test["seconds"], "prediction + metrics"
    slices = test.get("slices")
    return {
        "params": None if prof is None else prof["params"],
        "gflops_per_image": None if prof is None else prof["gflops"],
        "img_size": (cfg.get("train") or {}).get("img_size"),
        "train_images_per_s": train.images_per_second,
        "train_seconds": train.train_seconds,
        "iterations": train.iterations,
        "peak_memory_mb": train.peak_memory_mb,
        "peak_memory_kind": train.peak_memory_kind,
        "infer_seconds_per_volume": None if infer is None or not cases else infer / cases,
        "infer_seconds_per_slice": None if infer is None or not slices else infer / slices,
        "infer_timing": infer_kind if infer is not None else None,
        "train_device": _device(run.env()),
        "test_device": test.get("device"),
        "precision": (cfg.get("train") or {}).get("precision"),
    }


def _mean(values: Sequence[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def _joined(values: Sequence[Any]) -> str | None:
    vals = list(dict.fromkeys(str(v) for v in values if v is not None))
    return "; ".join(vals) if vals else None


def group_cost(
    model: str, label: str, sweep: dict[str, Any], runs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One network's (and swept values') cost record from its runs' :func:`run_cost` records."""
    peaks = [r["peak_memory_mb"] for r in runs if r["peak_memory_mb"] is not None]
    train_s = [r["train_seconds"] for r in runs if r["train_seconds"] is not None]
    return {
        "model": model,
        "label": label,
        "sweep": sweep,
        "n": len(runs),
        "params": runs[0]["params"] if runs else None,
        "gflops_per_image": runs[0]["gflops_per_image"] if runs else None,
        "img_size": runs[0]["img_size"] if runs else None,
        "train_images_per_s": _mean([r["train_images_per_s"] for r in runs]),
        "train_seconds": _mean(train_s),
        "train_seconds_total": float(sum(train_s)) if train_s else None,
        "peak_memory_mb": max(peaks) if peaks else None,
        "peak_memory_kind": _joined([r["peak_memory_kind"] for r in runs]),
        "infer_seconds_per_volume": _mean([r["infer_seconds_per_volume"] for r in runs]),
        "infer_seconds_per_slice": _mean([r["infer_seconds_per_slice"] for r in runs]),
        "infer_timing": _joined([r["infer_timing"] for r in runs]),
        "train_device": _joined([r["train_device"] for r in runs]),
        "test_device": _joined([r["test_device"] for r in runs]),
        "precision": _joined([r["precision"] for r in runs]),
    }


def cost_markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    """The cost table of ``comparison.md`` (lines)."""
    if not records:
        return []
    lines = [
        "## Cost",
        "",
        "Measured in the same runs as the accuracy above. GFLOPs: one forward pass of one image at the "
        "training input size (a multiply-add counts 2). Training: mean over seeds (total: all seeds). Peak "
        "memory: the largest over seeds; on a CPU the training process's peak resident memory (data and "
        "framework included), on a GPU the most tensor memory allocated. Prediction time per volume and per "
        "slice: `organseg test`'s batched inference, mean over seeds.",
        "",
        "| Method | params (M) | GFLOPs / image | train images/s | train time (per run / total) "
        "| peak memory (MB) | predict s / volume | predict ms / slice | trained on | tested on |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        params = None if r["params"] is None else r["params"] / 1e6
        size = f" at {r['img_size']}²" if r.get("img_size") else ""
        per_slice = None if r["infer_seconds_per_slice"] is None else 1000 * r["infer_seconds_per_slice"]
        lines.append(
            f"| {r['label']} | {num(params, '.2f')} | {num(r['gflops_per_image'], '.3g')}{size} | "
            f"{num(r['train_images_per_s'], '.1f')} | {duration(r['train_seconds'])} / "
            f"{duration(r['train_seconds_total'])} | {num(r['peak_memory_mb'], '.0f')} | "
            f"{num(r['infer_seconds_per_volume'], '.2f')} | {num(per_slice, '.1f')} | "
            f"{r['train_device'] or MISSING} | {r['test_device'] or MISSING} |"
        )
    notes = []
    if any(r["peak_memory_mb"] is None for r in records):
        notes.append("Peak memory is empty for runs trained before organseg recorded it.")
    if any(r["infer_timing"] and "metrics" in r["infer_timing"] for r in records):
        notes.append(
            "Some prediction times include the metrics (results written before organseg recorded "
            "prediction time on its own)."
        )
    lines += ["", *notes] if notes else []
    return [*lines, ""]
