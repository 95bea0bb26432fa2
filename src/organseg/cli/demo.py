"""``organseg demo [--out demo_out] [--fast]``: the whole study on a fresh machine with no data
(:func:`organseg.study.run_demo`; see docs/compare.md)."""

from __future__ import annotations

import argparse

#: the verb's line in ``organseg --help``
HELP = "the main job on built-in SYNTHETIC data: phantom -> prepare -> train both networks -> compare"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help=HELP,
        description=(
            "On a machine with no data: write SYNTHETIC phantom CT cases, prepare them as Synapse, train "
            "U-Net and Swin-Unet at reduced size with a reduced schedule that fits two CPU cores (presets "
            "demo_unet, demo_swin_unet), test both with both metric protocols, and write OUT/comparison.md "
            "plus each run's report. Reuses whatever an earlier call finished."
        ),
    )
    p.add_argument(
        "--out", metavar="DIR", help="output folder (default demo_out, or demo_out/fast with --fast)"
    )
    p.add_argument(
        "--fast", action="store_true", help="a tiny smoke run of the same steps (seconds; no real DSC)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="force one precision for both networks (default: the presets' choice, fp32 where the CPU has no "
        "fast bf16)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from organseg.study.demo import run_demo

    run_demo(args.out, fast=args.fast, device=args.device, precision=args.precision)
    return 0
