"""The Synapse train/test split of ``organseg prepare synapse`` (docs/data.md, "Synapse split"): explicit
case lists when given, else the reference 18/12 split when all 30 reference BTCV ids are present, else a
seeded random split with a warning. Pure functions of case numbers: nothing here reads or writes files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from organseg.errors import ConfigError, DataError

log = logging.getLogger("organseg.data")

REFERENCE_TEST_IDS: tuple[int, ...] = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
REFERENCE_TRAIN_IDS: tuple[int, ...] = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
DEFAULT_TEST_FRACTION = 0.4  # 12 of 30, the reference proportion
WHERE = "--train-cases/--test-cases"  # the options that choose the split, named in its messages


def parse_case_id(value: str | int) -> int:
    """'1', '0001', 'case0001', 'img0001' -> 1. A sign is refused: ``-3`` is a typo, not case 3."""
    m = re.fullmatch(r"(?:[A-Za-z_]*)(\d+)", str(value).strip())
    if not m or isinstance(value, bool):
        raise ConfigError(f"bad case id {value!r}: expected a number such as 1, 0001 or case0001")
    return int(m.group(1))


def decide_split(
    available: Sequence[int],
    train_cases: Sequence[str | int] | None = None,
    test_cases: Sequence[str | int] | None = None,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 1234,
) -> tuple[list[int], list[int], str]:
    """(train ids, test ids, rule). See docs/data.md "Synapse split" for the rule.

    - explicit ``train_cases`` / ``test_cases``: used as given; one of them alone means "the rest" for
      the other;
    - otherwise, when all 30 reference ids are present: the reference 18/12 split (other ids are left
      out, with a warning);
    - otherwise: a seeded random split with ``test_fraction`` of the cases for test, with a warning.
    """
    avail = sorted(set(int(a) for a in available))
    if train_cases is not None or test_cases is not None:
        return _explicit_split(avail, train_cases, test_cases)
    ref = set(REFERENCE_TRAIN_IDS) | set(REFERENCE_TEST_IDS)
    if ref <= set(avail):
        extra = [i for i in avail if i not in ref]
        if extra:
            log.warning(
                "reference split: case id(s) %s are not in it and are left out; pass %s to use them",
                format_ids(extra),
                WHERE,
            )
        return list(REFERENCE_TRAIN_IDS), sorted(REFERENCE_TEST_IDS), "reference"
    return _seeded_split(avail, test_fraction, seed)


def _listed_ids(values: Sequence[str | int], what: str, avail: list[int]) -> list[int]:
    ids = [parse_case_id(v) for v in values]
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            raise ConfigError(f"{what}: duplicate case id {i}")
        seen.add(i)
    absent = [i for i in ids if i not in avail]
    if absent:
        raise DataError(f"{what}: case id(s) {absent} not in the raw folder (it has {format_ids(avail)})")
    return sorted(ids)


def _explicit_split(
    avail: list[int], train_cases: Sequence[str | int] | None, test_cases: Sequence[str | int] | None
) -> tuple[list[int], list[int], str]:
    """The split the user gave; one side alone means "the rest" for the other."""
    train = _listed_ids(train_cases, "train cases", avail) if train_cases is not None else None
    test = _listed_ids(test_cases, "test cases", avail) if test_cases is not None else None
    if train is None:
        train = [i for i in avail if i not in set(test)]
    if test is None:
        test = [i for i in avail if i not in set(train)]
    both = sorted(set(train) & set(test))
    if both:
        raise ConfigError(f"{WHERE}: case id(s) {both} are in both the training and the test split")
    if not train and not test:
        raise ConfigError(f"{WHERE}: the split is empty")
    return train, test, "explicit"


def _seeded_split(avail: list[int], test_fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """A seeded random split with ``test_fraction`` of the cases for test (at least one each side when there
    are two cases or more), announced with a warning."""
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--split-seed must be an integer 0 or more, got {seed!r}")
    n = len(avail)
    n_test = 0 if n < 2 else min(n - 1, max(1, int(round(n * test_fraction))))
    if test_fraction == 0.0:
        n_test = 0
    order = np.random.default_rng(seed).permutation(n)
    test = sorted(avail[i] for i in order[:n_test])
    train = [i for i in avail if i not in set(test)]
    ref = set(REFERENCE_TRAIN_IDS) | set(REFERENCE_TEST_IDS)
    missing = sorted(ref - set(avail))
    log.warning(
        "the reference split needs BTCV ids %s; %d of them are absent, so %d case(s) were split "
        "automatically: %d train / %d test (test fraction %g, seed %d). Pass %s to choose.",
        format_ids(sorted(ref)),
        len(missing),
        n,
        len(train),
        len(test),
        test_fraction,
        seed,
        WHERE,
    )
    return train, test, f"auto(test_fraction={test_fraction}, seed={seed})"


def format_ids(ids: Sequence[int]) -> str:
    """A list of case ids for a message: the first 12, then how many in all."""
    ids = list(ids)
    return (
        "["
        + ", ".join(str(i) for i in ids[:12])
        + (f", ... ({len(ids)} in all)" if len(ids) > 12 else "")
        + "]"
    )
