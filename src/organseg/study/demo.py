"""The demo (``organseg demo [--out demo_out] [--fast]``, or :func:`run_demo` from Python): the whole study
on a fresh machine with no data.

SYNTHETIC phantom CT -> ``prepare synapse`` -> train U-Net and Swin-Unet (reduced networks and schedule, the
``demo_unet`` / ``demo_swin_unet`` presets) -> test with both metric protocols -> ``compare`` -> report. Every
step reuses what an earlier call finished, so a second call only prints the results. See docs/compare.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from organseg.data.classes import SYNAPSE_CLASSES
from organseg.data.completion import read_status
from organseg.data.phantom import write_phantom_set
from organseg.data.prepare import prepare_synapse
from organseg.device import resolve_device
from organseg.fileio import check_output_dir
from organseg.formatting import duration
from organseg.models import create_model
from organseg.precision import fast_bf16
from organseg.run import STUDY_RUNS
from organseg.study.grid import parse_sets, plan_runs
from organseg.study.outputs import console_table
from organseg.study.runner import run_study
from organseg.training.config import model_args

# The demo as plain data. The networks and their schedule are the presets demo_unet / demo_swin_unet.
DEMO: dict[str, Any] = {
    "phantom": {"cases": 12, "size": 128, "slices": 48, "seed": 0},  # 8 train + 4 test, 384 training slices
    "train_cases": 8,
    "models": ["unet", "swin_unet"],
    "preset": "demo_{model}",
    "seeds": [1234],
    "sets": [],
}
# --fast: the same code path on a tiny problem (a smoke test, a few seconds of training; DSC means nothing).
FAST: dict[str, Any] = {
    **DEMO,
    "phantom": {"cases": 3, "size": 64, "slices": 8, "seed": 0},
    "train_cases": 2,
    # One thread: a smoke run must not suffer from a busy machine's thread contention.
    "sets": ["train.img_size=64", "train.batch_size=4", "train.max_iterations=3", "train.threads=1"],
}
TARGET_DSC = 0.70  # what the full demo reaches for both networks (reference protocol); see docs/compare.md


def demo_precision(device: str, precision: str | None) -> str | None:
    """The precision override of the demo: the explicit choice, else fp32 on a CPU without fast bf16 (where
    bf16 is emulated and slower), else None (the presets' choice: bf16 for the U-Net, fp32 for Swin-Unet)."""
    dev = resolve_device(device)
    if precision is None and dev.type == "cpu" and fast_bf16(dev) is None:
        return "fp32"
    return precision


# The full networks for the 9 Synapse classes (reference_protocol.md §1.4; checked in tests/test_demo.py),
# so the demo need not build 50 M parameters only to count them.
FULL_PARAMS = {"unet": 24_898_953, "swin_unet": 27_168_900}


def _params(name: str, args: dict[str, Any]) -> int:
    return sum(p.numel() for p in create_model(name, **args).parameters())


def settings_lines(plans: list, num_classes: int, img_size_full: int = 224) -> list[str]:
    """Human-readable network sizes and schedules of the planned runs, beside the full-size networks."""
    lines = []
    for plan in plans:
        cfg, t = plan.config, plan.config["train"]
        args = model_args(cfg, num_classes)
        full = FULL_PARAMS.get(plan.model) if num_classes == 9 else None
        full = full or _params(plan.model, {"num_classes": num_classes})
        ours = _params(plan.model, args)
        shown = {k: v for k, v in cfg["model"]["args"].items()}
        lines.append(
            f"- {plan.model}: {json.dumps(shown)}, {ours / 1e6:.2f} M parameters (full network "
            f"{full / 1e6:.2f} M); {t['img_size']}x{t['img_size']} input (full {img_size_full}), batch "
            f"{t['batch_size']}, {t['max_iterations']} iterations, SGD lr {t['base_lr']:g} poly, "
            f"{t['precision']}, augmentation {t['augment']}, seed {t['seed']}"
        )
    return lines


def _phantom(raw: Path, spec: dict[str, Any], progress: bool) -> None:
    meta = raw / "phantom.json"
    status = read_status(raw) if raw.is_dir() else None
    if meta.is_file() and (status is None or status.get("state") == "complete"):
        try:
            have = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            have = {}
        same = {k: have.get(k) for k in ("size", "seed", "num_slices")} == {
            "size": spec["size"],
            "seed": spec["seed"],
            "num_slices": spec["slices"],
        } and len(have.get("cases", [])) == spec["cases"]
        if same:
            print(f"  reusing {raw} ({spec['cases']} cases)", flush=True)
            return
    # The demo owns this folder: an earlier phantom set of other settings (or a half-written one) is replaced.
    write_phantom_set(
        raw,
        spec["cases"],
        spec["size"],
        spec["seed"],
        num_slices=spec["slices"],
        progress=progress,
        overwrite=True,
    )


def _data_line(ph: dict[str, Any], n_train: int) -> str:
    """The settings line that says the data are a phantom, and how they are split."""
    return (
        f"- data: {ph['cases']} SYNTHETIC phantom CT cases ({ph['size']}x{ph['size']}, "
        f"{ph['slices']} slices), {n_train} for training ({n_train * ph['slices']} slices), "
        f"{ph['cases'] - n_train} for testing"
    )


def _print_intro(fast: bool, dev: Any, lines: list[str]) -> None:
    """Say first, before minutes of work, that the data are synthetic and what the reduced settings are."""
    print(
        f"organseg demo{' --fast' if fast else ''}: everything below is SYNTHETIC DATA (a phantom, "
        f"not patients) and runs on {dev}.",
        flush=True,
    )
    print("Reduced networks and schedule (the full ones are what `organseg train` uses):", flush=True)
    for line in lines:
        print(line, flush=True)


def _print_outcome(result: dict[str, Any], fast: bool, seconds: float, report: Path, runs: Path) -> None:
    """The comparison table, each network's mean DSC against the demo's target, and where the report is."""
    print("\n" + console_table(result), flush=True)
    for g in result["groups"]:
        d = g["reference"]["mean_dice"]["mean"]
        mark = (
            "" if fast else f"; {'at or above' if d >= TARGET_DSC else 'BELOW'} the demo's {TARGET_DSC:.0%}"
        )
        print(
            f"{g['label']}: mean DSC {100 * d:.2f} % (reference protocol, SYNTHETIC phantom test cases{mark})"
        )
    print(
        f"organseg demo: done in {duration(seconds, 'minutes')}; report {report} "
        f"(runs and per-run reports in {runs})",
        flush=True,
    )


def run_demo(
    out: str | Path | None = None,
    *,
    fast: bool = False,
    device: str = "auto",
    precision: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo (what ``organseg demo`` does) and print its progress and results; ``out`` defaults to
    ``demo_out`` (``demo_out/fast`` with ``fast``). Returns the comparison dict (as
    :func:`organseg.study.run_study`) plus ``seconds`` and ``report`` (the comparison.md path)."""
    spec = FAST if fast else DEMO
    out = Path(out) if out is not None else Path("demo_out/fast" if fast else "demo_out")
    check_output_dir(out)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    precision = demo_precision(device, precision)
    sets = parse_sets(spec["sets"])
    plans = plan_runs(
        spec["models"], spec["seeds"], sets, preset=spec["preset"], kind="synapse", precision=precision
    )
    settings = settings_lines(plans, len(SYNAPSE_CLASSES))
    ph = spec["phantom"]
    n_train = spec["train_cases"]
    data_line = _data_line(ph, n_train)
    _print_intro(fast, dev, [data_line, *settings])

    print(f"\n[1/3] phantom: {ph['cases']} SYNTHETIC CT cases -> {out / 'phantom'}", flush=True)
    _phantom(out / "phantom", ph, progress)

    print(f"\n[2/3] prepare synapse -> {out / 'data'}", flush=True)
    ids = list(range(1, ph["cases"] + 1))
    prepare_synapse(
        out / "phantom", out / "data", train_cases=ids[:n_train], test_cases=ids[n_train:], progress=progress
    )

    print(f"\n[3/3] compare: train and test {', '.join(spec['models'])} -> {out}", flush=True)
    command = "organseg demo --fast" if fast else "organseg demo"
    notes = [
        f"**Demo settings** (`{command}`; reduced networks and schedule, the full ones are the `*_synapse` "
        "presets):",
        "\n".join([data_line, *settings]),
    ]
    # The two networks train side by side, one process each: on two cores that is far faster than one
    # process with two threads (see organseg.study.runner).
    jobs = max(1, min(len(plans), os.cpu_count() or 1))
    result = run_study(
        out / "data",
        spec["models"],
        out,
        seeds=spec["seeds"],
        sets=sets,
        preset=spec["preset"],
        precision=precision,
        device=device,
        jobs=jobs,
        progress=progress,
        notes=notes,
    )
    seconds = time.perf_counter() - t0
    report = out / "comparison.md"
    _print_outcome(result, fast, seconds, report, out / STUDY_RUNS)
    return {**result, "seconds": seconds, "report": str(report)}
