"""``organseg compare --data DIR --models unet swin_unet [--seeds 1234,1,2] [--set train.base_lr=0.01,0.05]
--out DIR``: train and test every model x seed x swept value (reusing finished runs), then aggregate.
``organseg compare --collect --out DIR [RUN_DIR ...]`` only aggregates. See docs/compare.md."""

from __future__ import annotations

import argparse

from organseg.errors import ConfigError
from organseg.locks import folder_lock
from organseg.values import FOLDS, WORKERS, option

#: the verb's line in ``organseg --help``
HELP = "networks (U-Net, Swin-Unet, ...) over seeds and swept settings: train, test, aggregate, rank"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help=HELP,
        description=(
            "Run every network x seed x value of every swept --set key (several swept keys: their cartesian "
            "product) as a run folder OUT/runs/<model>__seed<N>__<key><value>: finished runs are reused, "
            "partial ones resumed. Each is tested on --split with both metric protocols. Writes "
            "OUT/comparison.md/.json/.csv (mean ± std over seeds, per organ, the published rows, the "
            "relative HD95 change and paired statistics against the baseline, the ranking and its bootstrap "
            "stability, a sweep table) and PNG figures. With --collect, "
            "nothing is trained or tested: finished run folders (OUT/runs/* or the RUN_DIRs) are aggregated."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="study folder (runs in DIR/runs/)")
    p.add_argument("--data", metavar="DIR", help="dataset folder (not with --collect)")
    p.add_argument("--models", nargs="+", metavar="NAME", help="networks, e.g. unet swin_unet")
    p.add_argument(
        "--seeds", nargs="+", metavar="N[,N...]", help="training seeds, e.g. 1234,1,2 (default 1234)"
    )
    p.add_argument(
        "--set",
        dest="sets",
        metavar="KEY=V1[,V2...]",
        action="append",
        default=[],
        help="override a configuration key; several comma-separated values sweep it "
        "(e.g. --set train.base_lr=0.01,0.05; repeatable: several swept keys give a grid)",
    )
    p.add_argument(
        "--preset",
        metavar="TEMPLATE",
        help="preset name or YAML path, '{model}' is replaced by each network "
        "(default: {model}_synapse, or {model}_acdc on ACDC)",
    )
    p.add_argument(
        "--split",
        choices=("test", "val"),
        help="split to test on (default test; with --folds each fold's held-out subjects)",
    )
    p.add_argument(
        "--folds",
        type=option(FOLDS),
        metavar="K",
        help="K-fold cross-validation over the training subjects: every network x seed x fold is a run "
        "(OUT/runs/..._fold<k>), each tested on the subjects it never saw; the statistics pool them "
        "(nnU-Net's splits_final.json when the dataset has one, else a seeded split in OUT/splits.json)",
    )
    p.add_argument(
        "--note",
        dest="notes",
        metavar="TEXT",
        action="append",
        default=[],
        help="a sentence for comparison.md's notes (repeatable), e.g. which data chose the recipe",
    )
    p.add_argument(
        "--checkpoint",
        default="last",
        metavar="NAME",
        help="checkpoint to test and collect: last (default; the papers report the final model), best, "
        "epoch_N",
    )
    p.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), help="training and test precision (default: preset)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--jobs",
        type=option(WORKERS),
        default=1,
        metavar="N",
        help="train N runs at once, each an `organseg train` process with cores/N threads (default 1); "
        "on a small CPU 2 jobs of 1 thread beat 1 job of 2",
    )
    p.add_argument(
        "--collect",
        nargs="*",
        metavar="RUN_DIR",
        help="only aggregate finished runs: OUT/runs/* or the run folders given",
    )
    p.add_argument(
        "--baseline",
        metavar="NAME",
        help="the network every other one is compared with (default unet when compared, else the first)",
    )
    p.add_argument(
        "--pairs",
        choices=("baseline", "all"),
        default="baseline",
        help="paired statistics of each network against the baseline (default), or of every pair; Holm's "
        "correction covers the organs x the comparisons made",
    )
    p.add_argument("--no-report", action="store_true", help="do not write each run's report.md")
    from organseg.study.launcher import add_arguments

    add_arguments(p)  # --launcher, --slurm-*, --gpus-per-run
    return p


def run(args: argparse.Namespace) -> int:
    from organseg.study import collect, console_table, parse_seeds, parse_sets, run_study
    from organseg.study.launcher import from_args

    launcher = from_args(args)  # None: --launcher local
    if args.collect is not None:
        given = [
            n
            for n, v in (
                ("--data", args.data),
                ("--seeds", args.seeds),
                ("--set", args.sets),
                ("--preset", args.preset),
                ("--precision", args.precision),
                ("--folds", args.folds),
            )
            if v
        ]
        if given:
            raise ConfigError(
                f"--collect reads everything from the run folders; {', '.join(given)} do(es) not apply"
            )
        with folder_lock(args.out, "compare"):  # the study folder's one writer, as run_study
            result = collect(
                args.out,
                args.collect or None,
                split=args.split,
                checkpoint=args.checkpoint,
                models=args.models,
                notes=args.notes,
                baseline=args.baseline,
                pairs=args.pairs,
            )
    else:
        if not args.data or not args.models:
            raise ConfigError("--data and --models are needed (or --collect to aggregate finished runs)")
        result = run_study(
            args.data,
            args.models,
            args.out,
            seeds=parse_seeds(args.seeds),
            sets=parse_sets(args.sets),
            preset=args.preset,
            split=args.split,
            checkpoint=args.checkpoint,
            precision=args.precision,
            device=args.device,
            jobs=args.jobs,
            report=not args.no_report,
            launcher=launcher,
            folds=args.folds,
            notes=args.notes,
            baseline=args.baseline,
            pairs=args.pairs,
        )
    print(console_table(result))
    print(f"organseg compare: wrote {args.out}/comparison.md, comparison.json, comparison.csv")
    return 0
