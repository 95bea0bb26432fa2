"""The prepared arrays organseg trains on: TransUNet/SSL4MIS ``.npz`` slices and ``.h5`` volumes, their value
checks and the case lists beside them, with one clear :class:`~organseg.errors.DataError` per bad file.

Medical volumes (NIfTI, DICOM) are :mod:`organseg.imageio`'s.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from organseg.errors import DataError
from organseg.fileio import atomic_write, atomic_write_bytes


def check_finite(array: np.ndarray, path: str | Path, what: str = "image") -> None:
    """DataError if a float array holds NaN or inf voxels."""
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise DataError(f"{path}: {what} has {int(bad.sum())} NaN/inf voxels")


#: Stored images of the TransUNet/SSL4MIS formats are in [0, 1]; float rounding of a stored min-max or window
#: scaling can overshoot by a few ULP, a unit of HU or 8-bit grey cannot hide under this.
UNIT_RANGE_TOLERANCE = 1e-3


def check_unit_range(image: np.ndarray, path: str | Path) -> None:
    """DataError when a stored image leaves [0, 1] (beyond a rounding tolerance): the networks were trained on
    [0, 1] inputs, and an image saved in HU or raw grey values would otherwise train and test silently."""
    if not image.size:
        return
    lo, hi = float(image.min()), float(image.max())
    if lo < -UNIT_RANGE_TOLERANCE or hi > 1.0 + UNIT_RANGE_TOLERANCE:
        raise DataError(
            f"{path}: image values span [{lo:g}, {hi:g}], outside the [0, 1] this format stores (raw HU or "
            "grey values? raw CT goes through `organseg prepare synapse`)"
        )


def read_npz_slice(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One TransUNet training slice: (image (H, W) float32, label (H, W) int64)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("image", "label") if k not in data.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {missing} (a slice .npz holds 'image' and 'label')"
                )
            image, label = data["image"], data["label"]
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: cannot read .npz, file is truncated or corrupt ({exc})") from None
    return _check_pair(image, label, path, ndim=2)


def read_h5_pair(path: str | Path, *, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``label`` datasets of an SSL4MIS / TransUNet ``.h5`` (2-D slice or 3-D volume)."""
    import h5py  # noqa: PLC0415 (about 0.15 s to import: only the .h5 layouts (ACDC, Synapse volumes) need it)

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in ("image", "label") if k not in fh]
            if missing:
                raise DataError(f"{path}: missing dataset(s) {missing} (expected 'image' and 'label')")
            image, label = fh["image"][()], fh["label"][()]
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot read .h5, file is truncated or corrupt ({exc})") from None
    return _check_pair(image, label, path, ndim=ndim)


def _check_pair(
    image: np.ndarray, label: np.ndarray, path: Path, *, ndim: int
) -> tuple[np.ndarray, np.ndarray]:
    kind = "slice" if ndim == 2 else "volume"
    if image.ndim != ndim:
        raise DataError(
            f"{path}: image is {image.ndim}-D with shape {image.shape}; a {ndim}-D {kind} is needed"
        )
    if label.shape != image.shape:
        raise DataError(f"{path}: image shape {image.shape} and label shape {label.shape} differ")
    check_finite(image, path)
    image = image.astype(np.float32, copy=False)
    check_unit_range(image, path)
    if np.issubdtype(label.dtype, np.floating):
        check_finite(label, path, "label")
        if not np.array_equal(label, np.round(label)):
            raise DataError(f"{path}: label holds non-integer values")
    if label.size and label.min() < 0:
        raise DataError(f"{path}: label holds negative ids")
    return image, label.astype(np.int64)


def atomic_write_npz(path: str | Path, *, compress: bool = False, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_h5(path: str | Path, *, compression: str | None = None, **arrays: np.ndarray) -> None:
    import h5py  # noqa: PLC0415 (about 0.15 s to import: only the .h5 layouts (ACDC, Synapse volumes) need it)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as fh:
            for key, value in arrays.items():
                fh.create_dataset(key, data=value, compression=compression)

    atomic_write(path, write)


def find_duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    return dups


def read_list(path: str | Path, *, what: str = "list") -> list[str]:
    """Non-empty stripped lines of a list file; DataError for a missing file or duplicate lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from None
    lines = [ln for ln in lines if ln]
    dups = find_duplicates(lines)
    if dups:
        raise DataError(f"{path}: duplicate case id(s) {dups[:5]}")
    return lines


def require_files(paths: Sequence[Path], listed_in: Path, what: str) -> None:
    """DataError naming the list and the first entries that have no file."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        names = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{listed_in}: {len(missing)} listed {what} have no file: {names}{more}")
