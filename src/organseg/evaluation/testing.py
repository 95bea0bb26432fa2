"""``organseg test`` as a function: checkpoint + dataset -> results folder (+ report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from organseg.checkpoint import model_from_checkpoint, read_checkpoint
from organseg.data.base import SegmentationDataset, Volume
from organseg.device import resolve_device
from organseg.errors import ConfigError, DataError
from organseg.evaluation.evaluate import evaluate_dataset
from organseg.evaluation.report import OVERLAY_FILE, OverlayCollector, write_report
from organseg.evaluation.runs import checkpoint_patch_size, resolve_target, results_dir
from organseg.evaluation.tables import results_table
from organseg.evaluation.viewer import VIEWER_DIR, CaseViewers, chain
from organseg.fileio import check_output, check_output_dir, check_output_file
from organseg.values import OPTIONAL_POSITIVE_INT, POSITIVE_INT, check_value


def _open_dataset(data: str | Path | SegmentationDataset | None, ckpt: dict[str, Any]) -> SegmentationDataset:
    if isinstance(data, SegmentationDataset):
        return data
    root = data if data is not None else (ckpt.get("config") or {}).get("data", {}).get("root")
    if root is None:
        raise ConfigError("no test data: pass --data DIR (the checkpoint's configuration has no data.root)")
    from organseg.data import open_dataset

    return open_dataset(root)


def _nifti_writer(folder: Path, collector: OverlayCollector):
    """on_case callback: the reference's ``{case}_img/_pred/_gt.nii.gz``, with the case's real geometry."""
    from organseg.data.io import Geometry, write_image

    def on_case(vol: Volume, pred: np.ndarray, metrics: np.ndarray) -> None:
        collector(vol, pred, metrics)
        geom = Geometry(
            spacing=tuple(vol.spacing) if vol.spacing is not None else (1.0, 1.0, 1.0),
            origin=tuple(vol.meta.get("origin", (0.0, 0.0, 0.0))),
            direction=tuple(vol.meta.get("direction", Geometry().direction)),
        )
        write_image(vol.image.astype(np.float32), geom, folder / f"{vol.case_id}_img.nii.gz")
        write_image(pred, geom, folder / f"{vol.case_id}_pred.nii.gz")
        if vol.label is not None:
            write_image(vol.label, geom, folder / f"{vol.case_id}_gt.nii.gz")

    return on_case


def run_test(
    target: str | Path,
    *,
    data: str | Path | SegmentationDataset | None = None,
    split: str = "test",
    checkpoint: str | None = None,
    save_nifti: bool = False,
    out: str | Path | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | None = "auto",
    reference_loop: bool = False,
    max_cases: int | None = None,
    report: bool = True,
    viewer: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run folder's checkpoint (or a checkpoint file) on ``split`` and write the results folder.

    Returns the summary (as in ``summary.json``) plus ``results_dir``, ``table`` and ``report`` (a path or
    None). With ``viewer``, every case also gets an HTML viewer page, ``viewer/<case>.html`` in the results
    folder, written as the case is scored (predictions are not kept in memory to pick cases afterwards).
    """
    check_value("--batch-size", batch_size, POSITIVE_INT)
    check_value("--max-cases", max_cases, OPTIONAL_POSITIVE_INT)
    tgt = resolve_target(target, checkpoint)
    dev = resolve_device(device)
    # Checked before the dataset is opened: a bad checkpoint or device fails at once.
    model, ckpt = model_from_checkpoint(read_checkpoint(tgt.checkpoint_path), source=tgt.checkpoint_path)
    dataset = _open_dataset(data, ckpt)
    names = list(ckpt.get("class_names") or [])
    if names and [n.lower() for n in names] != [str(n).lower() for n in dataset.class_names]:
        raise DataError(
            f"{tgt.checkpoint_path}: the network was trained on classes {names}, but the dataset "
            f"{getattr(dataset, 'root', dataset.name)} has {list(dataset.class_names)}"
        )
    model.to(dev)
    folder = results_dir(tgt, split, out)
    # Before the (long) evaluation: the results folder may not hold or sit in the data or the checkpoint.
    what = "--out" if out is not None else "results folder"
    check_output(
        folder,
        {"--data": getattr(dataset, "root", None), "CHECKPOINT": tgt.checkpoint_path},
        what=what,
        folder=True,
    )
    check_output_dir(folder, what=what)
    if report:
        report_root = tgt.run_dir if tgt.run_dir is not None and out is None else folder
        check_output_file(Path(report_root) / "report.md", what="")
    collector = OverlayCollector()
    on_case = chain(
        _nifti_writer(folder / "nifti", collector) if save_nifti else collector,
        CaseViewers(folder / VIEWER_DIR, dataset.class_names) if viewer else None,
    )
    result = evaluate_dataset(
        model,
        dataset,
        split,
        patch_size=checkpoint_patch_size(ckpt),
        batch_size=batch_size,
        precision=precision,
        device=dev,
        reference_loop=reference_loop,
        max_cases=max_cases,
        progress=progress,
        on_case=on_case,
    )
    extra = {
        "model_name": ckpt.get("model_name"),
        "checkpoint": str(tgt.checkpoint_path),
        "data": str(getattr(dataset, "root", dataset.name)),
        "precision": precision,
        "device": str(dev),
        "inference": "reference loop" if reference_loop else f"batched ({batch_size} slices)",
    }
    result.write(folder, extra)
    collector.save(folder / OVERLAY_FILE)
    summary = {**result.summary(), **extra, "results_dir": str(folder)}
    summary["table"] = results_table(summary, ckpt.get("model_name"))
    report_root = tgt.run_dir if tgt.run_dir is not None and out is None else folder
    summary["report"] = str(write_report(report_root)) if report else None
    return summary
