"""Does SimMIM pretraining pay for Swin-Unet at equal CPU time? The ACDC study of docs/training.md.

Every arm trains on the training subjects of one cross-validation fold (``data.fold``; pretraining reads the
same subjects' images only, labels ignored) and is tested on that fold's held-out subjects, which no recipe
was chosen on (the fast presets were tuned on the separate validation patients). One run = one core
(``train.threads=1``); two lanes at once fill the 2-core CPU.

    python benchmarks/pretrain_gain.py run scratch  --minutes 60 --seed 1234     # Swin-Unet from scratch
    python benchmarks/pretrain_gain.py run unet     --minutes 60 --seed 1234     # the U-Net beside it
    python benchmarks/pretrain_gain.py run pretrain --pretrain-min 20 --finetune-min 40 60 --seed 1234
    python benchmarks/pretrain_gain.py run pretrain --pretrain-min 20 --finetune-min 40 60 --seed 1234 \\
        --volumes CT_FOLDER --tag acdcct                   # ACDC images + CT volumes (another modality)
    python benchmarks/pretrain_gain.py run probe --pretrain-min 20 --lrs 1e-4 2e-3   # the LR check
    python benchmarks/pretrain_gain.py run pretrain --pretrain-lr 1e-3 --finetune-min 40   # tag acdclr1e-3
    python benchmarks/pretrain_gain.py run pretrain --finetune-min 40 \\
        --pretrain-set pretrain.mask_patch_size=16 --tag acdcmask16      # a recipe variant, tagged by hand
    python benchmarks/pretrain_gain.py report studies/pretrain --figure docs/figures/pretrain_gain.png

``run`` names its run folders ``swin_scratch{T}_s{seed}``, ``unet_scratch{T}_s{seed}``,
``pre{P}_{tag}_s{seed}``, ``swin_pre{P}_{tag}_ft{F}_s{seed}`` and ``probe{P}_lr{LR}_s{seed}`` under
``--out-root``, resumes an interrupted
run (the same command) and tests each finished run with ``organseg test --split val`` (the fold's held-out
subjects). ``probe`` pretrains only, once per learning rate, for the recipe check: which rate lowers the
masked-pixel loss most within the budget (training images only, so no held-out subject takes part in the
choice). Give it the budget the recipe is for: on ACDC, 5-minute probes ended within 0.001 of each other at
every rate from 1e-4 to 2e-3, while over 20 minutes 1e-4 reached 0.087 and 2e-3 stalled at 0.108.
``report`` groups the folders by arm (the name without ``_s{seed}``), counts an arm's CPU minutes
as its pretraining's plus its fine-tuning's training seconds, and compares each arm with the Swin-Unet from
scratch at the same total minutes by subject (a patient's mean over its ED and ES frames; paired bootstrap
interval and Wilcoxon signed-rank p from ``organseg.study.paired``), with the training-loss curves drawn
against total CPU minutes.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organseg.formatting import pyplot
from organseg.run import RunDir
from organseg.study.paired import by_subject, mean_ci, paired_from_runs, per_case_array, read_per_case

ROOT = Path(__file__).resolve().parents[1]
ACDC = ROOT.parent / "shared" / "data" / "acdc"
RESULTS = Path("results") / "val_last"
NAME = re.compile(r"^(?P<arm>.+)_s(?P<seed>\d+)$")


# ------------------------------------------------------------------------------------------------ run


def _organseg(verb: str, *argv: str) -> None:
    cmd = [sys.executable, "-m", "organseg", verb, *argv]
    print("+ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc:
        raise SystemExit(f"{verb} failed with exit status {rc}")


def _common(args: argparse.Namespace) -> list[str]:
    sets = [
        f"data.fold={args.fold}",
        f"data.folds={args.folds}",
        "train.threads=1",
        f"train.seed={args.seed}",
    ]
    sets += ["train.progress=false", *(args.set or [])]
    return [x for s in sets for x in ("--set", s)]


def _done(run: Path) -> bool:
    summary = RunDir(run).summary()
    return summary is not None and summary.raw.get("stopped") in ("completed", "time_budget")


def _train(
    preset: str, run: Path, minutes: float, args: argparse.Namespace, extra: Sequence[str] = ()
) -> None:
    if not _done(run):
        resume = ["--resume"] if (run / "checkpoints" / "last.pt").exists() else []
        _organseg(
            "train", preset, "--data", str(args.data), "--out", str(run), *resume,
            *_common(args), "--set", f"train.time_budget_min={minutes:g}", *extra,
        )  # fmt: skip
    if not (run / RESULTS / "per_case.json").exists():
        _organseg("test", str(run), "--split", "val", "--checkpoint", "last", "--no-viewer")


def run(args: argparse.Namespace) -> int:
    root = Path(args.out_root)
    s = args.seed
    if args.lane == "probe":
        for lr in args.lrs:
            out = root / f"probe{args.pretrain_min:g}_lr{lr}_s{s}"
            if not (out / "summary.json").exists():
                _pretrain(out, args, ["--set", f"train.base_lr={lr}"])
        return 0
    if args.lane in ("scratch", "unet"):
        net = "swin_unet" if args.lane == "scratch" else "unet"
        folder = root / f"{net.split('_')[0]}_scratch{args.minutes:g}_s{s}"
        _train(f"{net}_acdc_fast", folder, args.minutes, args)
        return 0
    tag = args.tag or ("acdc" if args.pretrain_lr is None else f"acdclr{args.pretrain_lr}")
    pre = root / f"pre{args.pretrain_min:g}_{tag}_s{s}"
    if not (pre / "summary.json").exists():
        lr = [] if args.pretrain_lr is None else ["--set", f"train.base_lr={args.pretrain_lr}"]
        _pretrain(pre, args, lr)
    for minutes in args.finetune_min:
        run_dir = root / f"swin_pre{args.pretrain_min:g}_{tag}_ft{minutes:g}_s{s}"
        weights = ("--set", f"model.pretrained={pre / 'pretrained.pt'}")
        _train("swin_unet_acdc_fast", run_dir, minutes, args, weights)
    return 0


def _pretrain(out: Path, args: argparse.Namespace, extra: Sequence[str]) -> None:
    sources = ["--data", str(args.data)]
    for folder in args.volumes or []:
        sources += ["--volumes", folder, "--intensity", "ct", "--window", *map(str, args.window)]
    resume = ["--resume"] if (out / "checkpoints" / "last.pt").exists() else []
    _organseg(
        "pretrain", *sources, "--out", str(out), *resume, *_common(args),
        "--set", f"train.time_budget_min={args.pretrain_min:g}", "--precision", "bf16", *extra,
        *[x for kv in args.pretrain_set or [] for x in ("--set", kv)],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ report


def probe_table(root: Path) -> list[str]:
    """The learning-rate check: per probe run, its iterations and the mean masked-pixel loss of its last 10 %
    of iterations (the schedule's end, where the rate has decayed)."""
    lines = []
    for d in sorted(root.glob("probe*_lr*_s*")):
        run = RunDir(d)
        if run.summary() is None:
            continue
        losses = [r["loss"] for r in run.metrics() if r.get("kind") == "train"]
        late = losses[-max(1, len(losses) // 10) :]
        lr = run.config["train"]["base_lr"]
        lines.append(f"| {d.name} | {lr:g} | {len(losses)} | {_minutes(run):.1f} | {np.mean(late):.4f} |")
    if not lines:
        return []
    head = "| probe | learning rate | iterations | minutes | masked-pixel L1, last 10 % of iterations |"
    return [head, "|---|---|---|---|---|", *lines, ""]


def _minutes(run: RunDir) -> float:
    summary = run.summary()
    return 0.0 if summary is None or summary.train_seconds is None else summary.train_seconds / 60


def _pretrain_run(run: RunDir) -> RunDir | None:
    spec = (run.config.get("model") or {}).get("pretrained")
    if not isinstance(spec, str) or not spec.endswith(".pt"):
        return None
    return RunDir(Path(spec).parent)


def _loss_curve(run: RunDir, offset: float, kind: str = "train") -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r["time"], r["loss"]) for r in run.metrics() if r.get("kind") == kind and r.get("time") is not None
    ]
    if not pts:
        return np.zeros(0), np.zeros(0)
    t, y = (np.asarray(v, dtype=np.float64) for v in zip(*pts, strict=True))
    window = max(1, len(y) // 40)  # a moving mean: per-iteration losses of batch 8 are noisy
    smooth = np.convolve(y, np.ones(window) / window, mode="valid")
    return offset + t[window - 1 :] / 60, smooth


def arms(root: Path) -> dict[str, list[RunDir]]:
    """Finished, tested runs under ``root`` grouped by arm (the folder name without ``_s{seed}``)."""
    out: dict[str, list[RunDir]] = {}
    for d in sorted(root.iterdir()):
        m = NAME.match(d.name)
        if m and not d.name.startswith("pre") and (d / RESULTS / "per_case.json").exists():
            out.setdefault(m["arm"], []).append(RunDir(d))
    return out


def _subject_stats(per_case: list[list[dict]], names: list[str]) -> dict[str, dict]:
    """Each organ's and the mean's subject-level mean over the arm's seeds, with a 95 % bootstrap interval
    over subjects (a subject: the mean of its frames)."""
    ids = [str(c["case"]) for c in per_case[0]]
    subjects = [str(c.get("subject") or c["case"]) for c in per_case[0]]
    x = np.stack(
        [per_case_array(p, ids, names, "reference", "dice") for p in per_case]
    )  # seeds, cases, organs
    out = {}
    for j, organ in enumerate([*names, "mean"]):
        values = x.mean(axis=2) if organ == "mean" else x[:, :, j]
        subj, _, _ = by_subject(values, subjects)  # (seeds, subjects)
        out[organ] = mean_ci(subj[:, :, None])
    hd = np.stack([per_case_array(p, ids, names, "reference", "hd95") for p in per_case]).mean(axis=2)
    out["hd95"] = float(np.nanmean(by_subject(hd, subjects)[0]))
    out["subjects"] = len(set(subjects))
    return out


def report(args: argparse.Namespace) -> int:
    root = Path(args.root)
    groups = arms(root)
    if not groups:
        raise SystemExit(f"{root}: no tested runs (NAME_s<seed>/{RESULTS}/per_case.json)")
    first = read_per_case(next(iter(groups.values()))[0].path / RESULTS)
    names = list(first[0]["classes"])
    columns = [(n, i + 1) for i, n in enumerate(names)]
    class_names = ["background", *names]
    rows = []
    for arm, runs in groups.items():
        pre = [_pretrain_run(r) for r in runs]
        pre_min = [(_minutes(p) if p is not None else 0.0) for p in pre]
        ft_min = [_minutes(r) for r in runs]
        total = float(np.mean([a + b for a, b in zip(pre_min, ft_min, strict=True)]))
        summaries = [r.summary() for r in runs]
        images = [
            s.iterations * r.config["train"]["batch_size"] for s, r in zip(summaries, runs, strict=True)
        ]
        stats = _subject_stats([read_per_case(r.path / RESULTS) for r in runs], names)
        rows.append({"arm": arm, "runs": runs, "pre": pre, "pre_min": float(np.mean(pre_min)),
                     "ft_min": float(np.mean(ft_min)), "total": total, "images": float(np.mean(images)),
                     "stats": stats, "network": runs[0].config["model"]["name"]})  # fmt: skip
    rows.sort(key=lambda r: (r["network"] != "swin_unet", r["pre_min"] > 0, r["total"]))
    scratch = [r for r in rows if r["network"] == "swin_unet" and not r["pre_min"]]
    print("\n".join(probe_table(root)))
    print(f"runs under {root}; reference protocol, DSC in %, statistics by subject (patient)\n")
    head = ["arm", "seeds", "CPU min (pretrain + fine-tune)", "fine-tune images", "mean DSC [95 % CI]",
            *names, "HD95 (vox)", "vs Swin-Unet from scratch: ΔDSC [95 % CI], p, wins/losses",
            "ΔHD95 [95 % CI], p"]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        st = r["stats"]
        m = st["mean"]
        ci = f"{100 * m['mean']:.2f} [{100 * m['ci_low']:.2f}, {100 * m['ci_high']:.2f}]"
        versus = hd_versus = "–"
        base = min(scratch, key=lambda b: abs(b["total"] - r["total"]), default=None)
        if base is not None and base is not r and r["network"] == "swin_unet":
            # Seed-matched where the seeds overlap: an arm run with seed 1234 only is paired with scratch's
            # seed-1234 run, not with a mean over seeds that arm never had.
            seeds = {_seed(x) for x in r["runs"]}
            base_runs = [b for b in base["runs"] if _seed(b) in seeds] or base["runs"]
            recs, _, _ = paired_from_runs(
                [b.path / RESULTS for b in base_runs], [x.path / RESULTS for x in r["runs"]],
                class_names, columns, ("reference",),
            )  # fmt: skip
            d, h = (
                next(x for x in recs if x["organ"] == "mean" and x["metric"] == m) for m in ("dice", "hd95")
            )
            versus = (
                f"{100 * d['diff']:+.2f} [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}], "
                f"p={d['p']:.2g}, {d['wins']}/{d['losses']} (vs {base['arm']}, "
                f"seed {', '.join(sorted(str(_seed(b)) for b in base_runs))})"
            )
            hd_versus = f"{h['diff']:+.2f} [{h['ci_low']:+.2f}, {h['ci_high']:+.2f}], p={h['p']:.2g}"
        minutes = f"{r['pre_min']:.1f} + {r['ft_min']:.1f}" if r["pre_min"] else f"{r['ft_min']:.1f}"
        organs = [f"{100 * st[n]['mean']:.2f}" for n in names]
        cells = [
            r["arm"],
            str(len(r["runs"])),
            minutes,
            f"{r['images']:,.0f}",
            ci,
            *organs,
            f"{st['hd95']:.2f}",
        ]
        cells += [versus, hd_versus]
        print("| " + " | ".join(cells) + " |")
    print(f"\n{rows[0]['stats']['subjects']} held-out subjects; CPU: {_cpu(rows[0]['runs'][0])}")
    if args.figure:
        _figure(rows, Path(args.figure))
    return 0


def _seed(run: RunDir) -> int:
    """The seed in a run folder's name (``NAME_s<seed>``)."""
    m = NAME.match(run.path.name)
    assert m is not None, run.path  # arms() admits only such names
    return int(m["seed"])


def _cpu(run: RunDir) -> str:
    env = run.env()
    return "unknown" if env is None or not env.device_name else env.device_name


def _figure(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn: set[Path] = set()  # one pretraining may start several fine-tunings: drawn once
    for i, r in enumerate(rows):
        c = colors[i % len(colors)]
        for k, run in enumerate(r["runs"]):
            pre = r["pre"][k]
            offset = _minutes(pre) if pre is not None else 0.0
            if pre is not None and pre.path not in drawn:
                drawn.add(pre.path)
                t, y = _loss_curve(pre, 0.0)
                bx.plot(t, y, color=c, lw=1, label=f"{pre.path.name}" if k == 0 else None)
            t, y = _loss_curve(run, offset)
            ax.plot(t, y, color=c, lw=1, label=r["arm"] if k == 0 else None)
    ax.set_xlabel("total CPU minutes (pretraining + fine-tuning, one core)")
    ax.set_ylabel("training loss, 0.4·CE + 0.6·Dice (moving mean)")
    ax.set_ylim(bottom=0)
    bx.set_xlabel("pretraining minutes (one core)")
    bx.set_ylabel("SimMIM loss, L1 on masked pixels (moving mean)")
    for a in (ax, bx):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"figure: {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="one lane: train (and pretrain) then test")
    r.add_argument("lane", choices=("scratch", "unet", "pretrain", "probe"))
    r.add_argument("--out-root", default="studies/pretrain")
    r.add_argument("--data", default=str(ACDC))
    r.add_argument("--fold", type=int, default=0)
    r.add_argument("--folds", type=int, default=5)
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--minutes", type=float, default=60, help="scratch / unet: the training budget")
    r.add_argument("--pretrain-min", type=float, default=20)
    r.add_argument("--finetune-min", type=float, nargs="+", default=[40, 60])
    r.add_argument("--volumes", action="append", help="a folder of CT volumes to pretrain on as well")
    r.add_argument("--window", type=float, nargs=2, default=(-125, 275), help="CT window of --volumes")
    r.add_argument("--pretrain-lr", help="pretraining learning rate (default: the preset's)")
    r.add_argument("--lrs", nargs="+", default=["1e-4", "5e-4", "1e-3", "2e-3"], help="probe: the rates")
    r.add_argument("--tag", help="names the pretraining in the run folders (default acdc, acdclr<LR>)")
    r.add_argument("--set", action="append", help="KEY=VALUE for every train / pretrain of the lane")
    r.add_argument(
        "--pretrain-set", action="append", metavar="KEY=VALUE", help="for the pretraining only (give a --tag)"
    )
    r.set_defaults(fn=run)
    q = sub.add_parser("report", help="the table (Markdown) and the loss curves")
    q.add_argument("root")
    q.add_argument("--figure")
    q.set_defaults(fn=report)
    args = p.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
