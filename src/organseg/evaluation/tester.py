"""``organseg test`` as a function: checkpoint + dataset -> results folder (+ report)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from organseg.data.base import SegmentationDataset, Volume
from organseg.data.classes import check_same_classes
from organseg.data.detect import resolve_dataset
from organseg.data.identity import check_same_dataset, dataset_fingerprint, mismatch_message, recorded_root
from organseg.device import resolve_device
from organseg.errors import DataError
from organseg.evaluation.agreement import describe
from organseg.evaluation.evaluate import evaluate_dataset
from organseg.fileio import check_output, check_output_dir, check_output_file, file_sha256
from organseg.formatting import num
from organseg.imageio.volumes import Geometry, write_image
from organseg.inference.onnx import OnnxModel
from organseg.inference.sources import (
    class_count,
    combined,
    expand_source,
    load_member,
    load_members,
    network_orientation,
)
from organseg.inference.targets import RunTarget, checkpoint_patch_size, results_dir
from organseg.locks import folder_lock
from organseg.precision import resolve_precision
from organseg.reporting.report import OverlayCollector, write_report
from organseg.reporting.tables import results_table
from organseg.reporting.viewer import VIEWER_DIR, CaseViewers, chain
from organseg.results import AgreementRecord, MemberSummary, ProtocolMeans, ResultsSummary, SummaryExtra
from organseg.run import ResultsDir, RunDir
from organseg.values import OPTIONAL_POSITIVE_INT, POSITIVE_INT, check_value


class _RunTestCore(TypedDict):
    results_dir: str  #: the results folder written
    table: str  #: the Markdown results table the command prints (with the members' table below it)
    report: str | None  #: the report written, or None with ``report=False``


class RunTestResult(ResultsSummary, _RunTestCore, total=False):
    """What :func:`run_test` returns: the ``summary.json`` written (:class:`ResultsSummary`, with
    ``--ensemble`` or ``--tta`` its ``members``), then ``results_dir``, ``table`` and ``report``."""


def _open_dataset(
    data: str | Path | SegmentationDataset | None, ckpt: dict[str, Any], tgt: RunTarget, whole: bool = False
) -> SegmentationDataset:
    """The checkpoint's dataset (its ``data.fold`` view), or with ``whole`` the dataset's own splits: the
    fold models of a cross-validation tested as one ensemble (every fold saw all but its own subjects).

    Without ``data``, the folder the run recorded (:mod:`organseg.data.identity`), which must still be the
    dataset it was trained on; a ``data`` given that is another dataset is tested as asked, with a warning."""
    missing = "no test data: pass --data DIR (the checkpoint's configuration has no data.root)"
    config = ckpt.get("config")
    record = ckpt.get("dataset")
    source = tgt.checkpoint_path
    if data is None:
        env = RunDir(tgt.run_dir).env() if tgt.run_dir is not None else None
        root = recorded_root(record, config, source, env.raw.get("cwd") if env else None)
        if root is not None:
            config = {**(config or {}), "data": {**((config or {}).get("data") or {}), "root": root}}
    if whole and config:
        config = {**config, "data": {**(config.get("data") or {}), "fold": None}}
    dataset = resolve_dataset(data, config, missing)
    if data is None:
        check_same_dataset(record, dataset, source)
    elif record:
        note = mismatch_message(record, dataset, source)
        if note:
            print(f"organseg test: warning: {note}; testing on it as asked", file=sys.stderr, flush=True)
    return dataset


def _nifti_writer(folder: Path, collector: OverlayCollector):
    """on_case callback: the reference's ``{case}_img/_pred/_gt.nii.gz``, with the case's real geometry."""

    def on_case(vol: Volume, pred: np.ndarray, metrics: np.ndarray) -> None:
        collector(vol, pred, metrics)
        geom = Geometry.of_volume(vol)
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
    ensemble: Sequence[str | Path] = (),
    models: Sequence[str] | None = None,
    tta: bool = False,
) -> RunTestResult:
    """Evaluate a run folder's checkpoint (or a checkpoint file) on ``split`` and write the results folder.

    Returns the summary (as in ``summary.json``) plus ``results_dir``, ``table`` and ``report`` (a path or
    None). With ``viewer``, every case also gets an HTML viewer page, ``viewer/<case>.html`` in the results
    folder, written as the case is scored (predictions are not kept in memory to pick cases afterwards).

    With ``ensemble`` (more checkpoints, run or study folders; a study folder as ``target`` counts too) or
    ``tta``, every member is first tested alone (its own results folder, as ``organseg test MEMBER`` would
    write it), then the softmax average is tested into ``<split>_<checkpoint>_ensembleN[_tta]`` beside the
    first member's results (or ``out``); the summary's ``members`` and ``table`` give the members beside it.

    ``precision``: fp32 (the default here: the reference protocol's numbers, bit-identical to the reference
    loop), bf16, fp16, or ``auto`` (the ``organseg test`` default): bf16 where the hardware has fast bf16
    (:func:`organseg.precision.resolve_precision`; fp32 for ONNX models and the reference loop), checked
    against fp32 on the split's first case, with a fall back to fp32 for the whole run when the check fails
    (:mod:`organseg.evaluation.agreement` states the rule). The summary records ``precision`` (the one used),
    ``precision_requested``, ``precision_choice``, ``agreement`` and ``precision_note``.
    """
    check_value("--batch-size", batch_size, POSITIVE_INT)
    check_value("--max-cases", max_cases, OPTIONAL_POSITIVE_INT)
    resolve_precision(precision, resolve_device(device))  # a precision the device lacks fails before any work
    targets = [t for s in (target, *ensemble) for t in expand_source(s, checkpoint=checkpoint, models=models)]
    common = dict(
        split=split,
        batch_size=batch_size,
        precision=precision,
        reference_loop=reference_loop,
        max_cases=max_cases,
        progress=progress,
    )
    if len(targets) == 1 and not tta:
        return _test_one(
            targets[0],
            data=data,
            save_nifti=save_nifti,
            out=out,
            device=device,
            report=report,
            viewer=viewer,
            **common,
        )
    dev = resolve_device(device)
    members = load_members([t.checkpoint_path for t in targets], dev)  # checked to agree before any case
    first = targets[0]
    tag = (f"_ensemble{len(targets)}" if len(targets) > 1 else "") + ("_tta" if tta else "")
    name = RunTarget(first.checkpoint_path, first.checkpoint_name + tag, first.run_dir)
    # Fold models of a cross-validation form one model of the whole dataset: tested on its own splits, and
    # each alone beside the ensemble, never over its run's held-out results.
    whole = any(((m.ckpt.get("config") or {}).get("data") or {}).get("fold") is not None for m in members)
    members_root = Path(out) if out else (results_dir(name, split) if whole else None)
    member_out = [
        members_root / "members" / f"{k}_{t.checkpoint_name}" if members_root else None
        for k, t in enumerate(targets)
    ]
    # Every folder this call writes, checked before the first member is tested: a member's results folder
    # that cannot be written must not fail the call after the others' work.
    dataset = _open_dataset(data, members[0].ckpt, targets[0], whole)
    for k, t in enumerate(targets):
        _checked_results_folder(t, split, member_out[k], dataset, (), report=False)
    _checked_results_folder(name, split, out, dataset, [str(t.checkpoint_path) for t in targets], report)
    alone = [
        _test_one(
            t, data=data, out=member_out[k], device=dev, report=False, viewer=False, whole=whole, **common
        )
        for k, t in enumerate(targets)
    ]
    members_record: list[MemberSummary] = [
        {
            "checkpoint": m["checkpoint"],
            "results_dir": m["results_dir"],
            "reference": _means(m["reference"]),
            "corrected": _means(m["corrected"]),
        }
        for m in alone
    ]
    summary = _test_one(
        name,
        data=data,
        save_nifti=save_nifti,
        out=out,
        device=dev,
        report=report,
        viewer=viewer,
        model=combined(members, tta),
        ckpt=members[0].ckpt,
        sources=[str(t.checkpoint_path) for t in targets],
        tta=tta,
        whole=whole,
        orientation=network_orientation([m.ckpt for m in members], [m.source for m in members]),
        members=members_record,
        **common,
    )
    summary["table"] += "\n\n" + members_table(summary, alone)
    return summary


def _means(protocol: Mapping[str, Any]) -> ProtocolMeans:
    return {k: protocol.get(k) for k in ("mean_dice", "mean_hd95", "hd95_unit") if k in protocol}


def members_table(summary: RunTestResult, members: Sequence[RunTestResult | MemberSummary]) -> str:
    """Mean DSC / HD95 of each member tested alone and of their average, under both protocols."""
    what = "ensemble" if len(members) > 1 else "the network"
    what += " + mirror TTA" if summary.get("tta") else ""
    lines = [
        "| | DSC (reference) | HD95 (reference) | DSC (corrected) | HD95 (corrected) |",
        "|---|---|---|---|---|",
    ]

    def row(label: str, s: RunTestResult | MemberSummary) -> str:
        # The corrected means are None when no case has the organ pair they need (an organ missed
        # everywhere has no HD95): written as every table writes a missing number.
        r, c = s["reference"], s["corrected"]
        cells = [
            num(r["mean_dice"], scale=100),
            num(r["mean_hd95"]),
            num(c["mean_dice"], scale=100),
            num(c["mean_hd95"]),
        ]
        return f"| {label} | " + " | ".join(cells) + " |"

    for k, m in enumerate(members):
        lines.append(row(f"member {k + 1}: {m['checkpoint']}", m))
    lines.append(row(f"**{what}**", summary))
    return "\n".join(lines)


def _check_classes(tgt: RunTarget, ckpt: dict[str, Any], dataset: SegmentationDataset) -> None:
    """The network must have been trained on the dataset's classes: scores of a mismatched head are noise."""
    names = list(ckpt.get("class_names") or [])
    check_same_classes(
        names,
        dataset.class_names,
        source=tgt.checkpoint_path,
        names_are="the network was trained on classes",
        expected_are=f"the dataset {dataset.location} has",
    )
    # An official checkpoint names no classes: the dataset names them, and the head must count as many.
    if not names and class_count(ckpt) != dataset.num_classes:
        raise DataError(
            f"{tgt.checkpoint_path}: its class head has {class_count(ckpt)} outputs, but the dataset "
            f"{dataset.location} has {dataset.num_classes} classes"
        )


