"""`prepare synapse`: proven on real CT (issue #3), plus the split rules, re-runs and the phantom path."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from helpers import write_tiny_raw
from organseg.cli.main import main
from organseg.data import open_dataset
from organseg.data.classes import BTCV_TO_SYNAPSE, TOTALSEG_TO_BTCV, remap_labels
from organseg.data.io import read_h5_pair, read_npz_slice
from organseg.data.phantom import write_phantom_set
from organseg.data.prepare import prepare_synapse
from organseg.data.split import REFERENCE_TEST_IDS, REFERENCE_TRAIN_IDS, decide_split
from organseg.errors import ConfigError, DataError


def _window(hu: np.ndarray) -> np.ndarray:
    return (np.clip(hu.astype(np.float32), -125, 275) + np.float32(125)) / np.float32(400)


def _synapse(total_seg: np.ndarray) -> np.ndarray:
    return remap_labels(remap_labels(total_seg, TOTALSEG_TO_BTCV), BTCV_TO_SYNAPSE)


@pytest.fixture(scope="module")
def prepared(totalseg_raw, tmp_path_factory):
    raw, arrays = totalseg_raw
    out = tmp_path_factory.mktemp("synapse")
    summary = prepare_synapse(raw, out, train_cases=[1], test_cases=["case0002"], progress=False)
    return raw, out, arrays, summary


def test_prepare_real_ct_training_slices(prepared):
    raw, out, arrays, summary = prepared
    ct, _, seg = arrays["ct"]
    assert (
        summary["train"] == ["case0001"] and summary["test"] == ["case0002"] and summary["rule"] == "explicit"
    )
    files = sorted((out / "train_npz").glob("*.npz"))
    assert len(files) == ct.shape[0] == 112  # one slice per axial plane, none dropped
    assert files[0].name == "case0001_slice000.npz" and files[-1].name == "case0001_slice111.npz"
    expected_label = _synapse(seg)
    for k in (0, 40, 111):
        image, label = read_npz_slice(out / "train_npz" / f"case0001_slice{k:03d}.npz")
        assert image.shape == label.shape == (101, 122)
        assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
        assert np.array_equal(image, _window(ct[k]))
        assert np.array_equal(label, expected_label[k])
    lines = (out / "lists_Synapse" / "train.txt").read_text().split()
    assert len(lines) == 112 and lines[0] == "case0001_slice000"


def test_prepare_real_ct_test_volume_from_dicom(prepared):
    raw, out, arrays, _ = prepared
    dcm, g_dcm, seg2, g_seg2 = arrays["dicom"]
    image, label = read_h5_pair(out / "test_vol_h5" / "case0002.npy.h5", ndim=3)
    assert image.shape == label.shape == (20, 512, 512)
    assert np.array_equal(image, _window(dcm))
    # TotalSegmentator stored this label map y-flipped (direction -1 on y); prepare reindexes it exactly.
    assert g_seg2.direction[4] == -1.0 and g_dcm.direction[4] == 1.0
    expected = _synapse(seg2)[:, ::-1, :]
    assert np.array_equal(label, expected)
    assert set(np.unique(label)) <= set(range(9))
    # sanity on real anatomy: the aorta is bright (contrast), the liver soft tissue
    hu_aorta = np.median(dcm[label == 7])
    hu_liver = np.median(dcm[label == 5])
    assert hu_aorta > 120 and 40 < hu_liver < 150
    assert (out / "lists_Synapse" / "test_vol.txt").read_text() == "case0002\n"


def test_prepare_sidecar_and_reader(prepared):
    _, out, _, _ = prepared
    side = json.loads((out / "organseg_synapse.json").read_text())
    assert side["synthetic"] is False
    assert side["cases"]["case0001"]["spacing"] == [3.0, 3.0, 3.0]
    assert side["cases"]["case0002"]["spacing"] == pytest.approx([2.0, 0.9765625, 0.9765625])
    ds = open_dataset(out)
    assert ds.info()["layout"] == "synapse"
    assert len(ds.train_slices()) == 112 and ds.case_ids("test") == ["case0002"] and ds.case_ids("val") == []
    vol = ds.volume("case0002")
    assert vol.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert ds.preprocessing == {"kind": "ct_window", "window": [-125.0, 275.0]}
    # from the direction matrices in the sidecar: prepare keeps each file's voxel order, so the training case
    # (the TotalSegmentator NIfTI) is RAS and the test case (the DICOM series) LPS: test turns it to RAS
    assert ds.orientation == "RAS" and vol.meta["orientation"] == "LPS"
    assert "organseg_synapse.json" in ds.orientation_note


def test_prepare_rerun_skips_finished_cases_and_follows_a_new_split(prepared, tmp_path):
    raw, out, _, _ = prepared
    again = prepare_synapse(raw, out, train_cases=[1], test_cases=[2], progress=False)
    assert again["converted"] == [] and again["skipped"] == ["case0001", "case0002"]
    # a different output folder with the roles swapped: nothing of the old roles may linger
    swapped = prepare_synapse(raw, tmp_path, train_cases=[2], test_cases=[1], progress=False)
    assert swapped["train_slices"] == 20
    assert not list((tmp_path / "train_npz").glob("case0001_*"))
    assert (tmp_path / "test_vol_h5" / "case0001.npy.h5").is_file()


def test_decide_split_rules(caplog):
    all30 = list(REFERENCE_TRAIN_IDS) + list(REFERENCE_TEST_IDS)
    train, test, rule = decide_split(all30)
    assert rule == "reference" and train == list(REFERENCE_TRAIN_IDS) and len(test) == 12
    with caplog.at_level(logging.WARNING, logger="organseg.data"):
        train, test, rule = decide_split([*all30, 61])
    assert 61 not in train + test and "61" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="organseg.data"):
        train, test, rule = decide_split([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert (
        rule.startswith("auto")
        and len(test) == 4
        and len(train) == 6
        and "split automatically" in caplog.text
    )
    assert decide_split(range(1, 11))[:2] == (train, test)  # deterministic for the seed
    assert decide_split([1, 2], test_cases=["case0002"])[:2] == ([1], [2])
    assert decide_split([1, 2, 3], train_cases=["img0001", "3"])[:2] == ([1, 3], [2])
    assert decide_split([1], test_fraction=0.4)[:2] == ([1], [])
    with pytest.raises(ConfigError, match="both"):
        decide_split([1, 2], train_cases=[1, 2], test_cases=[2])
    with pytest.raises(ConfigError, match="duplicate case id 1"):
        decide_split([1, 2], train_cases=[1, "0001"])
    with pytest.raises(ConfigError, match="bad case id"):
        decide_split([1, 2], train_cases=["liver"])


def test_prepare_auto_split_and_val_list(tmp_path, caplog):
    raw = tmp_path / "raw"
    write_tiny_raw(raw, [11, 12, 13, 14, 15])
    with caplog.at_level(logging.WARNING, logger="organseg.data"):
        summary = prepare_synapse(raw, tmp_path / "out", progress=False)
    assert "split automatically" in caplog.text
    assert len(summary["test"]) == 2 and len(summary["train"]) == 3
    summary = prepare_synapse(raw, tmp_path / "out", val_cases=[summary["train"][0]], progress=False)
    ds = open_dataset(tmp_path / "out")
    assert ds.case_ids("val") == summary["val"]
    assert len(ds.train_slices()) == 2 * 5  # the validation case's slices are held out of training
    vol = ds.volume(summary["val"][0])  # rebuilt from its slices
    assert vol.image.shape == (5, 24, 20) and vol.spacing == pytest.approx((3.0, 0.8, 0.8))
    assert set(np.unique(vol.label)) == {0, 1, 5, 7}  # IVC (BTCV 9) became background
    with pytest.raises(DataError, match="not training cases"):
        prepare_synapse(raw, tmp_path / "out", val_cases=[summary["test"][0]], progress=False)


def test_phantom_to_prepare_carries_the_synthetic_mark(tmp_path):
    write_phantom_set(tmp_path / "raw", cases=3, size=48, seed=1, num_slices=6, progress=False)
    summary = prepare_synapse(
        tmp_path / "raw", tmp_path / "syn", train_cases=[1, 2], test_cases=[3], progress=False
    )
    assert summary["synthetic"] is True and summary["train_slices"] == 12
    assert "SYNTHETIC" in (tmp_path / "syn" / "SYNTHETIC.txt").read_text()
    ds = open_dataset(tmp_path / "syn")
    assert ds.info()["synthetic"] is True and ds.volume("case0003").meta["synthetic"] is True


def test_cli_prepare_and_phantom(tmp_path, capsys):
    assert (
        main(
            [
                "phantom",
                "--out",
                str(tmp_path / "raw"),
                "--cases",
                "2",
                "--size",
                "40",
                "--slices",
                "5",
                "--seed",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    assert "SYNTHETIC" in capsys.readouterr().out
    assert (
        main(
            [
                "prepare",
                "synapse",
                "--raw",
                str(tmp_path / "raw"),
                "--out",
                str(tmp_path / "syn"),
                "--test-cases",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"] == ["case0001"] and summary["test"] == ["case0002"]


def _files(root) -> dict[str, bytes]:
    # organseg_status.json names its own folder and the times it was written
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "organseg_status.json"
    }


def test_prepare_workers_write_the_same_bytes(tmp_path):
    write_phantom_set(tmp_path / "raw", cases=4, size=40, seed=2, num_slices=5, progress=False)
    one = prepare_synapse(tmp_path / "raw", tmp_path / "one", workers=1, progress=False)
    two = prepare_synapse(tmp_path / "raw", tmp_path / "two", workers=2, progress=False)
    assert {k: v for k, v in one.items() if k != "out"} == {k: v for k, v in two.items() if k != "out"}
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(a) > 10 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_prepare_workers_report_the_first_bad_case_and_write_nothing(tmp_path):
    raw = tmp_path / "raw"
    write_tiny_raw(raw, [1, 2, 3, 4, 5])
    for i in (3, 5):  # two bad cases: the first in case order is the one named, as without workers
        img = raw / "img" / f"img{i:04d}.nii.gz"
        img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    with pytest.raises(DataError, match="img0003"):
        prepare_synapse(raw, tmp_path / "out", workers=3, progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.npz"))


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_prepare_workers_must_be_a_count(tmp_path, workers):
    write_tiny_raw(tmp_path / "raw", [1, 2])
    with pytest.raises(ConfigError, match="--workers"):
        prepare_synapse(tmp_path / "raw", tmp_path / "out", workers=workers, progress=False)
