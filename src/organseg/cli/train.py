"""``organseg train PRESET_OR_YAML --data DIR --out RUN_DIR [--set key=value ...] [--resume]``.

Also ``torchrun --nproc_per_node N -m organseg train ...`` (DistributedDataParallel; ``train.batch_size`` is
the global batch). See docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import sys

#: the verb's line in ``organseg --help``
HELP = "train a network with a preset or YAML configuration"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from organseg.training.config import list_presets

    p = subparsers.add_parser(
        "train",
        help=HELP,
        description=f"Train U-Net or Swin-Unet, reference recipe. Presets: {', '.join(list_presets())}.",
    )
    p.add_argument("config", metavar="PRESET_OR_YAML", help="a preset name or a YAML configuration file")
    p.add_argument("--data", metavar="DIR", help="dataset folder (else data.root of the configuration)")
    add_run_options(p, "train.base_lr=0.01")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (train.compile=true)")
    return p


def add_run_options(p: argparse.ArgumentParser, example: str) -> None:
    """The options of a verb that runs the training loop (train, pretrain): --out, --set, --resume,
    --precision and --device; ``example`` is the --set example of its help."""
    p.add_argument("--out", metavar="RUN_DIR", required=True, help="the run folder")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help=f"override a configuration key, e.g. --set {example} (repeatable; values are YAML)",
    )
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoints/last.pt if it exists")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="same as --set train.precision=...")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (same as --set train.device=...)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from organseg.fileio import check_output
    from organseg.run import EXIT_DIVERGED, TRAIN_FILES
    from organseg.training import TrainingDiverged, apply_overrides, load_config, train

    if Path(args.config).is_file():  # train() sees the loaded dict; the file is only known here
        check_output(args.out, {"PRESET_OR_YAML": args.config}, folder=True, owned=TRAIN_FILES)

    overrides = list(args.overrides)
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    if args.compile:
        overrides.append("train.compile=true")
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = apply_overrides(load_config(args.config), overrides)
    try:
        summary = train(cfg, args.data, args.out, resume=args.resume)
    except TrainingDiverged as exc:
        # The usual one-line error, but its own exit code: a study running this process tells a diverged
        # run (a result of its sweep) from a failure by the code (organseg.run.EXIT_DIVERGED).
        print(f"organseg train: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line
        best = summary["best_mean_dice"]
        print(
            f"organseg train: {summary['stopped']} after {summary['iterations']} iterations "
            f"({summary['epochs']} epochs, {summary['images_per_second']} img/s)"
            + (f", best validation mean DSC {best:.4f}" if best is not None else "")
            + f"; run folder {summary['run_dir']}"
        )
    return 0