def precision_note(used: str, choice: str, agreement: AgreementRecord | None) -> str:
    """The sentence that says which precision a test ran at and why (console, ``summary.json``, report)."""
    note = f"precision {used} ({choice})"
    return note if agreement is None else f"{note}; checked {describe(agreement)}"


def _report_root(tgt: RunTarget, out: str | Path | None, folder: Path) -> Path:
    """Where the report goes: the run folder when testing a run into its own results, else the results."""
    return tgt.run_dir if tgt.run_dir is not None and out is None else folder


def _checked_results_folder(
    tgt: RunTarget,
    split: str,
    out: str | Path | None,
    dataset: SegmentationDataset,
    sources: Sequence[str],
    report: bool,
) -> Path:
    """The results folder, checked before the (long) evaluation: it may not hold or sit in the data or a
    checkpoint, and neither it nor the report may be unwritable."""
    folder = results_dir(tgt, split, out)
    what = "--out" if out is not None else "results folder"
    inputs: dict[str, Any] = {"--data": dataset.root, "CHECKPOINT": tgt.checkpoint_path}
    inputs.update({f"--ensemble member {k}": s for k, s in enumerate(sources[1:], start=1)})
    check_output(folder, inputs, what=what, folder=True)
    check_output_dir(folder, what=what)
    if report:
        check_output_file(RunDir(_report_root(tgt, out, folder)).report_file, what="")
    return folder


