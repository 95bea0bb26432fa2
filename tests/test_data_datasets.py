"""Readers behind `open_dataset`: Synapse (TransUNet format), ACDC (real SSL4MIS files), nnU-Net v2 raw."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from helpers import write_tiny_raw
from organseg.data import ArrayDataset, SegmentationDataset, Volume, detect_layout, open_dataset
from organseg.data.augment import RandomGenerator, SliceDataset
from organseg.data.classes import ACDC_CLASSES, SYNAPSE_CLASSES
from organseg.data.folds import FoldView
from organseg.data.io import atomic_write_h5, atomic_write_npz
from organseg.data.nnunet import NnUNetDataset
from organseg.data.prepare import prepare_synapse
from organseg.errors import ConfigError, DataError
from organseg.evaluation.evaluate import evaluate_dataset
from organseg.imageio.volumes import Geometry, read_image, write_image


# ------------------------------------------------------------------------------------------------- Synapse
def _transunet_folder(root, n_train=3, n_test=2, depth=4, lists=True):
    """A miniature of the TransUNet download: train_npz/ slices, test_vol_h5/ volumes, lists_Synapse/."""
    rng = np.random.default_rng(0)
    names = []
    for c in range(1, n_train + 1):
        for k in range(depth):
            name = f"case{c:04d}_slice{k:03d}"
            atomic_write_npz(
                root / "train_npz" / f"{name}.npz",
                image=rng.random((16, 16), dtype=np.float32),
                label=(np.arange(256).reshape(16, 16) % 9).astype(np.float32),
            )
            names.append(name)
    tests = [f"case{c:04d}" for c in range(50, 50 + n_test)]
    for t in tests:
        atomic_write_h5(
            root / "test_vol_h5" / f"{t}.npy.h5",
            image=rng.random((depth, 16, 16), dtype=np.float32),
            label=np.ones((depth, 16, 16), np.float32),
        )
    if lists:
        (root / "lists_Synapse").mkdir(parents=True)
        (root / "lists_Synapse" / "train.txt").write_text("".join(n + "\n" for n in reversed(names)))
        (root / "lists_Synapse" / "test_vol.txt").write_text("".join(t + "\n" for t in tests))
    return names, tests


def test_synapse_reader_reference_layout(tmp_path):
    names, tests = _transunet_folder(tmp_path)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, SegmentationDataset) and ds.class_names == SYNAPSE_CLASSES and ds.num_classes == 9
    slices = ds.train_slices()
    assert len(slices) == 12 and ds.case_ids("test") == tests and ds.case_ids("val") == []
    image, label = slices[0]  # list order is kept (the loader shuffles anyway)
    assert image.dtype == np.float32 and label.dtype == np.int64 and label.max() == 8
    vol = ds.volume(tests[0])
    assert vol.image.shape == (4, 16, 16) and vol.spacing is None and vol.label.dtype == np.int64
    assert ds.info()["splits"] == {"train": 3, "val": 0, "test": 2}
    # no geometry in the TransUNet files: their documented orientation (docs/evaluation.md, Orientation)
    assert ds.orientation == "LPS" and vol.meta["orientation"] == "LPS" and "assumed" in ds.orientation_note
    with pytest.raises(ConfigError, match="unknown split"):
        ds.case_ids("training")


def test_synapse_reader_is_lazy_and_picklable(tmp_path):
    _transunet_folder(tmp_path)
    ds = open_dataset(tmp_path)
    slices = ds.train_slices()
    (tmp_path / "train_npz" / "case0002_slice001.npz").write_bytes(b"broken")  # read only on access
    clone = pickle.loads(pickle.dumps(slices))
    assert len(clone) == len(slices)
    with pytest.raises(DataError, match="case0002_slice001.npz: cannot read .npz"):
        clone[[i for i, p in enumerate(clone.paths) if p.endswith("case0002_slice001.npz")][0]]
    # two worker processes receive the pickled sequence and read the files themselves
    loader = torch.utils.data.DataLoader(
        SliceDataset(ds.train_slices(), RandomGenerator((8, 8))),
        batch_size=4,
        num_workers=2,
        sampler=[0, 1, 2, 3],
    )
    batch = next(iter(loader))
    assert batch[0].shape == (4, 1, 8, 8)


def test_synapse_validation_holdout_and_list_fallback(tmp_path):
    names, _ = _transunet_folder(tmp_path, lists=False)  # lists missing, as in some downloads
    ds = open_dataset(tmp_path, val_cases=1, val_seed=0)
    assert ds.info()["lists"] == "folder"
    val = ds.case_ids("val")
    assert len(val) == 1 and val[0] not in ds.case_ids("train")
    assert len(ds.train_slices()) == 8
    vol = ds.volume(val[0])
    assert vol.image.shape == (4, 16, 16)
    assert open_dataset(tmp_path, val_cases=1, val_seed=0).case_ids("val") == val  # seeded
    with pytest.raises(ConfigError, match="at least one case must stay"):
        open_dataset(tmp_path, val_cases=3)
    with pytest.raises(ConfigError, match="do not apply"):
        open_dataset(tmp_path, fold=2)


def test_synapse_val_txt(tmp_path):
    _transunet_folder(tmp_path)
    (tmp_path / "lists_Synapse" / "val.txt").write_text("case0002\n")
    ds = open_dataset(tmp_path)
    assert ds.case_ids("val") == ["case0002"] and len(ds.train_slices()) == 8
    with pytest.raises(ConfigError, match="already defines"):
        open_dataset(tmp_path, val_cases=1)


# ---------------------------------------------------------------------------------------------------- ACDC
def test_acdc_real_folder(acdc_dir):
    ds = open_dataset(acdc_dir)
    assert detect_layout(acdc_dir) == "acdc"
    assert ds.class_names == ACDC_CLASSES and ds.preprocessing == {"kind": "minmax"}
    assert ds.orientation is None and ds.info()["orientation"] is None  # short-axis stacks: none
    slices = ds.train_slices()
    assert len(slices) == 1312
    image, label = slices[0]
    assert image.ndim == 2 and image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    assert label.dtype == np.int64 and set(np.unique(label)) <= {0, 1, 2, 3}
    val = ds.case_ids("val")
    assert len(val) == 20 and ds.case_ids("test") == []
    assert len(ds.case_ids("train")) == 140 and not set(val) & set(ds.case_ids("train"))
    vol = ds.volume(val[0])
    assert vol.image.ndim == 3 and vol.spacing is None and vol.image.shape == vol.label.shape
    # The files were made by per-volume min-max: each volume spans exactly [0, 1].
    assert vol.image.min() == 0.0 and vol.image.max() == 1.0
    assert set(np.unique(vol.label)) == {0, 1, 2, 3}


def test_acdc_slices_vary_in_size_and_batch_augment_handles_it(acdc_dir):
    from organseg.data.augment import BatchAugment, collate_slices

    ds = open_dataset(acdc_dir)
    slices = ds.train_slices()
    items = [SliceDataset(slices)[i] for i in range(0, 1312, 100)]
    assert len({tuple(x[0].shape) for x in items}) > 1
    images, labels = collate_slices(items)
    assert isinstance(images, list)
    x, y = BatchAugment((224, 224))(images, labels, torch.Generator().manual_seed(0))
    assert x.shape == (len(items), 1, 224, 224) and y.shape == (len(items), 224, 224)


# -------------------------------------------------------------------------------------------------- nnU-Net
def _nnunet_folder(root, totalseg_dir, modality="CT"):
    """imagesTr/labelsTr from the real CT (two crops of it as two cases) + a dataset.json."""
    from organseg.data.classes import TOTALSEG_TO_BTCV, remap_labels

    ct, g = read_image(totalseg_dir / "example_ct.nii.gz")
    seg, _ = read_image(totalseg_dir / "example_seg_fast_force_split.nii.gz")
    lab = remap_labels(remap_labels(seg, TOTALSEG_TO_BTCV), {6: 1, 1: 2})  # liver 1, spleen 2
    crops = {"abd_001": slice(40, 100), "abd_002": slice(52, 112), "abd_003": slice(30, 90)}
    for i, (case, zs) in enumerate(crops.items()):
        folder = ("imagesTs", "labelsTs") if i == 2 else ("imagesTr", "labelsTr")
        write_image(ct[zs], g, root / folder[0] / f"{case}_0000.nii.gz")
        write_image(lab[zs], g, root / folder[1] / f"{case}.nii.gz")
    meta = {
        "channel_names": {"0": modality},
        "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
        "name": "Dataset900_Abd",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return ct, lab


def test_nnunet_reader_on_real_ct(tmp_path, totalseg_dir):
    ct, lab = _nnunet_folder(tmp_path, totalseg_dir)
    ds = open_dataset(tmp_path, val_fraction=0.5, split_seed=1)
    assert isinstance(ds, NnUNetDataset) and ds.info()["layout"] == "nnunet"
    assert ds.class_names == ("background", "liver", "spleen")
    assert ds.preprocessing == {"kind": "ct_window", "window": [-125.0, 275.0]}
    assert (
        len(ds.case_ids("train")) == 1 and len(ds.case_ids("val")) == 1 and ds.case_ids("test") == ["abd_003"]
    )
    slices = ds.train_slices()
    assert len(slices) == 60  # isotropic 3 mm: the file's own axis 0 is kept
    image, label = slices[5]
    assert image.shape == (101, 122) and image.min() >= 0 and image.max() <= 1 and label.max() <= 2
    vol = ds.volume("abd_003")
    assert vol.image.shape == (60, 101, 122) and vol.spacing == (3.0, 3.0, 3.0)
    assert np.array_equal(vol.label, lab[30:90])
    assert np.allclose(vol.image, (np.clip(ct[30:90], -125, 275) + 125) / 400, atol=1e-6)
    clone = pickle.loads(pickle.dumps(slices))
    assert np.array_equal(clone[5][1], label)


def test_nnunet_percentile_mode_and_split_file(tmp_path, totalseg_dir):
    _nnunet_folder(tmp_path, totalseg_dir)
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["abd_002"], "val": ["abd_001"]}]))
    ds = open_dataset(tmp_path, ct_normalization="percentile", progress=False)
    spec = ds.preprocessing
    assert spec["kind"] == "percentile" and spec["percentiles"] == [0.5, 99.5]
    assert -200 < spec["lower"] < 60 < spec["upper"] < 400  # liver/spleen foreground HU
    assert ds.case_ids("train") == ["abd_002"] and ds.case_ids("val") == ["abd_001"]
    given = open_dataset(tmp_path, ct_normalization="percentile", percentiles=(0, 200))
    assert (given.preprocessing["lower"], given.preprocessing["upper"]) == (0.0, 200.0)
    with pytest.raises(ConfigError, match="fold 3 does not exist"):
        open_dataset(tmp_path, fold=3)


def test_nnunet_mri_zscore_and_coarsest_axis(tmp_path):
    rng = np.random.default_rng(0)
    # sagittal-like stack: the coarse axis is the last array axis (x spacing 8 mm)
    geom = Geometry(spacing=(1.25, 1.25, 8.0))
    for case in ("mr_1", "mr_2"):
        image = rng.normal(300, 50, (20, 24, 6)).astype(np.float32)
        label = np.zeros((20, 24, 6), np.uint8)
        label[5:15, 5:15, 1:5] = 1
        write_image(image, geom, tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        write_image(label, geom, tmp_path / "labelsTr" / f"{case}.nii.gz")
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T2"},
                "labels": {"background": 0, "lesion": 1},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    ds = open_dataset(tmp_path, val_fraction=0.5)
    assert ds.preprocessing == {"kind": "zscore_minmax", "clip": [-3.0, 3.0]}
    assert ds.slice_axis == 2 and ds.transpose == (2, 0, 1)
    assert len(ds.train_slices()) == 6 and ds.train_slices()[0][0].shape == (20, 24)
    vol = ds.volume(ds.case_ids("val")[0])
    assert vol.image.shape == (6, 20, 24) and vol.spacing == (8.0, 1.25, 1.25)
    assert vol.meta["transpose"] == [2, 0, 1]
    # identity direction (LPS files), x first: the arrays the network sees run S, L, P along (D, H, W)
    assert ds.orientation == "PSL" and vol.meta["orientation"] == ds.orientation
    assert abs(float(vol.image.mean()) - 0.5) < 0.02


def test_open_dataset_recognises_raw_btcv_and_unknown(tmp_path):
    write_tiny_raw(tmp_path / "raw", [1])
    with pytest.raises(DataError, match="raw BTCV folder.*organseg prepare synapse"):
        open_dataset(tmp_path / "raw")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unknown dataset layout"):
        open_dataset(tmp_path / "other")
    with pytest.raises(ConfigError, match="unknown dataset layout 'kits'"):
        open_dataset(tmp_path / "other", layout="kits")
    prepare_synapse(tmp_path / "raw", tmp_path / "syn", train_cases=[1], progress=False)
    assert open_dataset(tmp_path / "syn", layout="synapse").case_ids("test") == []


def test_every_dataset_has_a_root_in_memory_ones_none(tmp_path):
    """``root``: the folder a dataset is read from (None in memory); ``location`` names it in messages."""
    _transunet_folder(tmp_path)
    ds = open_dataset(tmp_path)
    assert ds.root == tmp_path and ds.location == str(tmp_path)
    arrays = ArrayDataset([], {"test": [Volume("a", np.zeros((1, 8, 8), np.float32), None)]}, name="arrays")
    assert arrays.root is None and arrays.location == "arrays"
    with pytest.raises(DataError, match=r"^arrays: the 'val' split has no cases"):
        evaluate_dataset(torch.nn.Identity(), arrays, "val", patch_size=8, progress=False)
    slices = [(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.int64))] * 2
    train = [Volume(f"c{i}", np.zeros((1, 8, 8), np.float32), None) for i in (0, 1)]
    assert FoldView(ArrayDataset(slices, {"train": train}), 0, 2, 0).root is None  # where its dataset is
    assert FoldView(ds, 0, 2, 0).root == tmp_path
