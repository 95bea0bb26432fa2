"""Your own data in the nnU-Net v2 raw layout, read directly (no conversion step).

Layout::

    dataset.json        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, ...},
                         "numTraining": N, "file_ending": ".nii.gz"}
    imagesTr/CASE_0000.nii.gz   labelsTr/CASE.nii.gz
    imagesTs/CASE_0000.nii.gz   (optional; the test split holds those with a label in labelsTs/CASE.nii.gz)
    splits_final.json           (optional) [{"train": [...], "val": [...]}, ...] as nnU-Net writes it

Intensities: a channel named CT is windowed (default the Synapse window [-125, 275]) or, with
``ct_normalization="percentile"``, clipped nnU-Net-style at the 0.5/99.5 percentiles of the training
foreground (computed once at open, or given as ``percentiles=(lo, hi)``); any other modality gets a per-image
z-score clipped to +-3 SD and mapped to [0, 1].

Orientation: every case is turned (an exact permutation and flips of its voxels, from its direction matrix;
see :mod:`organseg.imageio.orientation`) to the orientation of the first training case, so that all training
slices share one patient orientation; then slices are taken along the axis of coarsest median spacing of the
training cases (ties: that orientation's first array axis). :attr:`orientation` is the code of the arrays the
network sees; ``Volume.meta`` records it with the origin and direction of the turned array (so that a label
map written with them lies on the scan) and ``transpose`` / ``flips``, the turn from the file's voxel order.
Without a split file, ``val_fraction`` of the cases form a seeded validation split.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organseg.data.base import SegmentationDataset, Volume, check_disjoint_subjects
from organseg.data.classes import unknown_ids
from organseg.data.io import check_finite, find_duplicates
from organseg.data.preprocess import (
    SYNAPSE_WINDOW,
    apply_preprocessing,
    ct_window_spec,
    foreground_percentiles,
)
from organseg.data.preprocess import percentile_spec as make_percentile_spec
from organseg.errors import ConfigError, DataError
from organseg.imageio.formats import IMAGE_SUFFIXES
from organseg.imageio.orientation import Reorientation, reorientation, scan_orientation, transposed_code
from organseg.imageio.volumes import Geometry, grid_relation, read_image, read_image_info
from organseg.progress import progress_bar

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_IMAGE_ENDINGS = (*IMAGE_SUFFIXES, ".png", ".tif", ".tiff", ".bmp", ".npy", ".npz", ".h5", ".b2nd", ".dcm")


def _load_pair(
    image_path: Path,
    label_path: Path | None,
    spec: dict,
    turn: Reorientation,
    label_ids: Sequence[int],
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    raw, geom = read_image(image_path)
    check_finite(raw, image_path)
    image = np.ascontiguousarray(turn.apply(apply_preprocessing(raw, spec, source=str(image_path))))
    label = None
    if label_path is not None:
        lab, _ = read_image(label_path)
        if lab.shape != raw.shape:
            raise DataError(f"{label_path}: label shape {lab.shape} does not match image shape {raw.shape}")
        if np.issubdtype(lab.dtype, np.floating):
            check_finite(lab, label_path, "label")
            if not np.array_equal(lab, np.round(lab)):
                raise DataError(f"{label_path}: label holds non-integer values")
        bad = unknown_ids(lab, label_ids)
        if bad:
            detail = ", ".join(f"id {k}: {v} voxels" for k, v in sorted(bad.items())[:8])
            raise DataError(f"{label_path}: label ids not in dataset.json 'labels' ({detail})")
        label = np.ascontiguousarray(turn.apply(lab.astype(np.int64)))
    return image, label, turn.spacing(geom.spacing)


class _VolumeCache:
    """Per-process LRU of preprocessed volumes, bounded in bytes: slices of one case are read from one
    decode."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0

    def get(self, key: int):
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: int, item: tuple[np.ndarray, np.ndarray]) -> None:
        size = item[0].nbytes + item[1].nbytes
        if size > self.max_bytes:
            return
        while self._items and self._bytes + size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old[0].nbytes + old[1].nbytes
        self._items[key] = item
        self._bytes += size


