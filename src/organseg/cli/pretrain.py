"""``organseg pretrain [PRESET_OR_YAML] --data DIR | --volumes DIR --intensity ct|mri|minmax --out RUN_DIR``.

Self-supervised pretraining (SimMIM) of the Swin-Unet encoder on images only; the run folder's
``pretrained.pt`` is what ``organseg train ... --set model.pretrained=RUN_DIR/pretrained.pt`` starts from. See
docs/training.md, "Self-supervised pretraining".
"""

from __future__ import annotations

import argparse

from organseg.cli.train import add_run_options
from organseg.values import FINITE, option

#: the verb's line in ``organseg --help``
HELP = "pretrain the Swin-Unet encoder on unlabeled scans (masked image modelling, SimMIM)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pretrain",
        help=HELP,
        description="Pretrain the Swin-Unet encoder by masked image modelling (SimMIM) on images only: the "
        "training split of prepared datasets (labels ignored) and folders of NIfTI / DICOM volumes. Writes "
        "RUN_DIR/pretrained.pt for model.pretrained. Validation and test data are refused.",
    )
    p.add_argument(
        "config",
        metavar="PRESET_OR_YAML",
        nargs="?",
        default="swin_unet_simmim",
        help="a pretraining preset or YAML file (default %(default)s)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        action="append",
        default=[],
        help="a prepared dataset folder: its training slices, labels ignored (repeatable)",
    )
    p.add_argument(
        "--volumes",
        metavar="DIR",
        action="append",
        default=[],
        help="NIfTI files or DICOM series, sliced as prepare slices (repeatable; with --intensity)",
    )
    p.add_argument(
        "--intensity",
        choices=("ct", "mri", "minmax"),
        help="how --volumes intensities become [0, 1]: ct (HU window), mri (z-score), minmax",
    )
    p.add_argument(
        "--window",
        type=option(FINITE),
        nargs=2,
        metavar=("LO", "HI"),
        help="HU window of --intensity ct (default -125 275, Synapse's)",
    )
    add_run_options(p, "pretrain.mask_ratio=0.5")
    return p


def run(args: argparse.Namespace) -> int:
    from organseg.errors import ConfigError
    from organseg.training.config import apply_overrides
    from organseg.training.pretrain import load_pretrain_config, pretrain

    if args.volumes and args.intensity is None:
        raise ConfigError("--volumes: say how to map their intensities with --intensity ct, mri or minmax")
    if (args.intensity or args.window) and not args.volumes:
        raise ConfigError(
            "--intensity and --window apply to --volumes folders (a --data dataset maps its own)"
        )
    if args.window and args.intensity != "ct":
        raise ConfigError(f"--window is a CT window in HU; it needs --intensity ct (got {args.intensity})")
    sources: list = [{"path": folder, "kind": "dataset"} for folder in args.data]
    for folder in args.volumes:
        entry = {"path": folder, "kind": "volumes", "intensity": args.intensity}
        if args.window:
            entry["window"] = list(args.window)
        sources.append(entry)
    overrides = list(args.overrides)
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = apply_overrides(load_pretrain_config(args.config), overrides)
    summary = pretrain(cfg, sources, args.out, resume=args.resume)
    print(
        f"organseg pretrain: {summary['stopped']} after {summary['iterations']} iterations "
        f"({summary['epochs']} epochs, {summary['images_per_second']} img/s); encoder weights "
        f"{summary['encoder']}: fine-tune with --set model.pretrained={summary['encoder']}"
    )
    return 0
