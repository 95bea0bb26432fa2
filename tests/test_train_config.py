"""Presets, ``--set`` overrides, validation of values, the LR rules and the reference LR schedule."""

from __future__ import annotations

import os

import pytest

from organseg.errors import ConfigError
from organseg.training import (
    apply_overrides,
    effective_lr,
    list_presets,
    load_config,
    poly_lr,
    resolve_config,
)
from organseg.training.config import (
    DEFAULTS,
    SCHEMA,
    config_differences,
    flatten,
    parse_override,
    presets_dir,
    to_yaml,
)
from organseg.training.loop import is_save_epoch
from organseg.values import max_threads

RECIPE = {
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "poly_power": 0.9,
    "ce_weight": 0.4,
    "dice_weight": 0.6,
    "seed": 1234,
    "max_epochs": 150,
    "img_size": 224,
    "precision": "fp32",
}


def test_presets_are_the_reference_recipe():
    assert set(list_presets()) >= {"swin_unet_synapse", "unet_synapse", "swin_unet_acdc", "unet_acdc"}
    expected = {
        "swin_unet_synapse": ("swin_unet", 24),
        "unet_synapse": ("unet", 16),
        "swin_unet_acdc": ("swin_unet", 24),
        "unet_acdc": ("unet", 16),
    }
    for name, (model, batch) in expected.items():
        cfg = resolve_config(load_config(name))
        assert cfg["model"]["name"] == model
        t = cfg["train"]
        assert t["batch_size"] == batch and t["base_lr"] == 0.05 and effective_lr(t) == 0.05
        for key, value in RECIPE.items():
            assert t[key] == value, (name, key)
        assert cfg["checkpoint"]["save_interval"] == 50


def test_synapse_preset_says_the_code_default_lr_is_one_set_away():
    text = (presets_dir() / "swin_unet_synapse.yaml").read_text()
    assert "0.01" in text and "--set train.base_lr=0.01" in text
    cfg = resolve_config(apply_overrides(load_config("swin_unet_synapse"), ["train.base_lr=0.01"]))
    assert cfg["train"]["base_lr"] == 0.01


def test_yaml_file_and_unknown_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {name: unet}\ntrain:\n  batch_size: 8\n  weight_decay: 1e-4\n")
    cfg = resolve_config(load_config(path), data_root="/data/x")
    assert cfg["train"]["batch_size"] == 8 and cfg["train"]["weight_decay"] == 1e-4
    assert cfg["data"]["root"] == "/data/x"
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("item", "keys", "value"),
    [
        ("train.base_lr=0.01", ["train", "base_lr"], 0.01),
        ("train.weight_decay=1e-4", ["train", "weight_decay"], 1e-4),
        ("train.batch_size=12", ["train", "batch_size"], 12),
        ("train.compile=true", ["train", "compile"], True),
        ("train.time_budget_min=null", ["train", "time_budget_min"], None),
        ("model.args.num_heads=[1,2,3,4]", ["model", "args", "num_heads"], [1, 2, 3, 4]),
        ("train.precision=bf16", ["train", "precision"], "bf16"),
    ],
)
def test_set_values_are_yaml_scalars(item, keys, value):
    assert parse_override(item) == (keys, value)