class NnUNetSlices(Sequence):
    """Lazy training slices of nnU-Net cases: item i reads (or takes from the per-process cache) its
    volume."""

    def __init__(
        self,
        cases: Sequence[tuple[str, str]],
        depths: Sequence[int],
        spec: dict,
        turns: Sequence[Reorientation],
        label_ids: Sequence[int],
        cache_bytes: int,
    ) -> None:
        self.cases = [(str(i), str(lab)) for i, lab in cases]
        self.spec = dict(spec)
        self.turns = list(turns)
        self.label_ids = list(label_ids)
        self.cache_bytes = int(cache_bytes)
        self.depths = [int(d) for d in depths]
        self.index = [(c, k) for c, d in enumerate(self.depths) for k in range(d)]
        self._cache = _VolumeCache(self.cache_bytes)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None  # each DataLoader worker builds its own cache
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache = _VolumeCache(self.cache_bytes)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        c, k = self.index[i]
        item = self._cache.get(c)
        if item is None:
            image_path, label_path = self.cases[c]
            image, label, _ = _load_pair(
                Path(image_path), Path(label_path), self.spec, self.turns[c], self.label_ids
            )
            if image.shape[0] != self.depths[c]:
                raise DataError(f"{image_path}: the file changed since the dataset was opened")
            item = (image, label)  # type: ignore[assignment]
            self._cache.put(c, item)  # type: ignore[arg-type]
        image, label = item
        return image[k].copy(), label[k].copy()