def _test_one(
    tgt: RunTarget,
    *,
    data: str | Path | SegmentationDataset | None,
    split: str,
    save_nifti: bool = False,
    out: str | Path | None,
    batch_size: int,
    precision: str,
    device: str | torch.device | None,
    reference_loop: bool,
    max_cases: int | None,
    report: bool,
    viewer: bool,
    progress: bool,
    model: torch.nn.Module | None = None,
    ckpt: dict[str, Any] | None = None,
    sources: Sequence[str] = (),
    tta: bool = False,
    whole: bool = False,
    orientation: tuple[str | None, list[str]] | None = None,
    members: list[MemberSummary] | None = None,
) -> RunTestResult:
    """One network (``tgt``'s checkpoint, or ``model`` with ``ckpt``'s fields) on ``split`` (of the whole
    dataset, not the checkpoint's fold, with ``whole``). ``orientation``: the network's orientation code and
    notes (:func:`organseg.inference.sources.network_orientation`), by default ``ckpt``'s."""
    dev = resolve_device(device)
    if model is None:
        # Checked before the dataset is opened: a bad checkpoint or device fails at once.
        member = load_member(tgt, dev)
        model, ckpt = member.model, member.ckpt
    assert ckpt is not None
    code, orientation_notes = orientation or network_orientation([ckpt], [str(tgt.checkpoint_path)])
    dataset = _open_dataset(data, ckpt, tgt, whole)
    _check_classes(tgt, ckpt, dataset)
    model.to(dev)
    folder = _checked_results_folder(tgt, split, out, dataset, sources, report)
    onnx = any(isinstance(m, OnnxModel) for m in model.modules())
    fp32_only = "ONNX Runtime runs fp32" if onnx else "the reference loop" if reference_loop else None
    chosen, choice = resolve_precision(precision, dev, fp32_only=fp32_only)
    with folder_lock(folder, "test"):  # one writer per results folder (organseg.locks)
        collector = OverlayCollector()
        on_case = chain(
            _nifti_writer(ResultsDir(folder).file(ResultsDir.NIFTI), collector) if save_nifti else collector,
            CaseViewers(folder / VIEWER_DIR, dataset.class_names) if viewer else None,
        )
        result = evaluate_dataset(
            model,
            dataset,
            split,
            patch_size=checkpoint_patch_size(ckpt),
            batch_size=batch_size,
            precision=chosen,
            device=dev,
            reference_loop=reference_loop,
            max_cases=max_cases,
            progress=progress,
            on_case=on_case,
            orientation=code,
            agreement_check=precision == "auto",
            on_warning=lambda line: print(f"organseg test: warning: {line}", file=sys.stderr, flush=True),
        )
        used = result.precision or chosen
        if used != chosen:
            choice += f"; fp32 after all: {chosen} failed the agreement check"
        extra: SummaryExtra = {
            "model_name": ckpt.get("model_name"),
            "checkpoint": str(tgt.checkpoint_path),
            "data": dataset.location,
            "precision": used,
            "precision_requested": precision,
            "precision_choice": choice,
            "agreement": result.agreement,
            "precision_note": precision_note(used, choice, result.agreement),
            "device": str(dev),
            "inference": "reference loop" if reference_loop else f"batched ({batch_size} slices)",
            "engine": "onnxruntime" if onnx else "torch",
            "orientation": code,
            "orientation_notes": orientation_notes,
        }
        # What the results are of, so that they are reused only for the same (organseg.run.ResultsDir.stale):
        # the checkpoint's bytes, the whole split or not, and the dataset.
        cut = max_cases is not None and max_cases < len(dataset.case_ids(split))
        extra.update(
            checkpoint_sha256=None if sources else file_sha256(tgt.checkpoint_path),
            max_cases=max_cases if cut else None,
            data_fingerprint=dataset_fingerprint(dataset)["digest"],
        )
        if sources:
            extra.update(ensemble=list(sources), tta=tta)
        if members is not None:
            extra.update(members=members)
        # summary.json is the results folder's completion mark: the overlays first, then the set whose last
        # file is the summary (ResultsDir.exists() is true only once everything is in place).
        collector.save(ResultsDir(folder).file(ResultsDir.OVERLAYS))
        result.write(folder, extra)
        summary: RunTestResult = {**result.summary(), **extra, "results_dir": str(folder)}
        summary["table"] = results_table(summary, ckpt.get("model_name"))
        summary["report"] = str(write_report(_report_root(tgt, out, folder))) if report else None
        return summary
