"""Each typed record has exactly the keys its real writer writes, so a record and its file cannot drift apart:
``summary.json`` and ``per_case.json`` (``organseg test`` of one network, and of an ensemble with TTA beside
its members), what ``run_test`` returns, and the predict sidecar (a NIfTI scan; a DICOM series with its
DICOM-SEG, written and not). ``comparison.json``: tests/test_compare.py, test_crossval.py (with the pooled
folds' summary) and test_study_efficiency.py, on the studies they run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dicomgen as g
from helpers import (
    TINY_SWIN,
    TINY_SWIN_CFG,
    noise_ct_scan,
    tiny_swin_net,
    tiny_swin_run,
    two_ct_volumes,
)
from organseg.checkpoint import atomic_torch_save, make_checkpoint
from organseg.data.classes import SYNAPSE_CLASSES
from organseg.data.preprocess import ct_window_spec
from organseg.data.synapse import TRANSUNET_ORIENTATION
from organseg.evaluation.tester import MemberSummary, ProtocolMeans, RunTestResult, run_test
from organseg.prediction.dicomseg import DicomSegRecord, SegmentRecord
from organseg.prediction.predict import ClassVolume, OrientationRecord, Sidecar, TurnRecord, predict_file
from organseg.results import (
    CaseClass,
    CaseProtocol,
    CaseRecord,
    CorrectedCase,
    CorrectedClass,
    CorrectedSummary,
    ReferenceClass,
    ReferenceSummary,
    ResultsSummary,
)
from record_keys import Keys, check_per_case, check_sidecar, check_summary

#: summary.json fields only a cross-validation's pooled folds write (tests/test_crossval.py checks them)
POOLED = ("pooled_folds", "folds")


def test_results_folder_files_and_run_test_have_exactly_their_records_keys(tmp_path: Path) -> None:
    runs = [tiny_swin_run(tmp_path / f"r{s}", s) for s in (1, 2)]
    opts = {"data": two_ct_volumes(), "device": "cpu", "report": False, "viewer": False, "progress": False}
    alone = run_test(runs[0], **opts)
    both = run_test(runs[0], ensemble=[runs[1]], tta=True, **opts)
    keys = Keys()
    folders = []
    for result in (alone, both):
        check_summary(keys, result, RunTestResult)
        folders.append(Path(result["results_dir"]))
        for member in result.get("members", []):
            keys.check(member, MemberSummary)
            keys.check(member["reference"], ProtocolMeans)
            keys.check(member["corrected"], ProtocolMeans)
            folders.append(Path(member["results_dir"]))
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        check_summary(keys, summary)
        check_per_case(keys, json.loads((folder / "per_case.json").read_text()))
    assert set(alone) - set(json.loads((folders[0] / "summary.json").read_text())) == {
        "results_dir",
        "table",
        "report",
    }
    keys.complete(ResultsSummary, but=POOLED)
    keys.complete(RunTestResult, but=POOLED)
    for record in (
        ReferenceSummary,
        CorrectedSummary,
        ReferenceClass,
        CorrectedClass,
        CaseRecord,
        CaseClass,
        CaseProtocol,
        CorrectedCase,
        MemberSummary,
        ProtocolMeans,
    ):
        keys.complete(record)


def _checkpoint(path: Path, *, empty: bool = False) -> Path:
    """A tiny Swin-Unet that records an orientation (its scans are turned, with a tilt); ``empty``: a zero
    head, so every voxel is background."""
    net = tiny_swin_net(1)
    if empty:
        with torch.no_grad():
            net.swin_unet.output.weight.zero_()
    ckpt = make_checkpoint(
        net,
        model_name="swin_unet",
        model_args={**TINY_SWIN, "num_classes": 9},
        class_names=list(SYNAPSE_CLASSES),
        preprocessing=ct_window_spec(),
        orientation=TRANSUNET_ORIENTATION,
        config=TINY_SWIN_CFG,
    )
    atomic_torch_save(ckpt, path)
    return path


def test_predict_sidecar_has_exactly_its_records_keys(tmp_path: Path) -> None:
    keys = Keys()
    ckpt = _checkpoint(tmp_path / "net.pt")
    scan = noise_ct_scan(tmp_path / "scan.nii.gz", 0)
    out = tmp_path / "nifti" / "scan.nii.gz"
    info = predict_file(
        ckpt, scan, out, overlay=tmp_path / "nifti" / "scan.png", viewer=True, device="cpu", progress=False
    )
    assert json.loads((tmp_path / "nifti" / "scan.json").read_text()) == info
    check_sidecar(keys, info)

    pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
    series = tmp_path / "ct"
    g.write_series(series, g.ct_slices(series_uid=g.uid(7), study_uid=g.uid(100), slices=4))
    for net, name in ((ckpt, "seg"), (_checkpoint(tmp_path / "empty.pt", empty=True), "empty")):
        info = predict_file(
            net,
            series,
            tmp_path / "dicom" / f"{name}.nii.gz",
            formats="both",
            series_uid=g.uid(7),
            device="cpu",
            progress=False,
        )
        check_sidecar(keys, json.loads((tmp_path / "dicom" / f"{name}.json").read_text()))
    assert info["dicom_seg"] == {"path": None, "written": False, "reason": info["dicom_seg"]["reason"]}
    for record in (Sidecar, OrientationRecord, TurnRecord, ClassVolume, DicomSegRecord, SegmentRecord):
        keys.complete(record)
