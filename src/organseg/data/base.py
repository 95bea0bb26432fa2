"""The one dataset interface every source (Synapse, ACDC, nnU-Net layout, in-memory) provides.

Training code sees 2-D slices, evaluation code sees 3-D volumes; neither needs to know the file format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from organseg.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Volume:
    """One evaluation case.

    ``image`` is (D, H, W) float32 in [0, 1]; ``label`` is (D, H, W) int64 or None when unlabelled;
    ``spacing`` is (z, y, x) in millimetres, or None when the source has none (distances are then in voxels).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float] | None = None
    meta: dict = field(default_factory=dict)


class SegmentationDataset(ABC):
    """A labelled segmentation dataset with train slices and evaluation volumes."""

    name: str = "dataset"
    #: the folder the dataset is read from; None for a dataset in memory (:class:`ArrayDataset`)
    root: Path | None = None
    #: class index -> human-readable name; index 0 is background.
    class_names: tuple[str, ...] = ()
    #: how raw scanner intensities were mapped to [0, 1], as plain data; recorded in checkpoints so that
    #: ``predict`` applies the same mapping to a new scan (see ``organseg.data.preprocess``).
    preprocessing: dict = {"kind": "none"}  # noqa: RUF012
    #: where the training slices are listed (a list file or a folder), for messages about them
    train_source: str = ""
    #: the patient orientation of the (D, H, W) arrays the network trains on, as a code of
    #: :mod:`organseg.imageio.orientation` ("LPS": columns toward the patient's left, rows toward posterior,
    #: slices toward superior); None when it is not known. Recorded in checkpoints: ``predict`` and ``test``
    #: turn every scan to it before the network sees it.
    orientation: str | None = None
    #: where :attr:`orientation` comes from (direction cosines of the training images, or the documented
    #: orientation of a layout without geometry), for ``organseg info`` and run folders
    orientation_note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def location(self) -> str:
        """Where the dataset is, for messages: its folder, or its name when it is in memory."""
        return str(self.root) if self.root is not None else self.name

    @abstractmethod
    def train_slices(self) -> Sequence[tuple[np.ndarray, np.ndarray]]:
        """Training slices: item i is (image (H, W) float32 in [0, 1], label (H, W) int64)."""

    def train_slice_cases(self) -> list[str]:
        """The case (patient) each training slice comes from, in ``train_slices()`` order: subsets of the
        training data (``data.train_fraction``) keep or drop whole cases. By default every slice is its own
        case (a dataset that does not know better, e.g. :class:`ArrayDataset`)."""
        return [f"slice{i}" for i in range(len(self.train_slices()))]

    def default_subject(self, case_id: str) -> str:
        """The reader's own rule for the subject (patient) a case or volume belongs to: the case itself
        unless the layout knows better (ACDC: ``patientNNN`` of ``patientNNN_frameMM``)."""
        return case_id

    def subject_of(self, case_id: str) -> str:
        """The subject (patient) of a case: ``data.subjects`` when set (:meth:`set_subjects`), else the
        reader's rule. Statistics count subjects, and splits never share one."""
        rule = getattr(self, "_subject_rule", None)
        return rule(case_id) if rule is not None else self.default_subject(case_id)

    def set_subjects(self, rule: Callable[[str], str] | None) -> None:
        """Map cases to subjects with ``rule`` (None: the reader's own), then check again that no subject
        is on two sides of the splits."""
        self._subject_rule = rule
        check_disjoint_subjects(self)

    def train_slice_subjects(self) -> list[str]:
        """The subject of every training slice, in ``train_slices()`` order."""
        return [self.subject_of(c) for c in self.train_slice_cases()]

    def split_source(self, split: str) -> str:
        """Where a split's cases are listed (a list file or a folder), for messages that name it."""
        return f"the {split} split"

    @abstractmethod
    def case_ids(self, split: str) -> list[str]:
        """Case ids of an evaluation split ("val" or "test"); empty when the split does not exist."""

    @abstractmethod
    def volume(self, case_id: str) -> Volume:
        """Load one evaluation case."""

    def volumes(self, split: str) -> Iterator[Volume]:
        for case_id in self.case_ids(split):
            yield self.volume(case_id)

    def info(self) -> dict:
        """Plain description (written into run folders)."""
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "preprocessing": dict(self.preprocessing),
            "orientation": self.orientation,
            "orientation_note": self.orientation_note,
        }


def check_disjoint_subjects(dataset: SegmentationDataset) -> None:
    """No subject (patient) may have volumes on two sides of train / val / test: a DataError naming the
    subject, its volumes and both lists. (ACDC's two frames of one patient are one subject.)"""
    sides: dict[str, dict[str, str]] = {}  # subject -> {split: one of its cases there}
    train = [(c, "train") for c in dict.fromkeys(dataset.train_slice_cases())]
    listed = [(c, s) for s in ("val", "test") for c in dataset.case_ids(s)]
    for case, split in train + listed:
        seen = sides.setdefault(dataset.subject_of(case), {})
        seen.setdefault(split, case)
        if len(seen) > 1:
            (s1, c1), (s2, c2) = list(seen.items())[:2]
            subject = dataset.subject_of(case)
            raise DataError(
                f"{dataset.location}: subject {subject!r} is on two sides of the split: "
                f"{c1} in {dataset.split_source(s1)} and {c2} in {dataset.split_source(s2)}; a patient's "
                "volumes (e.g. both ACDC frames) must all be in one list"
            )


class ArrayDataset(SegmentationDataset):
    """An in-memory dataset from numpy arrays: for tests, notebooks and synthetic data."""

    def __init__(
        self,
        slices: Sequence[tuple[np.ndarray, np.ndarray]],
        volumes: dict[str, Sequence[Volume]] | None = None,
        class_names: Sequence[str] | None = None,
        name: str = "arrays",
        orientation: str | None = None,
    ) -> None:
        self._slices = list(slices)
        self._volumes = {split: list(v) for split, v in (volumes or {}).items()}
        if class_names is None:
            top = max(int(lab.max()) for _, lab in self._slices) if self._slices else 1
            class_names = ["background"] + [f"class_{i}" for i in range(1, top + 1)]
        self.class_names = tuple(class_names)
        self.name = name
        self.orientation = orientation
        self.orientation_note = "given" if orientation else "unknown (arrays without geometry)"

    def train_slices(self) -> Sequence[tuple[np.ndarray, np.ndarray]]:
        return self._slices

    def case_ids(self, split: str) -> list[str]:
        return [v.case_id for v in self._volumes.get(split, [])]

    def volume(self, case_id: str) -> Volume:
        for vols in self._volumes.values():
            for v in vols:
                if v.case_id == case_id:
                    return v
        raise KeyError(f"no case {case_id!r} in {self.name}")
