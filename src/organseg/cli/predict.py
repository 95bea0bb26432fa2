"""``organseg predict CHECKPOINT INPUT [INPUT ...] --out OUT [--ensemble CKPT ...] [--tta] [--overwrite]
[--format nifti|dicom-seg|both] [--viewer] [--overlay [OUT.png]] [--series UID_OR_DESCRIPTION]``: segment
NIfTI files, DICOM series folders, DICOMDIR media exports, folders of scans and glob patterns; each label map
keeps its input's size, spacing, origin and direction. See docs/evaluation.md."""

from __future__ import annotations

import argparse
import sys

from organseg.values import POSITIVE_INT, option

#: the verb's line in ``organseg --help``
HELP = "segment NIfTI files or DICOM series with trained networks (one, an ensemble, TTA)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help=HELP,
        description=(
            "Apply the checkpoint's preprocessing (e.g. the CT window) to each INPUT, predict slice by slice "
            "along the axial axis and write a label map with the input's geometry, plus a JSON sidecar with "
            "the class names and per-class volumes in millilitres. With one INPUT, --out may name the label "
            "map (OUT.nii.gz); otherwise --out is a folder and every case is named after its input "
            "(DIR/NAME.nii.gz, NAME.json, NAME.dcm, NAME.html, NAME.png). A case whose files all exist and "
            "read back whole is skipped unless --overwrite (one with a damaged file is redone, and said); an "
            "option that cannot apply to the inputs is refused; a case that fails is reported at the end and "
            "the others go on (exit 1 if any failed)."
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="checkpoint file (organseg's or an official Swin-Unet .pth), run folder, compare study folder, "
        "or an ONNX model from organseg export",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="NIfTI files, DICOM series folders, folders of scans, globs",
    )
    p.add_argument(
        "--out", required=True, metavar="OUT", help="the label map (one input, OUT.nii.gz) or a folder"
    )
    p.add_argument(
        "--ensemble",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="more checkpoints, run folders or study folders: the softmax of all members is averaged",
    )
    p.add_argument(
        "--models", nargs="+", metavar="NAME", help="only these networks of a study folder (e.g. swin_unet)"
    )
    p.add_argument("--tta", action="store_true", help="average over the mirror flips seen in training (4x)")
    p.add_argument(
        "--format",
        dest="formats",
        default="nifti",
        choices=("nifti", "dicom-seg", "both"),
        help="nifti (default): the label map; dicom-seg: a DICOM Segmentation referencing the input series "
        "(DICOM inputs only; written as OUT_STEM.dcm, or NAME.dcm in the --out folder; needs "
        "organseg[dicom]); both",
    )
    p.add_argument("--viewer", action="store_true", help="also write OUT_STEM.html, a slice viewer page")
    p.add_argument(
        "--overlay",
        nargs="?",
        const=True,
        metavar="OUT.png",
        help="also draw the slices with the most foreground (default name OUT_STEM.png)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist")
    p.add_argument(
        "--series",
        "--series-uid",
        dest="series_uid",
        metavar="UID_OR_DESCRIPTION",
        help="which DICOM series, by SeriesInstanceUID or SeriesDescription, when a folder holds several "
        "(a DICOMDIR export without it: every series is a case)",
    )
    p.add_argument(
        "--batch-size", type=option(POSITIVE_INT), default=16, help="slices per forward pass (default 16)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),  # organseg.precision.INFERENCE_PRECISIONS (no torch here)
        help="auto (default): bf16 where the hardware has fast bf16 (a few boundary voxels differ from "
        "fp32), else fp32; fp32 for ONNX models",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    return p


def run(args: argparse.Namespace) -> int:
    from organseg.prediction.predict import expand_inputs, load_predictor, plan_cases, predict_many
    from organseg.progress import progress_write

    inputs = expand_inputs(args.inputs)
    cases = plan_cases(
        inputs,
        args.out,
        formats=args.formats,
        viewer=args.viewer,
        overlay=args.overlay,
        series=args.series_uid,
    )
    predictor = load_predictor(
        args.checkpoint,
        ensemble=args.ensemble,
        models=args.models,
        tta=args.tta,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
    )
    for note in predictor.notes:
        print(f"organseg predict: {note}")
    print(f"organseg predict: precision {predictor.precision} ({predictor.precision_choice})")
    outcomes = predict_many(
        predictor,
        cases,
        sources=[args.checkpoint, *args.ensemble],
        given=args.inputs,
        overwrite=args.overwrite,
        series_uid=args.series_uid,
        on_redo=lambda line: progress_write(f"organseg predict: {line}"),
    )
    if len(outcomes) == 1 and outcomes[0].status == "failed":
        from organseg.errors import OrgansegError

        raise OrgansegError(outcomes[0].reason)  # one case: the usual one-line error, exit 2
    for o in outcomes:
        for warning in (o.info or {}).get("warnings") or []:
            print(f"organseg predict: warning: {warning}", file=sys.stderr)
        if o.status == "done" and o.info is not None:
            vols = [f"{c['name']} {c['volume_ml']:.1f} mL" for c in o.info["classes"][1:] if c["voxels"]]
            print(f"{o.case.name}: {', '.join(vols) or 'no foreground'}")
            seg = o.info.get("dicom_seg") or {}
            if seg.get("written") is False:
                print(f"organseg predict: {o.case.name}: no DICOM-SEG written: {seg['reason']}")
            written = ", ".join(str(p) for p in o.case.outputs.values() if p.is_file())
            print(f"organseg predict: wrote {written}")
    skipped = [o for o in outcomes if o.status == "skipped"]
    failed = [o for o in outcomes if o.status == "failed"]
    if len(outcomes) > 1 or skipped:
        done = len(outcomes) - len(skipped) - len(failed)
        redone = sum(bool(o.redone) for o in outcomes)
        print(
            f"organseg predict: {done} done, {len(skipped)} skipped (outputs exist), {len(failed)} failed"
            + (f"; {redone} redone (a previous output was damaged)" if redone else "")
        )
        for o in skipped:
            print(f"  skipped {o.case.input}: {o.reason}")
        for o in failed:
            print(f"  FAILED {o.case.input}: {o.reason}")
    return 1 if failed else 0
