"""``organseg report RUN_DIR``: ``report.md`` with the results tables, overlays, per-organ DSC bars and
training curves (also written at the end of ``organseg test``). See docs/evaluation.md."""

from __future__ import annotations

import argparse

#: the verb's line in ``organseg --help``
HELP = "write report.md and figures for a run folder"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help=HELP,
        description=(
            "Build RUN_DIR/report.md and RUN_DIR/report/*.png from the files in the run folder: "
            "results/*/summary.json (tables, DSC bars), results/*/overlay_slices.npz (overlays) and "
            "metrics.jsonl (training curves). Also accepts a single results folder."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (or one results/<split>_<ckpt> folder)")
    return p


def run(args: argparse.Namespace) -> int:
    from organseg.reporting.report import write_report

    print(f"organseg report: wrote {write_report(args.run_dir)}")
    return 0
