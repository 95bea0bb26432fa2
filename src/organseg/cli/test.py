"""``organseg test RUN_DIR_OR_CHECKPOINT --data DIR [--split test|val] [--checkpoint best|last|epoch_N]
[--save-nifti]``: the reference test protocol and the corrected one, results in ``results/<split>_<ckpt>/``.
See docs/evaluation.md."""

from __future__ import annotations

import argparse

from organseg.values import POSITIVE_INT, option

#: the verb's line in ``organseg --help``
HELP = "evaluate a trained network (reference and corrected metrics, paper-format table, report)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "test",
        help=HELP,
        description=(
            "Evaluate a run's checkpoint on a dataset split with the reference test protocol (TransUNet / "
            "Swin-Unet test.py: slice-wise cubic zoom, MedPy Dice and HD95 in voxels, the (1,0)/(0,0) edge "
            "rules) and the corrected protocol (HD95 in mm, absent organs excluded, missed organs counted). "
            "Writes RUN_DIR/results/<split>_<checkpoint>/ and RUN_DIR/report.md."
        ),
    )
    p.add_argument(
        "target",
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="a run folder, a checkpoint file (organseg .pt or an official Swin-Unet .pth), an ONNX model, "
        "or a compare study folder (all its runs, as an ensemble)",
    )
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the run's data.root)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="default test")
    p.add_argument(
        "--checkpoint",
        metavar="NAME",
        help="best, last or epoch_N inside RUN_DIR/checkpoints (default best.pt, else last.pt)",
    )
    p.add_argument("--save-nifti", action="store_true", help="write image, prediction, truth NIfTI")
    p.add_argument("--out", metavar="DIR", help="default RUN_DIR/results/<split>_<ckpt>")
    p.add_argument(
        "--batch-size", type=option(POSITIVE_INT), default=16, help="slices per forward pass (default 16)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),  # organseg.precision.INFERENCE_PRECISIONS (no torch here)
        help="auto (default): bf16 where the hardware has fast bf16, checked against fp32 on the first case "
        "(fp32 for the whole run if it disagrees), else fp32; fp32: the reference protocol's numbers exactly",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--reference-loop", action="store_true", help="one slice per forward pass, as the reference (slower)"
    )
    p.add_argument(
        "--max-cases", type=option(POSITIVE_INT), metavar="N", help="only the first N cases (a quick look)"
    )
    p.add_argument("--no-report", action="store_true", help="do not (re)write report.md")
    p.add_argument("--no-viewer", action="store_true", help="no HTML viewer page per case")
    p.add_argument(
        "--ensemble",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="more checkpoints, run folders or study folders: each is tested alone, then the softmax "
        "average of all (results in <split>_<checkpoint>_ensembleN)",
    )
    p.add_argument(
        "--models", nargs="+", metavar="NAME", help="only these networks of a study folder (e.g. swin_unet)"
    )
    p.add_argument(
        "--tta", action="store_true", help="average over the mirror flips seen in training (4x the passes)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from organseg.evaluation.tester import run_test

    summary = run_test(
        args.target,
        data=args.data,
        split=args.split,
        checkpoint=args.checkpoint,
        save_nifti=args.save_nifti,
        out=args.out,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        reference_loop=args.reference_loop,
        max_cases=args.max_cases,
        report=not args.no_report,
        viewer=not args.no_viewer,
        ensemble=args.ensemble,
        models=args.models,
        tta=args.tta,
    )
    for note in summary.get("orientation_notes") or []:
        print(f"organseg test: {note}")
    print(summary["table"])
    print(f"organseg test: {summary['precision_note']}")
    print(
        f"organseg test: {summary['cases']} volume(s) of {summary.get('subjects', summary['cases'])} "
        f"subject(s) on the {summary['split']} split; results in {summary['results_dir']}"
    )
    if summary.get("report"):
        print(f"organseg test: report {summary['report']}")
    return 0
