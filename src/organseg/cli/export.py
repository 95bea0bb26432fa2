"""``organseg export RUN_DIR_OR_CHECKPOINT --onnx OUT.onnx [--checkpoint best|last|epoch_N]``: the network
as an ONNX model (dynamic batch, fp32 logits) with the checkpoint's class names and preprocessing in its
metadata, for ONNX Runtime. See docs/evaluation.md."""

from __future__ import annotations

import argparse

#: the verb's line in ``organseg --help``
HELP = "export a trained network to ONNX (needs the onnx extra)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help=HELP,
        description=(
            "Write the checkpoint's network as an ONNX model: input 'image' (B, 1, H, W) float32 in [0, 1] "
            "after the checkpoint's preprocessing, output 'logits' (B, classes, H, W) float32, any batch B, "
            "H x W the training input size. Class names, preprocessing, model name, input size, organseg "
            "version and the checkpoint's path and sha256 go into the model's metadata (JSON strings). "
            "The export is checked against PyTorch (logits within 1e-4) before the file is written. "
            "Needs: pip install 'organseg[onnx]'."
        ),
    )
    p.add_argument(
        "target",
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="a run folder or a checkpoint file (organseg .pt or an official Swin-Unet .pth: its classes and "
        "preprocessing are then the reference defaults, as predict takes them)",
    )
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument(
        "--checkpoint",
        metavar="NAME",
        help="best, last or epoch_N inside RUN_DIR/checkpoints (default best.pt, else last.pt)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from organseg.inference.onnx import export_onnx

    info = export_onnx(args.target, args.onnx, checkpoint=args.checkpoint)
    for note in info.get("notes") or []:
        print(f"organseg export: {note}")
    h, w = info["input_size"]
    check = info["export_check"]
    print(
        f"organseg export: wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB): {info['model_name']}, "
        f"{len(info['class_names'])} classes, input (B, 1, {h}, {w}), max |logit difference| vs PyTorch "
        f"{check['max_abs_logit_diff']:.2g}"
    )
    return 0