class NnUNetDataset(SegmentationDataset):
    """Reader for an nnU-Net v2 raw dataset folder (see module docstring)."""

    name = "nnunet"

    def __init__(
        self,
        root: str | Path,
        *,
        fold: int = 0,
        val_fraction: float = 0.2,
        split_seed: int = 12345,
        ct_normalization: str = "window",
        window: Sequence[float] = SYNAPSE_WINDOW,
        percentiles: Sequence[float] | None = None,
        zscore_clip: Sequence[float] = (-3.0, 3.0),
        splits_file: str | Path | None = None,
        cache_bytes: int = 2 * 1024**3,
        progress: bool = True,
        cross_validation: bool = False,
    ) -> None:
        self.root = Path(root)
        self.cache_bytes = cache_bytes
        meta = self._read_dataset_json()
        self.name = str(meta.get("name") or self.root.name)
        labels = meta["labels"]
        self.label_ids = sorted(labels.values())
        self.class_names = tuple(name for name, _ in sorted(labels.items(), key=lambda kv: kv[1]))
        self.file_ending = str(meta["file_ending"])
        channel = str(next(iter(meta["channel_names"].values())))
        self.modality = channel

        self._train_pairs = self._scan_pairs(self.root / "imagesTr", self.root / "labelsTr", required=True)
        self.train_source = str(self.root / "imagesTr")
        if len(self._train_pairs) != int(meta["numTraining"]):
            raise DataError(
                f"{self.root / 'dataset.json'}: numTraining is {meta['numTraining']} but labelsTr holds "
                f"{len(self._train_pairs)} case(s)"
            )
        self._test_pairs = self._scan_pairs(self.root / "imagesTs", self.root / "labelsTs", required=False)

        # Header pass: shapes, geometry, spacing (cheap; no voxels read).
        self._shapes: dict[str, tuple[int, int, int]] = {}
        self._geometries: dict[str, Geometry] = {}
        for case, (img, lab) in {**self._train_pairs, **self._test_pairs}.items():
            shape_i, geom_i = read_image_info(img)
            shape_l, geom_l = read_image_info(lab)
            if grid_relation(shape_i, geom_i, shape_l, geom_l) != "same":
                if shape_i != shape_l:
                    raise DataError(
                        f"{lab}: label shape {shape_l} does not match image shape {shape_i} ({img.name})"
                    )
                raise DataError(f"{lab}: label geometry (spacing/origin/direction) does not match {img.name}")
            self._shapes[case] = shape_i
            self._geometries[case] = geom_i
        self._orient()

        self._splits_path = Path(splits_file) if splits_file is not None else self.root / "splits_final.json"
        if cross_validation:  # data.fold: every labelled case is in the pool the folds divide
            self._train, self._val = sorted(self._train_pairs), []
        else:
            self._train, self._val = self._split(fold, val_fraction, split_seed, splits_file)

        # Intensity spec.
        if channel.lower() == "ct":
            if ct_normalization == "window":
                self.preprocessing = ct_window_spec(window)
            elif ct_normalization == "percentile":
                if percentiles is None:
                    lo, hi = foreground_percentiles(self._iter_raw(self._train, progress))
                else:
                    lo, hi = (float(v) for v in percentiles)
                self.preprocessing = make_percentile_spec(lo, hi)
            else:
                raise ConfigError(
                    f"ct_normalization must be 'window' or 'percentile', got {ct_normalization!r}"
                )
        else:
            clip = [float(v) for v in zscore_clip]
            self.preprocessing = {"kind": "zscore_minmax", "clip": clip}
        check_disjoint_subjects(self)

    # ------------------------------------------------------------------------------------------- helpers
    def _orient(self) -> None:
        """One orientation for every case: the first training case's, with the coarsest axis first."""
        codes = {
            case: scan_orientation(self._geometries[case].direction, str(pair[0])).code
            for case, pair in {**self._train_pairs, **self._test_pairs}.items()
        }
        first = sorted(self._train_pairs)[0]
        stored = codes[first]
        spacings = [
            reorientation(codes[c], stored).spacing(self._geometries[c].spacing) for c in self._train_pairs
        ]
        median = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
        axis = int(np.argmax(median))
        if np.isclose(median[axis], median[0]):
            axis = 0  # ties keep the first array axis
        self.slice_axis = axis
        self.transpose = (axis, *[a for a in range(3) if a != axis])
        self.orientation = transposed_code(stored, self.transpose)
        turned = sum(codes[c] != stored for c in self._train_pairs)
        self.orientation_note = f"from the direction matrix of {self._train_pairs[first][0].name}" + (
            f"; {turned} other training case(s) turned to it" if turned else ""
        )
        self._turns = {case: reorientation(code, self.orientation) for case, code in codes.items()}

    def _read_dataset_json(self) -> dict:
        if not self.root.is_dir():
            raise DataError(f"{self.root}: folder not found")
        path = self.root / "dataset.json"
        if not path.is_file():
            raise DataError(f"{path}: file not found (an nnU-Net raw folder needs dataset.json)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise DataError(f"{path}: must hold a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise DataError(f"{path}: missing key(s) {missing} (nnU-Net v2 needs {list(REQUIRED_KEYS)})")
        channels, labels = meta["channel_names"], meta["labels"]
        if not isinstance(channels, dict) or len(channels) != 1:
            raise DataError(
                f"{path}: 'channel_names' must name exactly one channel (the networks take one input "
                f"channel), got {channels!r}"
            )
        if not isinstance(labels, dict) or not labels:
            raise DataError(f"{path}: 'labels' must map class names to ids, got {labels!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
            raise DataError(
                f"{path}: 'labels' values must be integer ids (region-based labels are not supported)"
            )
        ids = sorted(labels.values())
        if ids != list(range(len(ids))):
            raise DataError(
                f"{path}: 'labels' ids must be 0..{len(ids) - 1} without gaps (0 = background), got {ids}"
            )
        if not isinstance(meta["numTraining"], int):
            raise DataError(f"{path}: 'numTraining' must be an integer")
        if not isinstance(meta["file_ending"], str) or not meta["file_ending"].startswith("."):
            raise DataError(f"{path}: 'file_ending' must be a suffix such as '.nii.gz'")
        return meta

    def _scan_pairs(
        self, image_dir: Path, label_dir: Path, *, required: bool
    ) -> dict[str, tuple[Path, Path]]:
        fe = self.file_ending
        if not image_dir.is_dir():
            if required:
                raise DataError(f"{image_dir}: folder not found")
            return {}
        if not label_dir.is_dir():
            if required:
                raise DataError(f"{label_dir}: folder not found")
            return {}  # unlabelled test images are for `predict`, not for evaluation
        images = [p for p in image_dir.iterdir() if p.name.endswith(fe) and not p.name.startswith(".")]
        labels = [p for p in label_dir.iterdir() if p.name.endswith(fe) and not p.name.startswith(".")]
        for folder in (image_dir, label_dir):
            # Images under another ending would be left out silently (nnU-Net lists by file_ending); a
            # file_ending that does not match the files is also the usual cause of "no cases". Notes and
            # other non-image files are ignored, as nnU-Net does.
            others = sorted(
                p.name
                for p in folder.iterdir()
                if p.is_file()
                and not p.name.startswith(".")
                and not p.name.endswith(fe)
                and p.name.lower().endswith(_IMAGE_ENDINGS)
            )
            if others:
                listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
                raise DataError(
                    f"{folder}: {len(others)} file(s) do not end with {fe!r}, the file_ending of "
                    f"{self.root / 'dataset.json'} ({listed}); fix file_ending or the file names"
                )
        if required and not images and not labels:
            raise DataError(f"{image_dir}: empty folder (expected CASE_0000{fe} files)")
        by_case: dict[str, Path] = {}
        for p in images:
            stem = p.name[: -len(fe)]
            case, sep, channel = stem.rpartition("_")
            if not sep or len(channel) != 4 or not channel.isdigit():
                raise DataError(f"{p}: image name must be CASE_XXXX{fe} (XXXX = 4-digit channel)")
            if channel != "0000":
                raise DataError(f"{p}: channel {channel} but dataset.json declares a single channel 0000")
            by_case[case] = p
        dups = find_duplicates(p.name[: -len(fe)] for p in labels)
        if dups:
            raise DataError(f"{label_dir}: duplicate case id(s) {dups}")
        pairs: dict[str, tuple[Path, Path]] = {}
        label_cases = {p.name[: -len(fe)]: p for p in labels}
        for case in sorted(set(by_case) | set(label_cases)):
            if case not in label_cases:
                raise DataError(f"{by_case[case]}: missing label (expected {label_dir / (case + fe)})")
            if case not in by_case:
                raise DataError(
                    f"{label_cases[case]}: missing image (expected {image_dir / (case + '_0000' + fe)})"
                )
            pairs[case] = (by_case[case], label_cases[case])
        return pairs

    def _split(
        self, fold: int, val_fraction: float, seed: int, splits_file: str | Path | None
    ) -> tuple[list[str], list[str]]:
        cases = sorted(self._train_pairs)
        path = Path(splits_file) if splits_file is not None else self.root / "splits_final.json"
        if path.is_file():
            try:
                folds = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}: cannot read JSON ({exc})") from None
            if not isinstance(folds, list) or not all(
                isinstance(f, dict) and "train" in f and "val" in f for f in folds
            ):
                raise DataError(f"{path}: expected a list of {{'train': [...], 'val': [...]}} folds")
            if not 0 <= fold < len(folds):
                raise ConfigError(f"fold {fold} does not exist in {path} ({len(folds)} folds)")
            train, val = [str(c) for c in folds[fold]["train"]], [str(c) for c in folds[fold]["val"]]
            for what, ids in (("train", train), ("val", val)):
                dups = find_duplicates(ids)
                if dups:
                    raise DataError(f"{path}: fold {fold} {what} has duplicate case id(s) {dups[:5]}")
                absent = [c for c in ids if c not in self._train_pairs]
                if absent:
                    raise DataError(
                        f"{path}: fold {fold} {what} names case(s) {absent[:5]} that are not in labelsTr"
                    )
            both = set(train) & set(val)
            if both:
                raise DataError(f"{path}: fold {fold} has case(s) {sorted(both)[:5]} in both train and val")
            return train, val
        elif splits_file is not None:
            raise DataError(f"{path}: split file not found")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n_val = min(len(cases) - 1, int(round(len(cases) * val_fraction)))
        if val_fraction > 0 and len(cases) >= 2:
            n_val = max(1, n_val)
        n_val = max(0, n_val)
        order = np.random.default_rng(seed).permutation(len(cases))
        val = sorted(cases[i] for i in order[:n_val])
        return [c for c in cases if c not in set(val)], val

    def predefined_folds(self) -> list[list[str]] | None:
        """The held-out cases of each fold of ``splits_final.json`` (nnU-Net's own cross-validation), or
        None without the file."""
        if not self._splits_path.is_file():
            return None
        return [self._split(k, 0.0, 0, self._splits_path)[1] for k in range(self._fold_count())]

    def _fold_count(self) -> int:
        try:
            folds = json.loads(self._splits_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{self._splits_path}: cannot read JSON ({exc})") from None
        return len(folds) if isinstance(folds, list) else 0

    def split_source(self, split: str) -> str:
        if split == "test":
            return str(self.root / "imagesTs")
        if self._splits_path.is_file():
            return f"{self._splits_path} ({split})"
        return f"the seeded {split} split of {self.root / 'imagesTr'}"

    def _iter_raw(self, cases: Sequence[str], progress: bool):
        bar = progress_bar(
            cases, desc="intensity percentiles", unit="case", disable=not progress, leave=False
        )
        for case in bar:
            img, lab = self._train_pairs[case]
            image, _ = read_image(img)
            check_finite(image, img)
            label, _ = read_image(lab)
            yield image, label

    # ------------------------------------------------------------------------------------------- interface
    def train_slices(self) -> NnUNetSlices:
        cases = [self._train_pairs[c] for c in self._train]
        depths = [self._depth(c) for c in self._train]
        turns = [self._turns[c] for c in self._train]
        return NnUNetSlices(cases, depths, self.preprocessing, turns, self.label_ids, self.cache_bytes)

    def _depth(self, case: str) -> int:
        return self._turns[case].shape(self._shapes[case])[0]

    def train_slice_cases(self) -> list[str]:
        return [str(c) for c in self._train for _ in range(self._depth(c))]

    def case_ids(self, split: str) -> list[str]:
        if split == "train":
            return list(self._train)
        if split == "val":
            return list(self._val)
        if split == "test":
            return sorted(self._test_pairs)
        raise ConfigError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")

    def volume(self, case_id: str) -> Volume:
        pair = self._train_pairs.get(case_id) or self._test_pairs.get(case_id)
        if pair is None:
            raise DataError(f"{self.root}: no case {case_id!r} in labelsTr or labelsTs")
        turn = self._turns[case_id]
        image, label, spacing = _load_pair(pair[0], pair[1], self.preprocessing, turn, self.label_ids)
        geometry = turn.geometry(self._geometries[case_id], self._shapes[case_id])
        meta = {
            "source": str(pair[0]),
            "orientation": self.orientation,
            "origin": list(geometry.origin),
            "direction": list(geometry.direction),
            "transpose": list(turn.axes),
            "flips": list(turn.flips),
        }
        return Volume(case_id, image, label, spacing, meta)

    def info(self) -> dict:
        out = super().info()
        out.update(
            root=str(self.root),
            layout="nnunet",
            modality=self.modality,
            slice_axis=self.slice_axis,
            splits={s: len(self.case_ids(s)) for s in ("train", "val", "test")},
        )
        return out
