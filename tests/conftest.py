"""Shared fixtures. Real data and golden numbers live in ../shared beside the repository; tests that need
them skip with a clear reason when it is absent (a clone elsewhere)."""

from __future__ import annotations

import locale
from pathlib import Path

import pytest
import torch

import organseg.precision
from organseg.data.classes import TOTALSEG_TO_BTCV, remap_labels
from organseg.imageio.volumes import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"

# Two cores: keep intra-op threads at the machine size and results repeatable.
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared reference folder is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _need(GOLDEN)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def acdc_dir() -> Path:
    return _need(DATA / "acdc")


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    return _need(DATA / "totalseg")


def write_totalseg_raw(totalseg_dir: Path, raw: Path) -> dict:
    """A two-case raw BTCV folder from the real CT: case 1 = example_ct (NIfTI, 3 mm), case 2 = the DICOM
    subject converted to NIfTI; label maps converted from TotalSegmentator ids to BTCV ids, each written with
    its own header geometry (the DICOM subject's label is stored y-flipped, as TotalSegmentator wrote it)."""
    ct, g_ct = read_image(totalseg_dir / "example_ct.nii.gz")
    seg, g_seg = read_image(totalseg_dir / "example_seg_fast_force_split.nii.gz")
    dcm, g_dcm = read_image(totalseg_dir / "example_ct_dicom")
    seg2, g_seg2 = read_image(totalseg_dir / "example_seg_dicom.nii.gz")
    write_image(ct, g_ct, raw / "img" / "img0001.nii.gz")
    write_image(remap_labels(seg, TOTALSEG_TO_BTCV), g_seg, raw / "label" / "label0001.nii.gz")
    write_image(dcm, g_dcm, raw / "img" / "img0002.nii.gz")
    write_image(remap_labels(seg2, TOTALSEG_TO_BTCV), g_seg2, raw / "label" / "label0002.nii.gz")
    return {"ct": (ct, g_ct, seg), "dicom": (dcm, g_dcm, seg2, g_seg2)}


@pytest.fixture(scope="session")
def totalseg_raw(tmp_path_factory, totalseg_dir) -> tuple[Path, dict]:
    """The raw folder of :func:`write_totalseg_raw`, written once per session, and its arrays."""
    raw = tmp_path_factory.mktemp("totalseg_raw")
    arrays = write_totalseg_raw(totalseg_dir, raw)
    return raw, arrays


@pytest.fixture(autouse=True)
def _restore_locale():
    # GDCM (SimpleITK's DICOM IO, used by tests that write DICOM) leaves the process in the "C" locale,
    # which would make every later default-encoding text read ASCII. organseg's own readers guard against it.
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(autouse=True)
def _cpu_without_fast_bf16(monkeypatch):
    # `test` and `predict` default to --precision auto, which runs bf16 on a CPU with AVX512-BF16 or AMX. The
    # suite's expected label maps are fp32 ones, and must not depend on the machine that runs it: every test
    # sees a CPU without those flags unless it says otherwise (tests/test_inference_precision.py).
    monkeypatch.setattr(organseg.precision, "cpu_info", lambda: ("test CPU without bf16 flags", frozenset()))
