"""``organseg predict CHECKPOINT INPUT --out OUT.nii.gz [--overlay OUT.png]``: segment a NIfTI file or a DICOM
series folder; the label map keeps the input's size, spacing, origin and direction. See docs/evaluation.md."""

from __future__ import annotations

import argparse

from organseg.values import POSITIVE_INT, option


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="segment a NIfTI file or DICOM series with a trained network",
        description=(
            "Apply the checkpoint's preprocessing (e.g. the CT window) to INPUT, predict slice by slice "
            "along the axial axis and write a label map with the input's geometry, plus OUT.json with the "
            "class names and per-class volumes in millilitres."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run folder")
    p.add_argument("input", metavar="INPUT", help="NIfTI file or DICOM series folder")
    p.add_argument("--out", required=True, metavar="OUT.nii.gz", help="the label map to write")
    p.add_argument("--overlay", metavar="OUT.png", help="also draw the slices with the most foreground")
    p.add_argument("--series-uid", metavar="UID", help="which DICOM series, when the folder holds several")
    p.add_argument(
        "--batch-size", type=option(POSITIVE_INT), default=16, help="slices per forward pass (default 16)"
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="default fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from organseg.evaluation.predict import predict_file, sidecar_path
    from organseg.evaluation.runs import resolve_target

    ckpt = Path(args.checkpoint)
    if ckpt.is_dir():
        ckpt = resolve_target(ckpt).checkpoint_path
    info = predict_file(
        ckpt,
        args.input,
        args.out,
        overlay=args.overlay,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        series_uid=args.series_uid,
    )
    width = max(len(c["name"]) for c in info["classes"])
    for c in info["classes"][1:]:
        print(f"  {c['name']:<{width}}  {c['volume_ml']:10.1f} mL")
    print(f"organseg predict: wrote {args.out} and {sidecar_path(args.out)}"
          + (f" and {args.overlay}" if args.overlay else ""))
    return 0
