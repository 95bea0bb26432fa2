"""Segment a new scan (NIfTI file or DICOM series folder) with a trained checkpoint.

The raw intensities are mapped with the preprocessing recorded in the checkpoint (e.g. the Synapse CT
window [-125, 275] HU -> [0, 1]); slices along the axial axis go through :func:`predict_volume` exactly as in
the test protocol; the label map is written with the input's size, spacing, origin and direction. There is no
resampling, as in the reference: each slice is zoomed to the network size and back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from organseg.checkpoint import model_from_checkpoint, read_checkpoint
from organseg.device import resolve_device
from organseg.errors import ConfigError, DataError
from organseg.evaluation.inference import predict_volume
from organseg.evaluation.runs import checkpoint_patch_size
from organseg.fileio import check_distinct, check_output, check_output_file, staged
from organseg.values import POSITIVE_INT, check_value

_OUT_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


def axial_axis(direction: tuple[float, ...] | list[float]) -> int:
    """The array axis (0, 1 or 2 of a (D, H, W) array) whose voxel direction is closest to the patient's
    head-foot axis. The 3x3 direction matrix is row-major with one column per image axis (x, y, z), which are
    array axes 2, 1, 0."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    image_axis = int(np.argmax(np.abs(d[2])))  # the z (superior) component of each column
    return 2 - image_axis


def sidecar_path(out: str | Path) -> Path:
    """``OUT.nii.gz`` -> ``OUT.json``."""
    out = Path(out)
    name = out.name
    for suffix in _OUT_SUFFIXES:
        if name.lower().endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".json")
    return out.with_name(name + ".json")


def class_volumes(
    labels: np.ndarray, class_names: list[str], spacing: tuple[float, ...]
) -> list[dict[str, Any]]:
    """Voxels and millilitres (spacing in mm; 1 mL = 1000 mm^3) of every class, background included."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return [
        {"index": i, "name": name, "voxels": int(n), "volume_ml": round(float(n) * voxel_ml, 3)}
        for i, (name, n) in enumerate(zip(class_names, counts, strict=False))
    ]


def check_predict_outputs(
    checkpoint: str | Path | dict, input_path: str | Path, out: str | Path, overlay: str | Path | None
) -> None:
    """Before any work: the label map, its sidecar and the overlay must be writable places, distinct, and
    none of them may be (or lie inside) the input scan or DICOM folder or the checkpoint."""
    inputs = {"INPUT": input_path, "CHECKPOINT": None if isinstance(checkpoint, dict) else checkpoint}
    outputs = {"--out": out, "--out's sidecar": sidecar_path(out), "--overlay": overlay}
    for what, path in outputs.items():
        if path is not None:
            check_output(path, inputs, what=what)
            check_output_file(path, what=what)
    check_distinct(outputs)


def predict_file(
    checkpoint: str | Path | dict,
    input_path: str | Path,
    out: str | Path,
    *,
    overlay: str | Path | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | torch.device | None = "cpu",
    series_uid: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict ``input_path`` and write the label map to ``out`` and its JSON sidecar (class names and
    volumes); optionally an overlay PNG. Returns the sidecar's content."""
    from organseg.data.io import read_image, write_image
    from organseg.data.preprocess import apply_preprocessing

    out = Path(out)
    if not out.name.lower().endswith(_OUT_SUFFIXES):
        raise ConfigError(f"--out {out}: the label map needs an image suffix ({', '.join(_OUT_SUFFIXES)})")
    check_value("--batch-size", batch_size, POSITIVE_INT)
    check_predict_outputs(checkpoint, input_path, out, overlay)
    device = resolve_device(device)
    source = "checkpoint" if isinstance(checkpoint, dict) else checkpoint
    ckpt = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    model, ckpt = model_from_checkpoint(ckpt, source=source)
    model.to(device)
    class_names = list(ckpt.get("class_names") or [])
    spec = ckpt.get("preprocessing") or {"kind": "none"}
    raw, geometry = read_image(input_path, series_uid=series_uid)
    if min(raw.shape) < 2:
        raise DataError(f"{input_path}: image of shape {raw.shape} is a single slice; a 3-D scan is needed")
    image = apply_preprocessing(raw, spec, source=str(input_path))
    # Slice along the axial axis; reference data are stored axial-first, other acquisitions are turned to it.
    axis = axial_axis(geometry.direction)
    image_ax = np.moveaxis(image, axis, 0)
    pred_ax = predict_volume(
        model, np.ascontiguousarray(image_ax), checkpoint_patch_size(ckpt), batch_size, precision, device,
        progress=progress,
    )
    pred = np.ascontiguousarray(np.moveaxis(pred_ax, 0, axis))
    if not class_names:
        class_names = ["background"] + [f"class_{i}" for i in range(1, int(pred.max()) + 1)]
    info = {
        "input": str(input_path),
        "output": str(out),
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, dict) else None,
        "model_name": ckpt.get("model_name"),
        "shape": list(pred.shape),
        **geometry.to_dict(),
        "axial_axis": axis,
        "preprocessing": spec,
        "classes": class_volumes(pred, class_names, geometry.spacing),
    }
    # The label map and its sidecar appear together or not at all (a map without its JSON is half a result).
    with staged(out, sidecar_path(out), suffix=True) as (tmp_map, tmp_json):
        write_image(pred.astype(np.uint8 if len(class_names) <= 256 else np.int32), geometry, tmp_map,
                    atomic=False)  # fmt: skip
        tmp_json.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    if overlay is not None:
        plot_prediction(image_ax, np.asarray(pred_ax), class_names, overlay, title=Path(input_path).name)
    return info


def plot_prediction(
    image: np.ndarray, pred: np.ndarray, class_names: list[str], path: str | Path, title: str = "", k: int = 3
) -> Path:
    """``k`` axial slices with the most predicted foreground: image and overlay side by side, a legend."""
    from matplotlib.patches import Patch

    from organseg.evaluation.report import _pyplot, _save_figure, class_color, colorize

    plt = _pyplot()
    area = (pred > 0).reshape(pred.shape[0], -1).sum(axis=1)
    zs = sorted(np.argsort(-area, kind="stable")[: min(k, pred.shape[0])].tolist())
    fig, axes = plt.subplots(len(zs), 2, figsize=(7, 3.3 * len(zs)), squeeze=False)
    for r, z in enumerate(zs):
        for c in range(2):
            ax = axes[r, c]
            ax.imshow(image[z], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if c:
                ax.imshow(colorize(pred[z], len(class_names)), alpha=0.5, interpolation="nearest")
            ax.set_title(f"{title} slice {z}" + (": prediction" if c else ""), fontsize=8)
            ax.axis("off")
    present = [c for c in range(1, len(class_names)) if np.any(pred == c)]
    handles = [Patch(color=class_color(c), label=class_names[c]) for c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save_figure(fig, Path(path))
