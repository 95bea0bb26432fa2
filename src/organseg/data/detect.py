"""``open_dataset(root)``: recognise a folder's layout and return its reader."""

from __future__ import annotations

import inspect
from pathlib import Path

from organseg.data.acdc import ACDCDataset
from organseg.data.base import SegmentationDataset
from organseg.data.folds import apply_data_config
from organseg.data.nnunet import NnUNetDataset
from organseg.data.synapse import SynapseDataset
from organseg.errors import ConfigError, DataError

READERS: dict[str, type[SegmentationDataset]] = {
    "synapse": SynapseDataset,
    "acdc": ACDCDataset,
    "nnunet": NnUNetDataset,
}


def detect_layout(root: str | Path) -> str:
    """'synapse', 'acdc' or 'nnunet' from the folder's contents; DataError says what was found instead."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    entries = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DataError(f"{root}: empty folder")
    names = set(entries)
    if "dataset.json" in names or "imagesTr" in names:
        return "nnunet"
    if "train_npz" in names or "test_vol_h5" in names:
        return "synapse"
    if "slices" in names or "volumes" in names or "train_slices.list" in names:
        return "acdc"
    if {"img", "label"} & names:
        raise DataError(
            f"{root}: this is a raw BTCV folder (img/, label/); convert it first with "
            f"`organseg prepare synapse --raw {root} --out DIR`"
        )
    raise DataError(
        f"{root}: unknown dataset layout (found {sorted(entries)[:8]}); expected Synapse "
        "(train_npz/, test_vol_h5/), ACDC (slices/, volumes/, *.list) or nnU-Net v2 raw "
        "(dataset.json, imagesTr/, labelsTr/)"
    )


def open_dataset(root: str | Path, **options) -> SegmentationDataset:
    """Open a dataset folder of any supported layout.

    ``options`` go to the reader (``layout="synapse"|"acdc"|"nnunet"`` forces one); e.g. ``val_cases=2`` for
    Synapse, ``fold=1`` or ``ct_normalization="percentile"`` for nnU-Net. Unknown options are a ConfigError.
    """
    layout = options.pop("layout", None) or detect_layout(root)
    if layout not in READERS:
        raise ConfigError(f"unknown dataset layout {layout!r}; expected one of {sorted(READERS)}")
    cls = READERS[layout]
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in options if k not in params or k in ("self", "root"))
    if unknown:
        allowed = sorted(k for k in params if k not in ("self", "root"))
        raise ConfigError(f"option(s) {unknown} do not apply to a {layout} dataset (it accepts {allowed})")
    return cls(root, **options)


def resolve_dataset(
    data: str | Path | SegmentationDataset | None, config: dict | None, missing: str
) -> SegmentationDataset:
    """The one dataset opener of ``train`` and ``test``: a dataset object as given, else the folder ``data``,
    else the configuration's ``data.root`` (a run's config, or a checkpoint's); ``missing`` is the ConfigError
    message when there is none of them. The configuration's ``data.subjects`` and ``data.fold`` apply
    (:func:`organseg.data.folds.apply_data_config`)."""
    data_cfg = (config or {}).get("data") or {}
    if isinstance(data, SegmentationDataset):
        return apply_data_config(data, data_cfg)
    root = data if data is not None else data_cfg.get("root")
    if root is None:
        raise ConfigError(missing)
    return apply_data_config(open_dataset(root, **layout_options(root, data_cfg)), data_cfg)


def layout_options(root: str | Path, data_cfg: dict) -> dict:
    """Reader options a configuration's ``data`` section implies: with ``data.fold``, an nnU-Net folder
    opens with every labelled case in the pool the folds divide (no seeded validation split of its own).
    ``compare --folds`` opens its dataset with the same options, so its splits.json is what the runs see."""
    if data_cfg.get("fold") is not None and detect_layout(root) == "nnunet":
        return {"cross_validation": True}
    return {}
