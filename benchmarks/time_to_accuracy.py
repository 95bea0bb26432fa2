"""Time to accuracy on ACDC: timed training trials and their table and figure (docs/training.md).

A trial is one ``organseg train`` run of a preset with a time budget (``train.time_budget_min``: the
schedule's horizon is fitted to the minutes from the throughput measured at the start), validated at the end
on the ACDC validation patients (the dataset has no test split here, and tuning never reads one).

    python benchmarks/time_to_accuracy.py run T1_swin swin_unet_acdc_fast 15 --threads 1 [--set k=v ...]
    python benchmarks/time_to_accuracy.py report runs/tta/* --figure docs/figures/time_to_accuracy.png
    python benchmarks/time_to_accuracy.py epochs REFERENCE_RUN FAST_RUN   # gpu_time_to_accuracy.sh

``run`` resumes a trial that was interrupted (the same command). ``report`` prints one Markdown row per run
folder (recipe, budget, iterations, images, validation DSC per class) and draws validation DSC against
training minutes, one line per preset (its runs of different budgets, and any validations during a run).
``epochs`` answers the GPU question of the time-to-accuracy issue: the first epoch at which a fast run's
validation DSC reaches the reference run's last validation DSC, and that epoch as a fraction of the
reference run's epochs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from organseg.formatting import pyplot
from organseg.run import RunDir
from organseg.study.efficiency import learning_curve

ROOT = Path(__file__).resolve().parents[1]
ACDC = ROOT.parent / "shared" / "data" / "acdc"
RECIPE_KEYS = (
    "optimizer",
    "base_lr",
    "weight_decay",
    "batch_size",
    "schedule",
    "warmup_iterations",
    "ce_weight",
    "dice_weight",
    "precision",
    "augment",
)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out_root) / args.name
    cmd = [
        sys.executable,
        "-m",
        "organseg",
        "train",
        args.preset,
        "--data",
        str(args.data),
        "--out",
        str(out),
        "--set",
        f"train.time_budget_min={args.minutes}",
        "--set",
        "train.progress=false",
    ]
    if args.threads:
        cmd += ["--set", f"train.threads={args.threads}"]
    if (out / "checkpoints" / "last.pt").exists():
        cmd.append("--resume")
    for item in args.set or []:
        cmd += ["--set", item]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def describe(run_dir: Path) -> dict:
    """One trial's row: its recipe, length and validation results, from its own run folder (read through
    organseg's RunDir; the curve is the one ``organseg compare`` draws, in minutes)."""
    run = RunDir(run_dir)
    cfg, summary, env = run.config, run.summary(), run.env()
    t = cfg["train"]
    last = summary.raw.get("last_val") or {}
    return {
        "name": run.path.name,
        "network": cfg["model"]["name"],
        "recipe": {k: t[k] for k in RECIPE_KEYS},
        "model_args": cfg["model"]["args"],
        "budget_min": t["time_budget_min"],
        "threads": t["threads"],
        "iterations": summary.iterations,
        "images": summary.iterations * t["batch_size"],
        "minutes": round(summary.train_seconds / 60, 1),
        "images_per_second": summary.images_per_second,
        "mean_dice": last.get("mean_dice"),
        "mean_hd95": last.get("mean_hd95"),
        "per_class": {k: v["dice"] for k, v in (last.get("per_class") or {}).items()},
        "curve": [((p["seconds"] or 0.0) / 60, p["dice"]) for p in learning_curve(run.path)],
        "cpu": env.device_name if env is not None else None,
    }


