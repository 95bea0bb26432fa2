"""Images without labels for self-supervised pretraining (``organseg pretrain``): training slices of prepared
datasets (their labels ignored) and folders of NIfTI / DICOM volumes, together as one
:class:`PretrainImages` dataset whose "labels" are all background.

A volume folder is sliced as ``prepare`` slices: along the file's own first array axis (D of (D, H, W), the
axial slices of a CT), no resampling, no cropping, each volume's intensities mapped to [0, 1] by the source's
spec (:mod:`organseg.data.preprocess`: a CT window, the MRI z-score, min-max), which is recorded per source.

What must stay unseen is refused where organseg can tell: a dataset source gives its training split only
(``split: val`` / ``test`` is an error, and ``data.fold`` leaves the fold's held-out subjects out), and a
volume folder inside a dataset organseg recognises (an nnU-Net ``imagesTs``, say) is refused, since which of
its cases are validation or test is the dataset's to say: give the dataset folder instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from organseg.data.base import SegmentationDataset, Volume
from organseg.data.detect import detect_layout, open_dataset
from organseg.data.folds import apply_data_config
from organseg.data.preprocess import SYNAPSE_WINDOW, describe_spec, validate_spec
from organseg.data.preprocess import apply_preprocessing as map_intensities
from organseg.errors import ConfigError, DataError
from organseg.imageio.dicom import is_dicom_folder
from organseg.imageio.formats import IMAGE_SUFFIXES
from organseg.imageio.volumes import read_image

#: ``intensity`` of a volume source -> how it is mapped to [0, 1]
INTENSITIES = ("ct", "mri", "minmax")
SOURCE_KEYS = ("path", "kind", "split", "intensity", "window")
SOURCE_KINDS = ("dataset", "volumes")
HELD_OUT_SPLITS = ("val", "test")


def intensity_spec(intensity: str, window: Sequence[float] | None, where: str) -> dict:
    """The preprocessing spec of a volume source: ``ct`` a HU window (Synapse's by default), ``mri`` the
    per-volume z-score clipped to 3 SD, ``minmax`` per-volume min-max."""
    if intensity == "ct":
        lo, hi = window if window is not None else SYNAPSE_WINDOW
        return validate_spec({"kind": "ct_window", "window": [float(lo), float(hi)]})
    if window is not None:
        raise ConfigError(f"{where}: window applies to intensity: ct only (got intensity: {intensity})")
    if intensity == "mri":
        return validate_spec({"kind": "zscore_minmax", "clip": [-3.0, 3.0]})
    return validate_spec({"kind": "minmax"})


@dataclass
class SourceRecord:
    """One source as the run records it (env.json, the encoder file)."""

    path: str
    kind: str  # "dataset" (its layout's reader) or "volumes"
    preprocessing: dict
    slices: int = 0
    cases: list[str] = field(default_factory=list)
    layout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "layout": self.layout,
            "preprocessing": self.preprocessing,
            "intensity": describe_spec(self.preprocessing),
            "slices": self.slices,
            "cases": len(set(self.cases)),
        }


def _dataset_around(folder: Path) -> tuple[Path, str] | None:
    """The dataset folder organseg recognises that holds ``folder`` (itself excluded), with its layout."""
    for parent in folder.resolve().parents:
        try:
            return parent, detect_layout(parent)
        except DataError:
            continue
    return None


def _volume_paths(folder: Path) -> list[Path]:
    """The volumes of a folder, sorted: image files (NIfTI, MHA, NRRD) and DICOM series folders, one level
    down and in the folder itself."""
    if not folder.exists():
        raise DataError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    if is_dicom_folder(folder):
        return [folder]
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        image_file = p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
        if image_file or (p.is_dir() and is_dicom_folder(p)):
            found.append(p)
    return found


class _Source:
    """One source's slices: ``(image, None)`` items and their case ids."""

    def __init__(self, record: SourceRecord, images: Sequence, cases: list[str]) -> None:
        self.record, self.images, self.cases = record, images, cases


def _dataset_source(path: Path, spec: dict, data_cfg: dict[str, Any]) -> _Source:
    layout = detect_layout(path)
    dataset = apply_data_config(open_dataset(path), data_cfg)  # data.fold: the held-out subjects stay out
    slices, cases = dataset.train_slices(), list(dataset.train_slice_cases())
    if len(slices) == 0:
        raise DataError(f"{path}: the {layout} dataset has no training slices to pretrain on")
    record = SourceRecord(str(path), "dataset", dict(dataset.preprocessing), len(slices), cases, layout)
    return _Source(record, _Images(slices), cases)


class _Images(Sequence):
    """A dataset's training slices without their labels (read lazily, one slice at a time)."""

    def __init__(self, slices: Sequence) -> None:
        self.slices = slices

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.slices[i][0]


def _volume_source(path: Path, spec: dict) -> _Source:
    around = _dataset_around(path)
    if around is not None:
        root, layout = around
        raise ConfigError(
            f"{path}: is inside the {layout} dataset {root}, whose validation and test cases must stay "
            f"unseen; give the dataset folder itself ({root}), whose training split alone is pretrained on"
        )
    try:
        layout = detect_layout(path)
    except DataError:
        layout = None
    if layout is not None:
        raise ConfigError(f"{path}: is a {layout} dataset; give it as a dataset source, not as volumes")
    paths = _volume_paths(path)
    if not paths:
        raise DataError(
            f"{path}: no volumes found (expected {', '.join(IMAGE_SUFFIXES)} files or DICOM series folders)"
        )
    images: list[np.ndarray] = []
    cases: list[str] = []
    for p in paths:
        raw, _ = read_image(p)
        _check_not_labels(raw, p)
        mapped = map_intensities(raw, spec, source=str(p))
        name = p.name.split(".")[0] if p.is_file() else p.name
        for k in range(mapped.shape[0]):
            images.append(mapped[k])
            cases.append(name)
    record = SourceRecord(str(path), "volumes", spec, len(images), cases)
    return _Source(record, images, cases)


def _check_not_labels(raw: np.ndarray, path: Path) -> None:
    """A folder of label maps given as images would pretrain on a few flat grey levels without a word."""
    if raw.size and np.issubdtype(raw.dtype, np.integer) and raw.min() >= 0 and raw.max() < 256:
        values = np.unique(raw[:: max(1, raw.shape[0] // 8)])
        if len(values) <= 16:
            raise DataError(
                f"{path}: holds {len(values)} distinct integer values ({', '.join(map(str, values[:8]))}): a "
                "label map, not an image; pretraining reads images (give the images folder)"
            )


def check_source(entry: Any, index: int) -> dict[str, Any]:
    """A ``data.sources`` item as a checked mapping (a bare string is ``{path: ...}``)."""
    where = f"data.sources[{index}]"
    if isinstance(entry, (str, Path)):
        entry = {"path": str(entry)}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a folder or a mapping with 'path', got {entry!r}")
    unknown = sorted(set(entry) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {', '.join(SOURCE_KEYS)}")
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        raise ConfigError(f"{where}: 'path' (a folder) is required")
    split = entry.get("split", "train")
    if split in HELD_OUT_SPLITS:
        raise ConfigError(
            f"{where}: split {split!r} of {entry['path']} must stay unseen (validation and test data are "
            "never pretrained on); pretraining reads the training split"
        )
    if split != "train":
        raise ConfigError(f"{where}: split must be 'train' (the only split pretrained on), got {split!r}")
    kind = entry.get("kind")
    if kind is not None and kind not in SOURCE_KINDS:
        raise ConfigError(
            f"{where}: kind must be dataset or volumes (or absent: told by the folder), got {kind!r}"
        )
    intensity = entry.get("intensity")
    if intensity is not None and intensity not in INTENSITIES:
        raise ConfigError(f"{where}: intensity must be one of {', '.join(INTENSITIES)}, got {intensity!r}")
    window = entry.get("window")
    if window is not None and (
        not isinstance(window, (list, tuple))
        or len(window) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
    ):
        raise ConfigError(f"{where}: window must be two numbers [low, high] in HU, got {window!r}")
    return {"path": entry["path"], "kind": kind, "split": "train", "intensity": intensity, "window": window}


class PretrainImages(SegmentationDataset):
    """Every source's slices as one training set: ``train_slices()`` gives ``(image, all-background label)``
    so that organseg's batches, augmentation and resume work unchanged; no evaluation splits."""

    name = "pretraining images"
    class_names = ("background", "foreground")
    train_source = "data.sources"

    def __init__(self, sources: Sequence[Any], data_cfg: dict[str, Any] | None = None) -> None:
        if not sources:
            raise ConfigError(
                "no pretraining images: give --data DIR (a prepared dataset) or --volumes DIR (NIfTI / DICOM "
                "volumes), or data.sources in the configuration"
            )
        data_cfg = data_cfg or {}
        self._sources: list[_Source] = []
        for i, raw in enumerate(sources):
            entry = check_source(raw, i)
            path = Path(entry["path"])
            if not path.exists():
                raise DataError(f"{path}: folder not found (data.sources[{i}])")
            if entry["kind"] == "dataset":
                layout = detect_layout(path)  # a folder given as a dataset must be one: its error, as train's
            elif entry["kind"] == "volumes":
                layout = None
            else:
                try:
                    layout = detect_layout(path)
                except DataError:
                    layout = None
            if layout is not None:
                if entry["intensity"] is not None or entry["window"] is not None:
                    raise ConfigError(
                        f"data.sources[{i}]: {path} is a {layout} dataset, whose intensities are mapped "
                        "already; intensity and window apply to volume folders"
                    )
                self._sources.append(_dataset_source(path, {}, data_cfg))
                continue
            if entry["intensity"] is None:
                raise ConfigError(
                    f"data.sources[{i}]: {path} is a folder of volumes; say how to map its intensities "
                    f"(intensity: {' | '.join(INTENSITIES)}, e.g. --intensity ct)"
                )
            where = f"data.sources[{i}]"
            spec = intensity_spec(entry["intensity"], entry["window"], where)
            self._sources.append(_volume_source(path, spec))
        self._index = [(s, k) for s, src in enumerate(self._sources) for k in range(len(src.images))]
        specs = [src.record.preprocessing for src in self._sources]
        # One mapping for the checkpoint record when the sources agree; every source's is in records().
        self.preprocessing = specs[0] if all(s == specs[0] for s in specs) else {"kind": "mixed"}
        self._cases = [f"{s}:{self._sources[s].cases[k]}" for s, k in self._index]

    def records(self) -> list[dict[str, Any]]:
        return [src.record.to_dict() for src in self._sources]

    def train_slices(self) -> Sequence[tuple[np.ndarray, np.ndarray]]:
        return _Unlabelled(self)

    def image(self, i: int) -> np.ndarray:
        s, k = self._index[i]
        return np.asarray(self._sources[s].images[k], dtype=np.float32)

    def train_slice_cases(self) -> list[str]:
        return list(self._cases)

    def case_ids(self, split: str) -> list[str]:
        return []

    def volume(self, case_id: str) -> Volume:
        raise KeyError(f"{case_id!r}: pretraining images have no evaluation volumes")


class _Unlabelled(Sequence):
    def __init__(self, images: PretrainImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images._index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        image = self.images.image(i)
        return image, np.zeros(image.shape, dtype=np.uint8)