def test_overrides_apply_and_bad_ones_fail_clearly():
    raw = load_config("swin_unet_synapse")
    cfg = resolve_config(apply_overrides(raw, ["train.batch_size=12", "model.args.embed_dim=12"]))
    assert cfg["train"]["batch_size"] == 12 and cfg["model"]["args"] == {"embed_dim": 12}
    assert raw["train"]["batch_size"] == 24  # the input is not modified
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(raw, ["train.base_lr"])
    with pytest.raises(ConfigError, match="unknown configuration key 'train.lr'"):
        resolve_config(apply_overrides(raw, ["train.lr=0.1"]))
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides(raw, ["train.seed.x=1"])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0 (int)"),
        # A bool is an int in Python: batch true trained at batch 1 and wrote `batch_size: true`.
        ("train.batch_size=true", "train.batch_size: expected an integer >= 1, got true (bool)"),
        ("train.batch_size=2.5", "train.batch_size: expected an integer >= 1, got 2.5 (float)"),
        ("train.batch_size=[4]", "train.batch_size: expected an integer >= 1, got [4] (list)"),
        ("train.base_lr=-1", "train.base_lr: expected a number > 0, got -1 (int)"),
        ("train.base_lr=0", "train.base_lr: expected a number > 0"),
        ("train.base_lr=.nan", "train.base_lr: expected a number > 0, got nan (float)"),
        ("train.base_lr=.inf", "train.base_lr: expected a number > 0, got inf (float)"),
        ("train.base_lr=fast", "train.base_lr: expected a number > 0, got 'fast' (str)"),
        ("train.base_lr=false", "train.base_lr: expected a number > 0, got false (bool)"),
        ("train.momentum=1", "train.momentum: expected a number in [0, 1), got 1 (int)"),
        ("train.momentum=-0.1", "train.momentum: expected a number in [0, 1)"),
        ("train.weight_decay=-1e-4", "train.weight_decay: expected a number >= 0"),
        ("train.poly_power=0", "train.poly_power: expected a number > 0"),
        ("train.ce_weight=-0.4", "train.ce_weight: expected a number >= 0"),
        ("train.max_epochs=0", "train.max_epochs: expected an integer >= 1"),
        ("train.max_iterations=0", "train.max_iterations: expected an integer >= 1 or null"),
        ("train.reference_batch=0", "train.reference_batch: expected an integer >= 1"),
        ("train.seed=-1", "train.seed: expected an integer in [0, "),
        ("train.seed=1.5", "train.seed: expected an integer"),
        ("train.img_size=0", "train.img_size: expected an integer in [1, 4096]"),
        ("train.img_size=100000", "train.img_size: expected an integer in [1, 4096]"),
        ("train.log_every=0", "train.log_every: expected an integer >= 1"),
        ("train.precision=fp8", "train.precision: expected one of 'fp32', 'bf16', 'fp16', got 'fp8'"),
        ("train.augment=heavy", "train.augment: expected one of 'reference', 'batched', 'none'"),
        ("train.lr_scaling=sqrt", "train.lr_scaling: expected one of 'none', 'linear', 'swin_unet'"),
        ("train.channels_last=1", "train.channels_last: expected one of 'auto', true, false, got 1 (int)"),
        ("train.deterministic=yes please", "train.deterministic: expected true or false, got 'yes please'"),
        ("train.compile=1", "train.compile: expected true or false, got 1 (int)"),
        ("train.progress=null", "train.progress: expected true or false, got null"),
        ("train.device=gpu", "train.device: expected auto, cpu, cuda or cuda:N, got 'gpu' (str)"),
        ("train.device=cuda:x", "train.device: expected auto, cpu, cuda or cuda:N"),
        ("train.num_workers=-1", "train.num_workers: expected an integer in [0, "),
        ("train.num_workers=100000", "train.num_workers: expected an integer in [0, "),
        ("train.threads=0", "train.threads: expected an integer in [1, "),
        # 100000 threads killed the process with SIGSEGV and no message.
        ("train.threads=100000", "train.threads: expected an integer in [1, "),
        ("train.time_budget_min=0", "train.time_budget_min: expected a number > 0 or null, got 0"),
        ("val.every=-1", "val.every: expected an integer >= 0 (epochs; 0: the last epoch only), got -1"),
        ("val.batch_size=0", "val.batch_size: expected an integer >= 1"),
        ("val.max_cases=-1", "val.max_cases: expected an integer >= 1 or null, got -1"),
        ("data.max_train_slices=0", "data.max_train_slices: expected an integer >= 1 or null, got 0"),
        ("data.root=5", "data.root: expected a string or null, got 5 (int)"),
        ("checkpoint.save_interval=0", "checkpoint.save_interval: expected an integer >= 1"),
        ("model.name=3", "model.name: expected a string, got 3 (int)"),
        ("model.pretrained=true", "model.pretrained: expected a string or null, got true (bool)"),
        ("model.args=7", "model.args: expected a mapping, got 7 (int)"),
        ("train=5", "configuration key 'train' must be a section"),
        ("model.args.num_classes=4", "num_classes is set from the dataset"),
    ],
)
def test_invalid_values_raise_config_error(item, message):
    with pytest.raises(ConfigError) as err:
        resolve_config(apply_overrides(load_config("unet_acdc"), [item]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_key_has_a_rule_and_the_defaults_pass_it():
    assert set(SCHEMA) == set(flatten(DEFAULTS))
    assert flatten(resolve_config({})) == flatten(DEFAULTS)


def test_thread_bound_names_the_machine_limit():
    cap = max_threads()
    assert cap == 4 * (os.cpu_count() or 1)
    assert resolve_config(apply_overrides({}, [f"train.threads={cap}"]))["train"]["threads"] == cap
    with pytest.raises(ConfigError, match=rf"train.threads: expected an integer in \[1, {cap}\]"):
        resolve_config(apply_overrides({}, [f"train.threads={cap + 1}"]))
    with pytest.raises(ConfigError, match=rf"train.num_workers: expected an integer in \[0, {cap}\]"):
        resolve_config(apply_overrides({}, [f"train.num_workers={cap + 1}"]))


def test_exact_conversions_are_recorded(tmp_path):
    # A quoted number in a YAML file, or the YAML 1.1 reading of 1e-3 by another tool: stored as numbers.
    path = tmp_path / "c.yaml"
    path.write_text('train:\n  base_lr: "1e-3"\n  max_iterations: 1e4\n  momentum: "0.95"\n  img_size: 224.0')
    t = resolve_config(load_config(path))["train"]
    assert t["base_lr"] == 0.001 and isinstance(t["base_lr"], float)
    assert t["max_iterations"] == 10000 and isinstance(t["max_iterations"], int)
    assert t["momentum"] == 0.95 and t["img_size"] == 224 and isinstance(t["img_size"], int)
    assert "base_lr: 0.001" in to_yaml(resolve_config(load_config(path)))
    # Unquoted 1e-3 (YAML 1.1 gives a string) is a float already, and an int stays an int for a float key.
    assert parse_override("train.base_lr=1e-3")[1] == 0.001
    assert resolve_config(apply_overrides({}, ["train.base_lr=1"]))["train"]["base_lr"] == 1
    # The choices keep their own type: channels_last true is the bool, not the string.
    assert resolve_config(apply_overrides({}, ["train.channels_last=true"]))["train"]["channels_last"] is True


def test_both_loss_weights_zero_is_refused():
    with pytest.raises(ConfigError, match="train.ce_weight and train.dice_weight are both 0"):
        resolve_config(apply_overrides({}, ["train.ce_weight=0", "train.dice_weight=0"]))


def test_lr_scaling_rules():
    t = resolve_config(load_config("swin_unet_synapse"))["train"]
    # The official train.py: linear only when batch != 24 and batch % 6 == 0.
    assert effective_lr({**t, "batch_size": 12}) == pytest.approx(0.025)
    assert effective_lr({**t, "batch_size": 48}) == pytest.approx(0.1)
    assert effective_lr({**t, "batch_size": 16}) == 0.05
    assert effective_lr({**t, "batch_size": 16, "lr_scaling": "linear"}) == pytest.approx(0.05 * 16 / 24)
    assert effective_lr({**t, "batch_size": 12, "lr_scaling": "none"}) == 0.05


def _reference_lrs(base_lr: float, max_iterations: int) -> list[float]:
    """The official loop, literally: the LR in the optimizer at each step, updated after the step."""
    lr, used = base_lr, []
    for iter_num in range(max_iterations):
        used.append(lr)  # optimizer.step() uses the current LR
        lr = base_lr * (1.0 - iter_num / max_iterations) ** 0.9
    return used


def test_poly_schedule_equals_the_reference_formula_and_timing():
    base, total = 0.05, 13950  # Synapse: 150 epochs x 93 iterations
    ref = _reference_lrs(base, total)
    ours = [base] + [poly_lr(base, i, total, 0.9) for i in range(total - 1)]  # as the loop applies it
    for i in (0, 1, 2, total // 2, total - 1):  # first, second (still base), middle, last
        assert ours[i] == ref[i]
    assert ref[0] == ref[1] == base
    assert ref[-1] == pytest.approx(base * (2 / total) ** 0.9)


def test_checkpoint_cadence_is_the_reference():
    assert [e for e in range(150) if is_save_epoch(e, 150, 50)] == [99, 149]
    assert [e for e in range(10) if is_save_epoch(e, 10, 2)] == [7, 9]  # strictly past half-way


def test_config_differences_ignore_runtime_keys():
    a = resolve_config(load_config("unet_acdc"), data_root="/a")
    b = resolve_config(
        apply_overrides(load_config("unet_acdc"), ["train.num_workers=4", "train.base_lr=0.01"]), "/b"
    )
    assert config_differences(a, b) == ["train.base_lr: 0.05 -> 0.01"]
    assert "model.args" in flatten(a)