def _recipe_text(r: dict) -> str:
    x = r["recipe"]
    text = f"{x['optimizer']} lr {x['base_lr']:g} wd {x['weight_decay']:g}, batch {x['batch_size']}, "
    text += x["schedule"]
    if x["warmup_iterations"]:
        text += f" (warm-up {x['warmup_iterations']})"
    loss = f"{x['ce_weight']:g}·CE+{x['dice_weight']:g}·Dice"
    args = "".join(f", {k} {v}" for k, v in r["model_args"].items())
    return text + f", {loss}, {x['precision']}, augment {x['augment']}{args}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def report(args: argparse.Namespace) -> int:
    rows = [describe(Path(d)) for d in args.runs if RunDir(d).summary() is not None]
    classes = list(dict.fromkeys(c for r in rows for c in r["per_class"]))  # the dataset's class order
    head = [
        "trial",
        "network",
        "recipe",
        "budget (min)",
        "trained (min)",
        "threads",
        "iterations",
        "images",
        "img/s",
        "mean DSC",
        *classes,
        "HD95",
    ]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        budget = "–" if r["budget_min"] is None else f"{r['budget_min']:g}"
        cells = [
            r["name"],
            r["network"],
            _recipe_text(r),
            budget,
            f"{r['minutes']:.1f}",
            str(r["threads"]),
            str(r["iterations"]),
            str(r["images"]),
            f"{r['images_per_second']:.2f}",
            _pct(r["mean_dice"]),
            *(_pct(r["per_class"].get(c)) for c in classes),
            "–" if r["mean_hd95"] is None else f"{r['mean_hd95']:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.figure:
        _figure(rows, Path(args.figure), args.series)
    return 0


def _figure(rows: list[dict], path: Path, series: list[str] | None) -> None:
    """One colour per series (``PREFIX=LABEL``: the runs whose name starts with PREFIX); each run is its own
    line through its validations (a run validated only at its end is one point), so runs with different
    budgets (and so different schedules) are never joined into one curve."""
    plt = pyplot()
    pairs = [s.split("=", 1) for s in series or []]
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labelled: set[str] = set()
    for r in rows:
        index = next((i for i, (prefix, _) in enumerate(pairs) if r["name"].startswith(prefix)), None)
        if index is None or not r["curve"]:
            continue
        label = pairs[index][1]
        xs, ys = zip(*sorted((m, 100 * d) for m, d in r["curve"]), strict=True)
        ax.plot(
            xs, ys, marker="o", color=colors[index % len(colors)], label=None if label in labelled else label
        )
        labelled.add(label)
    ax.set_xlabel("training minutes (2-core CPU, one core per run)")
    ax.set_ylabel("ACDC validation mean DSC (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"figure: {path}")


def val_by_epoch(run_dir: Path) -> list[tuple[int, float]]:
    """(epochs done, validation mean DSC) of every validation of a run, in order."""
    records = RunDir(run_dir).metrics()
    return [
        (int(r["epoch"]) + 1, float(r["mean_dice"]))
        for r in records
        if r.get("kind") == "val" and r.get("mean_dice") is not None
    ]


def epochs_to_reach(reference: list[tuple[int, float]], fast: list[tuple[int, float]]) -> dict:
    """The reference run's last validation (its target) and the first validation of the fast run at or
    above it; ``ratio`` is that epoch over the reference run's epochs (None when never reached)."""
    if not reference or not fast:
        raise SystemExit("epochs: both runs need validation records (val.every > 0)")
    ref_epochs, target = reference[-1]
    reached = next((e for e, d in fast if d >= target), None)
    return {
        "reference_epochs": ref_epochs,
        "target": target,
        "fast_epochs": fast[-1][0],
        "fast_best": max(d for _, d in fast),
        "reached_at": reached,
        "ratio": None if reached is None else reached / ref_epochs,
    }


def epochs(args: argparse.Namespace) -> int:
    ref, fast = val_by_epoch(Path(args.reference)), val_by_epoch(Path(args.fast))
    r = epochs_to_reach(ref, fast)
    print("| run | epochs | validation mean DSC by epoch |\n|---|---|---|")
    for name, pts in ((args.reference, ref), (args.fast, fast)):
        curve = ", ".join(f"{e}: {100 * d:.1f}" for e, d in pts)
        print(f"| {Path(name).name} | {pts[-1][0]} | {curve} |")
    where = "never" if r["reached_at"] is None else f"at epoch {r['reached_at']} ({r['ratio']:.2f} of them)"
    verdict = "meets" if r["ratio"] is not None and r["ratio"] <= 1 / 3 else "misses"
    print(
        f"\nreference after {r['reference_epochs']} epochs: {100 * r['target']:.2f}; the fast run "
        f"(best {100 * r['fast_best']:.2f} in {r['fast_epochs']} epochs) reaches it {where}: {verdict} "
        "the one-third goal"
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="one timed trial")
    r.add_argument("name")
    r.add_argument("preset")
    r.add_argument("minutes", type=float)
    r.add_argument("--threads", type=int)
    r.add_argument("--data", default=str(ACDC))
    r.add_argument("--out-root", default="runs/tta")
    r.add_argument("--set", action="append", metavar="KEY=VALUE")
    q = sub.add_parser("report", help="table (and figure) of finished trials")
    q.add_argument("runs", nargs="+")
    q.add_argument("--figure", help="PNG: validation DSC against training minutes")
    q.add_argument("--series", nargs="+", metavar="PREFIX=LABEL", help="the runs of each line of the figure")
    e = sub.add_parser("epochs", help="epochs for a fast run to reach a reference run's last validation DSC")
    e.add_argument("reference")
    e.add_argument("fast")
    args = p.parse_args()
    return {"run": run, "report": report, "epochs": epochs}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
