"""``data.train_fraction`` (a seeded, nested subset of whole training cases) and ``train.budget_images``
(equal images seen): the keys, the subset rule on real ACDC patients, the run length."""

from __future__ import annotations

import json
import math

import pytest

from helpers import tiny_config, tiny_dataset
from organseg.errors import ConfigError
from organseg.training import train
from organseg.training.config import load_config, resolve_config
from organseg.training.data import TrainBatches, train_subset
from organseg.training.distributed import DistEnv


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data.train_fraction", 0, "data.train_fraction: expected a number in (0, 1]"),
        ("data.train_fraction", 1.5, "data.train_fraction: expected a number in (0, 1]"),
        ("data.train_fraction", True, "data.train_fraction: expected a number"),
        ("data.subset_seed", -1, "data.subset_seed: expected an integer"),
        ("train.budget_images", 0, "train.budget_images: expected an integer >= 1"),
        ("train.budget_images", 2.5, "train.budget_images: expected an integer"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    section, name = key.split(".")
    cfg = load_config("unet_acdc")
    cfg.setdefault(section, {})[name] = value
    with pytest.raises(ConfigError) as err:
        resolve_config(cfg)
    assert message in str(err.value)


def test_keys_resolve_and_exclude_each_other():
    cfg = load_config("unet_acdc")
    cfg["data"] = {"train_fraction": 0.25}
    cfg["train"]["budget_images"] = 1000
    resolved = resolve_config(cfg)
    assert resolved["data"]["train_fraction"] == 0.25 and resolved["data"]["subset_seed"] == 0
    assert resolved["train"]["budget_images"] == 1000
    cfg["train"]["max_iterations"] = 10
    with pytest.raises(ConfigError, match="budget_images and train.max_iterations both"):
        resolve_config(cfg)


def test_subsets_are_whole_cases_nested_and_seeded():
    cases = [f"p{c:03d}" for c in range(70) for _ in range(c % 3 + 5)]  # 70 patients, 5-7 slices each
    kept = {}
    for f in (0.1, 0.25, 0.5, 1.0):
        idx, ids = train_subset(cases, f, seed=0)
        assert len(ids) == math.ceil(f * 70)
        assert idx == [i for i, c in enumerate(cases) if c in set(ids)]  # all slices of kept cases, in order
        kept[f] = set(ids)
    assert kept[0.1] < kept[0.25] < kept[0.5] < kept[1.0]  # nested
    assert train_subset(cases, 0.25, seed=0) == train_subset(cases, 0.25, seed=0)
    assert set(train_subset(cases, 0.25, seed=1)[1]) != kept[0.25]


def test_fraction_of_real_acdc_patients(acdc_dir):
    from organseg.data import open_dataset

    ds = open_dataset(acdc_dir)
    cfg = resolve_config({**load_config("unet_acdc"), "data": {"train_fraction": 0.1}})
    batches = TrainBatches(ds, cfg, DistEnv())
    patients = ds.train_slice_cases()
    assert len(set(patients)) == 70 and len(batches.cases) == 7
    assert all(p.startswith("patient") and "_frame" not in p for p in batches.cases)
    # Both frames, every slice of each kept patient, nothing else.
    assert batches.num_slices == sum(p in set(batches.cases) for p in patients)
    names = [str(p).rsplit("/", 1)[-1] for p in ds.train_slices().paths]
    frames = {n.split("_slice")[0] for n, p in zip(names, patients, strict=True) if p in set(batches.cases)}
    assert len(frames) == 14


def test_budget_images_sets_the_run_length_and_the_subset_is_recorded(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(train={"budget_images": 10, "max_epochs": 50}, data={"train_fraction": 0.5})
    summary = train(cfg, tiny_dataset(16), out)
    assert summary["max_iterations"] == 3  # ceil(10 images / batch 4)
    env = json.loads((out / "env.json").read_text())
    assert len(env["train_subset"]["cases"]) == 8 and env["train_subset"]["slices"] == 8
