"""Lazy, picklable training-slice sequences (one file read per item, so DataLoader workers share nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organseg.data.io import read_h5_pair, read_npz_slice
from organseg.errors import ConfigError, DataError


class FileSlices(Sequence):
    """Training slices stored one per file; ``__getitem__`` reads the file (nothing is read at construction).

    Holds only path strings, so it pickles cheaply into DataLoader workers.
    """

    def __init__(self, paths: Sequence[str | Path], fmt: str, num_classes: int | None = None) -> None:
        if fmt not in ("npz", "h5"):
            raise ValueError(f"unknown slice format {fmt!r}")
        self.paths = [str(p) for p in paths]
        self.fmt = fmt
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]  # type: ignore[return-value]
        path = self.paths[index]
        image, label = read_npz_slice(path) if self.fmt == "npz" else read_h5_pair(path, ndim=2)
        if self.num_classes is not None and label.size and int(label.max()) >= self.num_classes:
            raise DataError(f"{path}: label id {int(label.max())} is outside the {self.num_classes} classes")
        return image, label

    def __repr__(self) -> str:
        return f"FileSlices({len(self)} x .{self.fmt})"


def holdout(case_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` case ids drawn with a seeded generator (sorted), for a validation split out of the training
    cases."""
    if n == 0:
        return []
    if n < 0 or n >= len(case_ids):
        raise ConfigError(
            f"cannot hold out {n} validation case(s) from {len(case_ids)} training case(s): "
            "at least one case must stay for training"
        )
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(case_ids), size=n, replace=False)
    return sorted(case_ids[i] for i in pick)
