"""What an official Swin-Unet checkpoint does not record, and the one rule every verb fills it in by.

An official file (``torch.save(model.state_dict())`` of the Swin-Unet trainer, read by
:func:`organseg.checkpoint.read_checkpoint` with ``official=True``) names neither its classes, nor how
intensities were mapped, nor the orientation of its training slices. ``test`` takes the classes from the
dataset; ``predict`` and ``export`` use the reference defaults (9 classes: the Synapse classes and CT window
[-125, 275] HU; 4 classes: ACDC, per-image min-max) and say so; the orientation is the TransUNet Synapse
files' (9 classes) or none (ACDC), as for organseg's readers of those files. Used by ``inference.sources``
(test, predict) and ``inference.onnx`` (export), which is why it stands apart from both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from organseg.data.classes import ACDC_CLASSES, SYNAPSE_CLASSES
from organseg.data.synapse import TRANSUNET_ORIENTATION
from organseg.models import head_key


def class_count(ckpt: dict[str, Any]) -> int:
    """The number of classes the network's head outputs (else its ``num_classes`` argument)."""
    head = head_key(ckpt["model_name"])
    weights = ckpt.get("model") or {}
    if head in weights:
        return int(weights[head].shape[0])
    return int(ckpt.get("model_args", {}).get("num_classes", 0))


def official_orientation(num_classes: int) -> str | None:
    """The orientation of an official checkpoint's training slices: the TransUNet Synapse files' for 9
    classes, none (ACDC, scans as stored) otherwise."""
    return TRANSUNET_ORIENTATION if num_classes == len(SYNAPSE_CLASSES) else None


def reference_defaults(num_classes: int) -> tuple[list[str], dict[str, Any], str]:
    """Class names and preprocessing for a network whose checkpoint does not record them (official
    Swin-Unet checkpoints), as the reference data were prepared, and the sentence that says so."""
    if num_classes == len(ACDC_CLASSES):
        return list(ACDC_CLASSES), {"kind": "minmax"}, "the ACDC classes and per-image min-max intensities"
    names = (
        list(SYNAPSE_CLASSES)
        if num_classes == len(SYNAPSE_CLASSES)
        else (["background"] + [f"class_{i}" for i in range(1, num_classes)])
    )
    return (
        names,
        {"kind": "ct_window", "window": [-125, 275]},
        (
            (
                "the Synapse classes"
                if num_classes == len(SYNAPSE_CLASSES)
                else f"{num_classes} unnamed classes"
            )
            + " and the reference CT window [-125, 275] HU"
        ),
    )


def with_reference_defaults(ckpt: dict[str, Any], source: str | Path) -> tuple[dict[str, Any], str]:
    """An official checkpoint completed with the reference classes, preprocessing and orientation (what a
    self-contained file such as an ONNX export must carry), and the note that says so."""
    n = class_count(ckpt)
    names, spec, said = reference_defaults(n)
    orientation = official_orientation(n)
    note = (
        f"{source}: official Swin-Unet checkpoint, {n} classes from its head; it records no classes nor "
        f"preprocessing: using {said}; orientation {orientation or 'none'}"
    )
    return {**ckpt, "class_names": names, "preprocessing": spec, "orientation": orientation}, note
