"""Shared fixtures. Real data and golden numbers live in ../shared beside the repository; tests that need
them skip with a clear reason when it is absent (a clone elsewhere)."""

from __future__ import annotations

import locale
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _restore_locale():
    # GDCM (SimpleITK's DICOM IO, used by tests that write DICOM) leaves the process in the "C" locale,
    # which would make every later default-encoding text read ASCII. organseg's own readers guard against it.
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)
