"""Subjects and cross-validation folds: which patient each volume belongs to, and K folds of the training
subjects in which every subject is held out exactly once.

``data.subjects`` (configuration) maps cases to subjects when a layout's own rule (ACDC: the patient of a
frame; Synapse and nnU-Net: the case) is not right, e.g. an nnU-Net dataset with several scans per patient:

* a regular expression searched in the case id; its first group (or the whole match) is the subject:
  ``"^(sub-\\d+)"`` makes ``sub-01_ses-1`` and ``sub-01_ses-2`` one subject;
* a ``.json`` file mapping every case id to its subject: ``{"case_001": "P1", "case_002": "P1"}``.

``data.fold`` (0 .. ``data.folds`` - 1) trains on the other folds' subjects and puts the held-out subjects'
volumes in the ``val`` split (what validation and ``organseg test --split val`` see); a dataset's own
validation list stays out of the pool (ACDC's 10 validation patients, used to tune the fast presets), and
its test split is untouched. The folds are nnU-Net's ``splits_final.json`` when an nnU-Net dataset has one,
else a seeded split of the sorted subjects (``data.fold_seed``): the same for every network and seed, so
fold k of two networks holds out the same patients.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from organseg.data.base import SegmentationDataset, Volume, check_disjoint_subjects
from organseg.errors import ConfigError, DataError

DEFAULT_FOLDS = 5
DEFAULT_FOLD_SEED = 12345  # nnU-Net's KFold random_state


def subject_rule(spec: str | None) -> Callable[[str], str] | None:
    """``data.subjects`` as a function of the case id (None: the reader's own rule); see the module
    docstring. A case the rule does not cover is a DataError naming the case and the rule."""
    if spec is None:
        return None
    if spec.endswith(".json"):
        path = Path(spec)
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"data.subjects: cannot read {path} ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read JSON ({exc})") from None
        if not isinstance(table, dict) or not all(isinstance(v, str) and v for v in table.values()):
            raise DataError(f"{path}: data.subjects must map case ids to subject names (non-empty strings)")

        def from_table(case: str) -> str:
            if case not in table:
                raise DataError(f"{path}: case {case!r} has no subject (data.subjects must name every case)")
            return str(table[case])

        return from_table
    try:
        pattern = re.compile(spec)
    except re.error as exc:
        raise ConfigError(
            f"data.subjects: {spec!r} is neither a .json file nor a regular expression ({exc})"
        ) from None

    def from_pattern(case: str) -> str:
        m = pattern.search(case)
        if m is None or not (m.group(1) if pattern.groups else m.group(0)):
            raise DataError(f"data.subjects: the pattern {spec!r} does not find a subject in case {case!r}")
        return m.group(1) if pattern.groups else m.group(0)

    return from_pattern


def fold_subjects(dataset: SegmentationDataset, folds: int, seed: int) -> list[list[str]]:
    """The held-out subjects of each fold (sorted), over the subjects of the dataset's training cases:
    the dataset's own folds (nnU-Net ``splits_final.json``) when it has them, else a seeded permutation of
    the sorted subjects cut into ``folds`` parts whose sizes differ by at most one."""
    cases = dataset.case_ids("train")
    subjects = sorted({dataset.subject_of(c) for c in cases})
    predefined = getattr(dataset, "predefined_folds", lambda: None)()
    if predefined is not None:
        out = [sorted({dataset.subject_of(c) for c in held}) for held in predefined]
        where = getattr(dataset, "_splits_path", "the dataset's folds")
        if len(out) != folds:
            raise ConfigError(f"{where} defines {len(out)} folds but data.folds is {folds}")
        seen: dict[str, int] = {}
        for k, held in enumerate(out):
            for s in held:
                if s in seen:
                    raise DataError(f"{where}: subject {s!r} is held out in folds {seen[s]} and {k}")
                seen[s] = k
        missing = [s for s in subjects if s not in seen]
        if missing:
            raise DataError(f"{where}: subject(s) {missing[:5]} are held out in no fold")
        return out
    if folds < 2:
        raise ConfigError(f"data.folds={folds}: cross-validation needs at least 2 folds")
    if len(subjects) < folds:
        raise ConfigError(
            f"data.folds={folds}: the training split has {len(subjects)} subject(s); every fold needs one"
        )
    order = np.random.default_rng(seed).permutation(len(subjects))
    return [sorted(subjects[i] for i in part) for part in np.array_split(order, folds)]


class _Pick(Sequence):
    """Items ``index`` of a sequence (picklable: DataLoader workers take it as it is)."""

    def __init__(self, base: Sequence, index: Sequence[int]) -> None:
        self.base, self.index = base, list(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):  # type: ignore[override]
        return self.base[self.index[i]]


class FoldView(SegmentationDataset):
    """Fold ``fold`` of ``dataset``: training slices of the other folds' subjects, ``val`` = the held-out
    subjects' volumes, ``test`` = the dataset's own test split."""

    def __init__(self, dataset: SegmentationDataset, fold: int, folds: int, seed: int) -> None:
        if not 0 <= fold < folds:
            raise ConfigError(f"data.fold={fold} must be in 0..{folds - 1} (data.folds={folds})")
        self.base, self.fold, self.folds, self.seed = dataset, fold, folds, seed
        self.name, self.class_names = dataset.name, dataset.class_names
        self.preprocessing, self.train_source = dataset.preprocessing, dataset.train_source
        self.root = dataset.root
        self.all_folds = fold_subjects(dataset, folds, seed)
        self.held_out = self.all_folds[fold]
        held = set(self.held_out)
        subjects = dataset.train_slice_subjects()
        self._keep = [i for i, s in enumerate(subjects) if s not in held]
        self._val = [c for c in dataset.case_ids("train") if dataset.subject_of(c) in held]
        self._train = [c for c in dataset.case_ids("train") if dataset.subject_of(c) not in held]
        if not self._keep:
            raise DataError(f"{self.location}: fold {fold} of {folds} leaves no training slices")

    def default_subject(self, case_id: str) -> str:
        return self.base.subject_of(case_id)

    def split_source(self, split: str) -> str:
        if split == "val":
            return f"fold {self.fold} of {self.folds} (held out)"
        return self.base.split_source(split)

    def train_slices(self) -> Sequence[tuple[np.ndarray, np.ndarray]]:
        return _Pick(self.base.train_slices(), self._keep)

    def train_slice_cases(self) -> list[str]:
        cases = self.base.train_slice_cases()
        return [cases[i] for i in self._keep]

    def case_ids(self, split: str) -> list[str]:
        if split == "val":
            return list(self._val)
        if split == "train":
            return list(self._train)
        return self.base.case_ids(split)

    def volume(self, case_id: str) -> Volume:
        return self.base.volume(case_id)

    def info(self) -> dict[str, Any]:
        out = self.base.info()
        out.update(fold=self.fold, folds=self.folds, fold_seed=self.seed, held_out=list(self.held_out))
        return out


def apply_data_config(dataset: SegmentationDataset, data_cfg: dict[str, Any] | None) -> SegmentationDataset:
    """The dataset a configuration's ``data`` section asks for: its subject rule set, and the fold view when
    ``data.fold`` is set (a dataset that already is a fold view is returned as it is)."""
    data_cfg = data_cfg or {}
    if isinstance(dataset, FoldView):
        return dataset
    if data_cfg.get("subjects") is not None:
        dataset.set_subjects(subject_rule(data_cfg["subjects"]))
    fold = data_cfg.get("fold")
    if fold is None:
        return dataset
    folds = int(data_cfg.get("folds") or DEFAULT_FOLDS)
    view = FoldView(dataset, int(fold), folds, int(data_cfg.get("fold_seed", DEFAULT_FOLD_SEED)))
    check_disjoint_subjects(view)
    return view
