"""``--precision auto`` of ``test`` and ``predict``: the hardware rule (:func:`organseg.precision.fast_bf16`),
the agreement record and fallback rule (:mod:`organseg.evaluation.agreement`), and what ``test`` and
``predict`` record about the path they used."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from badinput.inputs import write_organseg_onnx
from helpers import make_run
from organseg import precision as precision_mod
from organseg.cli import predict as predict_cli
from organseg.cli import test as test_cli
from organseg.cli.main import main
from organseg.data.base import ArrayDataset, Volume
from organseg.data.classes import ACDC_CLASSES
from organseg.errors import ConfigError
from organseg.evaluation.agreement import MAX_DICE_DIFFERENCE, MIN_VOXEL_AGREEMENT, agreement_record
from organseg.evaluation.evaluate import evaluate_dataset
from organseg.evaluation.tester import run_test
from organseg.inference.engine import predict_volume
from organseg.precision import INFERENCE_PRECISIONS, fast_bf16, resolve_precision
from organseg.prediction.predict import load_predictor

CPU = torch.device("cpu")


def _flags(monkeypatch, *flags: str) -> None:
    """This CPU, as /proc/cpuinfo would describe one with ``flags``."""
    monkeypatch.setattr(precision_mod, "cpu_info", lambda: ("Test CPU", frozenset({"avx2", *flags})))


# ---------------------------------------------------------------- the hardware rule


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), None),
        (("avx512f",), None),  # AVX-512 without its bf16 extension: oneDNN emulates bf16
        (("avx512_bf16",), "CPU has avx512_bf16"),
        (("amx_bf16", "amx_tile", "avx512_bf16"), "CPU has amx_bf16"),
    ],
)
def test_fast_bf16_follows_the_cpu_flags(monkeypatch, flags, expected):
    _flags(monkeypatch, *flags)
    assert fast_bf16(CPU) == expected
    chosen, why = resolve_precision("auto", CPU)
    assert chosen == ("bf16" if expected else "fp32")
    assert why.startswith("auto: ") and (expected or "no fast bf16") in why


def test_fast_bf16_needs_onednn(monkeypatch):
    _flags(monkeypatch, "avx512_bf16")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert fast_bf16(CPU) is None
    assert resolve_precision("auto", CPU)[0] == "fp32"


@pytest.mark.parametrize(("capability", "fast"), [((8, 0), True), ((9, 0), True), ((7, 5), False)])
def test_fast_bf16_on_cuda_is_ampere_or_newer(monkeypatch, capability, fast):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    why = fast_bf16(torch.device("cuda", 0))
    assert (why is not None) == fast
    if fast:
        assert "Test GPU" in why and f"{capability[0]}.{capability[1]}" in why


def test_auto_is_fp32_when_the_path_is_fp32_only(monkeypatch):
    _flags(monkeypatch, "avx512_bf16")
    assert resolve_precision("auto", CPU, fp32_only="ONNX Runtime runs fp32") == (
        "fp32",
        "auto: ONNX Runtime runs fp32",
    )


def test_explicit_precisions_are_kept_or_refused(monkeypatch):
    _flags(monkeypatch)  # no fast bf16: an explicit bf16 is still what the user asked for
    assert resolve_precision("fp32", CPU) == ("fp32", "as requested")
    assert resolve_precision("bf16", CPU) == ("bf16", "as requested")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="--precision 'fp64'.*auto, fp32, bf16, fp16"):
        resolve_precision("fp64", CPU)


@pytest.mark.parametrize("module", [test_cli, predict_cli])
def test_cli_precision_choices_are_the_library_ones(module):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    p = module.add_parser(sub)
    action = next(a for a in p._actions if "--precision" in a.option_strings)
    assert tuple(action.choices) == INFERENCE_PRECISIONS and action.default == "auto"


# ---------------------------------------------------------------- the agreement record and rule


def _labels(shape=(4, 20, 20)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[:, 2:10, 2:10] = 1
    lab[:, 12:18, 4:16] = 2
    lab[:, 2:8, 12:18] = 3
    return lab


def test_agreement_record_counts_voxels_and_dice():
    gt = _labels()
    ref = gt.copy()
    fast = gt.copy()
    fast[0, 2, 2:4] = 0  # two voxels of class 1 lost
    rec = agreement_record("c0", "bf16", fast, ref, gt, ACDC_CLASSES, 0.5, 1.5)
    assert rec["case"] == "c0" and rec["voxels"] == gt.size and rec["differing_voxels"] == 2
    assert rec["voxel_agreement"] == pytest.approx(1 - 2 / gt.size)
    n1 = int((gt == 1).sum())
    assert rec["dice_fp32"]["RV"] == 1.0
    assert rec["dice"]["RV"] == pytest.approx(2 * (n1 - 2) / (2 * n1 - 2))
    assert rec["dice_difference"]["Myo"] == 0.0 and rec["dice_difference"]["RV"] < 0
    assert rec["max_abs_dice_difference"] == pytest.approx(abs(rec["dice_difference"]["RV"]))
    assert (rec["seconds"], rec["seconds_fp32"]) == (0.5, 1.5)
    # 2 of 1600 voxels (99.875 %) is under 99.9 %: the rule fails although the Dice change is small
    assert rec["max_abs_dice_difference"] < MAX_DICE_DIFFERENCE and not rec["passed"]


def test_agreement_rule_bounds():
    gt = np.zeros((10, 100, 100), np.uint8)
    gt[:, 10:90, 10:90] = 1
    ref = gt.copy()
    # 99.99 % of voxels equal and a Dice change of ~2e-4: kept
    fast = ref.copy()
    fast.flat[np.flatnonzero(gt)[:10]] = 0
    rec = agreement_record("c", "bf16", fast, ref, gt, ["bg", "a"], 1, 1)
    assert rec["voxel_agreement"] >= MIN_VOXEL_AGREEMENT and rec["passed"]
    # a small class changed: voxel agreement stays high, but its Dice moves by more than the bound
    gt2 = gt.copy()
    gt2[0, 0, :20] = 2
    ref2 = gt2.copy()
    fast2 = ref2.copy()
    fast2[0, 0, :5] = 0
    rec2 = agreement_record("c", "bf16", fast2, ref2, gt2, ["bg", "a", "b"], 1, 1)
    assert rec2["voxel_agreement"] >= MIN_VOXEL_AGREEMENT
    assert rec2["max_abs_dice_difference"] > MAX_DICE_DIFFERENCE and not rec2["passed"]


class _PrecisionSensitive(nn.Module):
    """Logits from the input's intensity bands; under autocast, ``bf16_shift`` moves the first band's
    boundary (a network whose bf16 labels differ that much). Counts its fp32 and autocast calls."""

    def __init__(self, bf16_shift: float) -> None:
        super().__init__()
        self.bf16_shift = bf16_shift
        self.calls = {"fp32": 0, "bf16": 0}
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.is_autocast_enabled("cpu")
        self.calls["bf16" if low else "fp32"] += x.shape[0]
        t = 0.25 + (self.bf16_shift if low else 0.0)
        logits = torch.stack([(x < t).float(), (x >= t).float() * (x < 0.5), (x >= 0.5).float()], dim=1)
        return logits[:, :, 0] * 10.0


def _dataset(cases: int = 3) -> ArrayDataset:
    rng = np.random.default_rng(0)
    vols = []
    for i in range(cases):
        img = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 32, 1)) + 0.001 * i
        img = np.clip(img + 0.001 * rng.standard_normal(img.shape).astype(np.float32), 0, 1)
        lab = np.digitize(img, [0.25, 0.5]).astype(np.uint8)
        vols.append(Volume(f"case{i}", img, lab))
    return ArrayDataset([], {"test": vols}, class_names=("bg", "low", "high"))


def _checked_bf16(model) -> tuple[Any, list[str]]:
    """``evaluate_dataset`` in bf16 with the fp32 agreement check, and the warnings it gave."""
    warnings: list[str] = []
    res = evaluate_dataset(
        model,
        _dataset(),
        patch_size=32,
        precision="bf16",
        device=CPU,
        progress=False,
        agreement_check=True,
        on_warning=warnings.append,
    )
    return res, warnings


def test_evaluate_dataset_keeps_bf16_when_the_sample_agrees():
    model = _PrecisionSensitive(bf16_shift=0.0)
    res, warnings = _checked_bf16(model)
    assert res.precision == "bf16" and not warnings
    rec = res.agreement
    assert rec is not None and rec["passed"] and rec["case"] == "case0" and rec["differing_voxels"] == 0
    # fp32 ran on the sample only (its 3 slices); every case ran in bf16
    assert model.calls == {"fp32": 3, "bf16": 9}


def test_evaluate_dataset_falls_back_to_fp32_for_the_whole_run():
    model = _PrecisionSensitive(bf16_shift=0.1)
    res, warnings = _checked_bf16(model)
    assert res.precision == "fp32" and res.agreement is not None and not res.agreement["passed"]
    assert len(warnings) == 1 and "falling back to fp32" in warnings[0] and "case0" in warnings[0]
    assert model.calls == {"fp32": 9, "bf16": 3}  # only the sample in bf16
    fp32 = evaluate_dataset(_PrecisionSensitive(0.1), _dataset(), patch_size=32, device=CPU, progress=False)
    np.testing.assert_array_equal(res.reference, fp32.reference)  # the fp32 numbers, every case


def test_evaluate_dataset_checks_nothing_in_fp32_or_without_the_flag():
    ds = _dataset(2)
    for kwargs in ({"precision": "fp32", "agreement_check": True}, {"precision": "bf16"}):
        model = _PrecisionSensitive(0.1)
        res = evaluate_dataset(model, ds, patch_size=32, device=CPU, progress=False, **kwargs)
        assert res.agreement is None and res.precision == kwargs["precision"]
        assert min(model.calls.values()) == 0  # one path only


# ---------------------------------------------------------------- what test and predict record


def _volumes_dataset() -> ArrayDataset:
    rng = np.random.default_rng(1)
    vols = [
        Volume(f"case{i}", rng.random((3, 40, 48)).astype(np.float32), rng.integers(0, 4, (3, 40, 48)))
        for i in range(2)
    ]
    return ArrayDataset([], {"test": vols}, class_names=ACDC_CLASSES)


def test_run_test_auto_records_the_path_and_its_agreement(tmp_path: Path, monkeypatch):
    _flags(monkeypatch, "avx512_bf16")
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "none"})
    ds = _volumes_dataset()
    summary = run_test(run, data=ds, precision="auto", device="cpu", progress=False, viewer=False)
    stored = json.loads((Path(summary["results_dir"]) / "summary.json").read_text())
    rec = stored["agreement"]
    assert stored["precision_requested"] == "auto" and stored["engine"] == "torch"
    assert rec["case"] == "case0" and rec["precision"] == "bf16" and rec["voxels"] == 3 * 40 * 48
    assert set(rec["dice"]) == set(ACDC_CLASSES[1:])
    # the precision written is the one used: bf16 when the sample passed, else fp32 with the reason
    if rec["passed"]:
        assert stored["precision"] == "bf16" and stored["precision_choice"] == "auto: CPU has avx512_bf16"
    else:
        assert stored["precision"] == "fp32" and "failed the agreement check" in stored["precision_choice"]
    assert stored["precision_note"].startswith(f"precision {stored['precision']} (auto: CPU has avx512_bf16")
    assert f"on case case0, bf16 vs fp32: {100 * rec['voxel_agreement']:.3f} %" in stored["precision_note"]
    assert f"Inference: {stored['precision_note']}." in (run / "report.md").read_text()


def test_run_test_auto_without_fast_bf16_is_the_fp32_path(tmp_path: Path, monkeypatch):
    _flags(monkeypatch)
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "none"})
    ds = _volumes_dataset()
    auto = run_test(run, data=ds, precision="auto", device="cpu", progress=False, viewer=False, report=False)
    assert auto["precision"] == "fp32" and auto["agreement"] is None
    assert auto["precision_choice"].startswith("auto: the CPU has no fast bf16")
    fp32 = run_test(
        run, data=ds, out=tmp_path / "fp32", device="cpu", progress=False, viewer=False, report=False
    )
    assert fp32["precision_choice"] == "as requested" and fp32["agreement"] is None
    assert auto["reference"] == fp32["reference"] and auto["corrected"] == fp32["corrected"]


def test_cli_test_prints_the_precision_line(tmp_path: Path, monkeypatch, capsys):
    _flags(monkeypatch)
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "none"})
    data = tmp_path / "data"
    monkeypatch.setattr("organseg.evaluation.tester.resolve_dataset", lambda *a, **k: _volumes_dataset())
    argv = ["test", str(run), "--data", str(data), "--device", "cpu", "--no-viewer", "--no-report"]
    assert main([*argv, "--reference-loop"]) == 0
    out = capsys.readouterr().out
    assert "organseg test: precision fp32 (auto: the reference loop)" in out


def test_predict_auto_and_onnx(tmp_path: Path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'organseg[onnx]'")
    pytest.importorskip("onnx", reason="onnx is not installed: pip install 'organseg[onnx]'")
    _flags(monkeypatch, "avx512_bf16")
    onnx_file = write_organseg_onnx(tmp_path / "m.onnx")
    p = load_predictor(onnx_file, precision="auto", device="cpu")
    assert (p.precision, p.engine) == ("fp32", "onnxruntime")
    assert p.precision_choice == "auto: ONNX Runtime runs fp32"
    with pytest.raises(ConfigError, match="ONNX models run in fp32"):
        load_predictor(onnx_file, precision="bf16", device="cpu")
    run = make_run(tmp_path / "run", list(ACDC_CLASSES), {"kind": "none"})
    p = load_predictor(run / "checkpoints" / "best.pt", precision="auto", device="cpu")
    assert (p.precision, p.precision_choice, p.engine) == ("bf16", "auto: CPU has avx512_bf16", "torch")
    _flags(monkeypatch)
    assert load_predictor(run / "checkpoints" / "best.pt", precision="auto", device="cpu").precision == "fp32"


def test_fp32_stays_the_reference_loop():
    """``--precision fp32`` is one flag away and unchanged: the batched fp32 path equals the reference loop
    (the guarantee organseg.inference.engine documents), also with a network that has bf16 differences."""
    ds = _dataset(1)
    img = ds.volume("case0").image
    model = _PrecisionSensitive(0.1)
    np.testing.assert_array_equal(
        predict_volume(model, img, 32, precision="fp32"), predict_volume(model, img, 32, reference_loop=True)
    )
