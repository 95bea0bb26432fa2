"""ACDC cardiac cine-MRI in the SSL4MIS h5 layout (the form TransUNet/Swin-Unet-era code reads).

Layout::

    slices/patientNNN_frameMM_slice_K.h5    'image' (H, W) float32 in [0, 1], 'label' (H, W) uint8
    volumes/patientNNN_frameMM.h5           'image' (D, H, W), 'label' (D, H, W)
    train_slices.list                       training slice names (without .h5)
    val.list                                validation volume names
    test.list                               optional test volume names

Classes: 0 background, 1 RV, 2 Myo, 3 LV. In-plane size varies per patient (augmentation resizes to 224). No
spacing is stored, so distances are in pixels (``Volume.spacing`` is None). The images were made with
per-volume min-max scaling (every volume spans exactly [0, 1]); ``preprocessing`` is therefore ``{"kind":
"minmax"}``, the spec to apply to a raw ACDC NIfTI at prediction time.

Orientation: none is recorded (:attr:`SegmentationDataset.orientation` is None). The h5 files keep the voxel
order of the challenge's NIfTI files (SSL4MIS read them with SimpleITK) and drop their geometry, and cine
short-axis stacks are planned along the heart's own axes, oblique to the patient's by design: no patient
orientation describes them. A network trained on them is given a scan's voxel order as stored
(docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from organseg.data.base import SegmentationDataset, Volume, check_disjoint_subjects
from organseg.data.classes import ACDC_CLASSES
from organseg.data.io import read_h5_pair, read_list, require_files
from organseg.data.slices import FileSlices
from organseg.errors import ConfigError, DataError


class ACDCDataset(SegmentationDataset):
    """Reader for the SSL4MIS ACDC layout (see module docstring)."""

    name = "acdc"
    class_names = ACDC_CLASSES
    preprocessing = {"kind": "minmax"}  # noqa: RUF012
    orientation = None
    orientation_note = "none: short-axis stacks without geometry, scans are given in their stored voxel order"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.slice_dir = self.root / "slices"
        self.volume_dir = self.root / "volumes"
        if not self.slice_dir.is_dir() and not self.volume_dir.is_dir():
            raise DataError(f"{self.root}: not an ACDC folder (no slices/ or volumes/)")
        train_list = self.root / "train_slices.list"
        self.train_source = str(train_list if train_list.is_file() else self.slice_dir)
        if train_list.is_file():
            self._train = read_list(train_list, what="slice list")
            require_files([self.slice_dir / f"{n}.h5" for n in self._train], train_list, "slices")
        else:
            self._train = (
                sorted(p.stem for p in self.slice_dir.glob("*.h5")) if self.slice_dir.is_dir() else []
            )
        self._splits: dict[str, list[str]] = {}
        for split in ("val", "test"):
            path = self.root / f"{split}.list"
            if path.is_file():
                names = read_list(path, what=f"{split} list")
                require_files([self.volume_dir / f"{n}.h5" for n in names], path, "volumes")
                self._splits[split] = names
            else:
                self._splits[split] = []
        overlap = set(self._splits["val"]) & set(self._splits["test"])
        if overlap:
            raise DataError(f"{self.root}: case(s) {sorted(overlap)[:5]} are in both val.list and test.list")
        self._train_volumes: dict[str, list[str]] = {}
        for n in self._train:
            self._train_volumes.setdefault(n.split("_slice")[0], []).append(n)
        check_disjoint_subjects(self)
        if not self._train and not any(self._splits.values()):
            raise DataError(f"{self.root}: empty ACDC folder (no training slices and no volumes)")

    def train_slices(self) -> FileSlices:
        return FileSlices([self.slice_dir / f"{n}.h5" for n in self._train], "h5", self.num_classes)

    def train_slice_cases(self) -> list[str]:
        # patientNNN_frameMM_slice_K: both frames of a patient are one case (never part of a patient)
        return [n.split("_frame")[0] for n in self._train]

    def default_subject(self, case_id: str) -> str:
        return case_id.split("_frame")[0]  # patientNNN_frameMM: the ED and ES frames of one patient

    def split_source(self, split: str) -> str:
        if split == "train":
            return self.train_source
        return str(self.root / f"{split}.list")

    def case_ids(self, split: str) -> list[str]:
        if split in self._splits:
            return list(self._splits[split])
        if split == "train":
            return sorted(self._train_volumes)
        raise ConfigError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")

    def volume(self, case_id: str) -> Volume:
        path = self.volume_dir / f"{case_id}.h5"
        if path.is_file():
            image, label = read_h5_pair(path, ndim=3)
            source = str(path)
        elif case_id in self._train_volumes:
            image, label = self._stack_slices(case_id)
            source = str(self.slice_dir / f"{case_id}_slice_*.h5")
        else:
            raise DataError(f"{path}: no volume for case {case_id!r} (nor training slices of it)")
        if label.size and int(label.max()) >= self.num_classes:
            raise DataError(f"{source}: label id {int(label.max())} is outside the 4 ACDC classes")
        return Volume(case_id, image, label, None, {"source": source})

    def _stack_slices(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A training volume from its slices (cross-validation predicts the held-out patients' volumes):
        ``_slice_K`` in K order, which must run without gaps."""
        numbered = {}
        for n in self._train_volumes[case_id]:
            k = n.rpartition("_slice_")[2]
            if not k.isdigit():
                raise DataError(f"{self.slice_dir / n}.h5: expected the name {case_id}_slice_K (K a number)")
            numbered[int(k)] = n
        index = sorted(numbered)
        names = [numbered[k] for k in index]
        if index != list(range(index[0], index[0] + len(index))):
            raise DataError(
                f"{self.slice_dir}: the slices of {case_id} are numbered {index}, with gaps: the volume "
                "cannot be rebuilt"
            )
        pairs = [read_h5_pair(self.slice_dir / f"{n}.h5", ndim=2) for n in names]
        shapes = {p[0].shape for p in pairs}
        if len(shapes) != 1:
            raise DataError(f"{self.slice_dir}: the slices of {case_id} differ in shape {sorted(shapes)}")
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def info(self) -> dict:
        out = super().info()
        out.update(
            root=str(self.root),
            layout="acdc",
            train_slices=len(self._train),
            splits={s: len(v) for s, v in self._splits.items()},
        )
        return out
