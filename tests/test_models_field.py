"""The networks of the field (docs/networks.md): nnU-Net's 2-D U-Net and MONAI's SwinUNETR, BasicUNet and
AttentionUnet. organseg's wrapper gives the library module's own logits (built here directly, with the
library's arguments written out); nnU-Net's 2-D plan; the input-size rules; a missing extra in one line; a
bf16 training run through the normal train path and an ONNX export of its checkpoint."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest
import torch

from helpers import tiny_config, tiny_dataset
from organseg.errors import ConfigError, ExtraNotInstalledError
from organseg.models import (
    check_input_size,
    create_model,
    is_channels_last,
    list_models,
    model_defaults,
    prefers_channels_last,
    set_channels_last,
    takes_image_size,
)

# name -> (module the network needs, pip extra)
LIBRARY = {
    "nnunet_2d": ("dynamic_network_architectures.architectures.unet", "nnunet"),
    "monai_swin_unetr": ("monai.networks.nets", "monai"),
    "monai_basic_unet": ("monai.networks.nets", "monai"),
    "monai_attention_unet": ("monai.networks.nets", "monai"),
}
FIELD = sorted(LIBRARY)
# Small configurations (organseg arguments) and the side they are fed.
TINY = {
    "nnunet_2d": ({"img_size": 64, "base_features": 8, "max_features": 32}, 64),
    "monai_swin_unetr": ({"feature_size": 12, "num_heads": [1, 2, 3, 4]}, 64),
    "monai_basic_unet": ({"features": [8, 8, 8, 16, 16, 8]}, 32),
    "monai_attention_unet": ({"channels": [4, 8, 16], "strides": [2, 2]}, 32),
}
# Parameters of the default configuration for 1 input channel and 9 classes (docs/networks.md).
PARAMS = {
    "nnunet_2d": 20_626_061,
    "monai_swin_unetr": 25_138_323,
    "monai_basic_unet": 1_978_697,
    "monai_attention_unet": 1_987_553,
}


def _library(name: str):
    module, extra = LIBRARY[name]
    try:
        if name == "monai_swin_unetr":
            importlib.import_module("einops")
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{name} needs its library, not installed: pip install 'organseg[{extra}]'")


def _library_module(name: str, num_classes: int) -> torch.nn.Module:
    """The tiny configuration of TINY built with the library alone, its arguments written out here."""
    lib = _library(name)
    if name == "nnunet_2d":
        # nnU-Net v2's 2-D plan for 64 px: 64 -> 32 -> 16 -> 8 -> 4 is 4 poolings (5 stages); features
        # min(8 * 2**k, 32); 3x3 kernels; stride 1, then 2; 2 + 2 convs; bias, affine InstanceNorm, LeakyReLU.
        net = lib.PlainConvUNet(
            input_channels=1,
            n_stages=5,
            features_per_stage=[8, 16, 32, 32, 32],
            conv_op=torch.nn.Conv2d,
            kernel_sizes=[[3, 3]] * 5,
            strides=[[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
            n_conv_per_stage=[2] * 5,
            num_classes=num_classes,
            n_conv_per_stage_decoder=[2] * 4,
            conv_bias=True,
            norm_op=torch.nn.InstanceNorm2d,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            dropout_op=None,
            dropout_op_kwargs=None,
            nonlin=torch.nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=False,
        )
        net.apply(net.initialize)
        return net
    if name == "monai_swin_unetr":
        extra = {"img_size": (64, 64)} if "img_size" in inspect.signature(lib.SwinUNETR).parameters else {}
        return lib.SwinUNETR(
            in_channels=1,
            out_channels=num_classes,
            feature_size=12,
            num_heads=(1, 2, 3, 4),
            spatial_dims=2,
            **extra,
        )
    if name == "monai_basic_unet":
        return lib.BasicUNet(
            spatial_dims=2, in_channels=1, out_channels=num_classes, features=(8, 8, 8, 16, 16, 8)
        )
    return lib.AttentionUnet(
        spatial_dims=2, in_channels=1, out_channels=num_classes, channels=(4, 8, 16), strides=(2, 2)
    )


def test_the_networks_of_the_field_are_registered_without_their_libraries_imported():
    assert set(FIELD) <= set(list_models())
    # Registering reads no library: the defaults come from the factory's signature.
    assert model_defaults("nnunet_2d")["img_size"] == 224 and takes_image_size("nnunet_2d")
    assert not any(takes_image_size(n) for n in FIELD if n != "nnunet_2d")


@pytest.mark.parametrize("name", FIELD)
def test_wrapper_gives_the_library_modules_own_logits(name):
    args, side = TINY[name]
    torch.manual_seed(0)
    theirs = _library_module(name, num_classes=4).eval()
    torch.manual_seed(0)
    ours = create_model(name, num_classes=4, **args).eval()
    assert type(ours.net) is type(theirs)
    # The same seed gives the same weights: the wrapper initialises nothing of its own ...
    mine, ref = ours.net.state_dict(), theirs.state_dict()
    assert list(mine) == list(ref)
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    # ... and its forward pass is the library's, to the bit.
    x = torch.rand(2, 1, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    assert got.shape == (2, 4, side, side)
    assert torch.equal(got, want)
    assert want.abs().max() > 0


def test_nnunet_plan_follows_nnunet_v2_rules_for_the_input_size():
    _library("nnunet_2d")
    from organseg.models.nnunet_2d import plan_2d, poolings

    # nnU-Net halves while a side is >= 2 * 4 px: 224 -> 7 (5 poolings), 256 -> 4 (6), 160 -> 5 (5),
    # 96 -> 6 (4).
    assert [poolings(s) for s in (224, 256, 160, 96, 8, 7)] == [5, 6, 5, 4, 1, 0]
    plan = plan_2d(224)
    assert plan["n_stages"] == 6
    assert plan["features_per_stage"] == [32, 64, 128, 256, 512, 512]
    assert plan["strides"] == [[1, 1]] + [[2, 2]] * 5 and plan["kernel_sizes"] == [[3, 3]] * 6
    assert plan["n_conv_per_stage"] == [2] * 6 and plan["n_conv_per_stage_decoder"] == [2] * 5
    assert plan["norm_op"] is torch.nn.InstanceNorm2d and plan["norm_op_kwargs"] == {
        "eps": 1e-5,
        "affine": True,
    }
    assert plan["nonlin"] is torch.nn.LeakyReLU and plan["conv_bias"] and not plan["deep_supervision"]
    assert plan_2d(256)["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512]  # capped at 512
    net = create_model("nnunet_2d", img_size=256, base_features=8)
    assert net.net.encoder.output_channels == [8, 16, 32, 64, 128, 256, 512]
    slope = {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slope == {0.01}


def test_nnunet_deep_supervision_heads_are_kept_but_frozen_and_every_trained_weight_gets_a_gradient():
    _library("nnunet_2d")
    args, side = TINY["nnunet_2d"]
    model = create_model("nnunet_2d", num_classes=3, **args)
    heads = model.net.decoder.seg_layers
    assert all(not p.requires_grad for h in heads[:-1] for p in h.parameters())
    assert all(p.requires_grad for p in heads[-1].parameters())
    model(torch.rand(2, 1, side, side)).sum().backward()
    # DDP without find_unused_parameters needs a gradient for every parameter that wants one.
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", [n for n in FIELD if n != "nnunet_2d"])
def test_monai_networks_train_every_parameter(name):
    _library(name)
    args, side = TINY[name]
    model = create_model(name, num_classes=3, **args)
    model(torch.rand(2, 1, side, side)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", FIELD)
def test_default_configuration_and_its_parameter_count(name):
    _library(name)
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.num_classes == 9 and model.in_chans == 1


def test_monai_defaults_are_monais():
    nets = _library("monai_basic_unet")
    torch.manual_seed(0)
    ours = create_model("monai_basic_unet")
    mine = sum(p.numel() for p in ours.parameters())
    assert mine == sum(
        p.numel() for p in nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=9).parameters()
    )


@pytest.mark.parametrize(
    "name, good, bad, nearest",
    [
        ("nnunet_2d", 224, 208, "192 or 224"),
        ("monai_swin_unetr", 224, 200, "192 or 224"),
        ("monai_basic_unet", 200, 31, "32"),
        ("monai_attention_unet", 224, 200, "192 or 208"),
    ],
)
def test_input_size_rules(name, good, bad, nearest):
    _library(name)
    check_input_size(name, good)
    with pytest.raises(
        ConfigError, match=f"train.img_size={bad}: {name} .*nearest sizes that fit: {nearest}$"
    ):
        check_input_size(name, bad)


def test_swin_unetr_needs_a_bottleneck_of_two_pixels():
    _library("monai_swin_unetr")
    with pytest.raises(ConfigError, match="at least 64"):
        check_input_size("monai_swin_unetr", 32)


@pytest.mark.parametrize("name", FIELD)
def test_channels_last_gives_the_same_logits(name):
    """Whatever the network prefers (docs/networks.md), both layouts give the same logits."""
    _library(name)
    args, side = TINY[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **args).eval()
    assert prefers_channels_last(model) == (name != "monai_basic_unet")  # as measured
    x = torch.rand(2, 1, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        set_channels_last(model)
        assert is_channels_last(model)
        got = model(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_missing_library_is_one_line_naming_the_extra(monkeypatch):
    import organseg.cli.info as info

    for module in ("dynamic_network_architectures", "dynamic_network_architectures.architectures.unet"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    monkeypatch.setitem(sys.modules, "monai.networks.nets", None)
    expect = (
        r"nnunet_2d needs dynamic-network-architectures .*, not installed: "
        r"pip install 'organseg\[nnunet\]'$"
    )
    with pytest.raises(ExtraNotInstalledError, match=expect):
        create_model("nnunet_2d")
    with pytest.raises(ExtraNotInstalledError, match=expect):  # before any work: the size check says it
        check_input_size("nnunet_2d", 224)
    with pytest.raises(ExtraNotInstalledError, match=r"pip install 'organseg\[monai\]'$"):
        create_model("monai_basic_unet")
    # organseg info lists every network, those without their library as a row saying what to install.
    rows = _info_json(info, ["info", "--json"])
    by_name = {r["name"]: r for r in rows}
    assert by_name["unet"]["params"] == 24_898_953
    for name in FIELD:
        assert by_name[name]["params"] is None and "pip install 'organseg[" in by_name[name]["missing"]


def _info_json(info, argv):
    import contextlib
    import io

    from organseg.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def test_plain_conv_unet_imports_neither_timm_nor_torchvision():
    """requirements-nodeps.txt installs dynamic-network-architectures without its declared dependencies."""
    _library("nnunet_2d")
    code = (
        "import sys\nfrom dynamic_network_architectures.architectures.unet import PlainConvUNet\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'timm', 'torchvision', 'einops'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", FIELD)
def test_trains_in_bf16_and_exports_to_onnx(name, tmp_path):
    """Two bf16 iterations through organseg's train path; the checkpoint rebuilds the network, and the
    ONNX export (when the onnx extra is there) matches its logits."""
    _library(name)
    from organseg.checkpoint import model_from_checkpoint
    from organseg.training import train

    args, side = TINY[name]
    args = {k: v for k, v in args.items() if k != "img_size"}  # train.img_size gives it
    cfg = tiny_config(
        model={"name": name, "args": args},
        train={"precision": "bf16", "max_iterations": 2, "img_size": side},
        val={"every": 0, "max_cases": 1},
    )
    run = tmp_path / "run"
    train(cfg, tiny_dataset(n_slices=8, sizes=((side, side),)), run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    model, ckpt = model_from_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["model_name"] == name and type(model).__name__ == type(create_model(name, **args)).__name__
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install 'organseg[onnx]'")
    pytest.importorskip(
        "onnxruntime", reason="ONNX export needs the onnx extra: pip install 'organseg[onnx]'"
    )
    from organseg.inference.onnx import PARITY_TOLERANCE, export_onnx

    info = export_onnx(run / "checkpoints" / "last.pt", tmp_path / f"{name}.onnx")
    check = info["export_check"]
    assert info["input_size"] == [side, side]
    assert check["max_abs_logit_diff"] <= PARITY_TOLERANCE * max(1.0, check["max_abs_logit"])


@pytest.mark.parametrize("dataset", ["acdc", "synapse"])
@pytest.mark.parametrize("name", FIELD)
def test_fast_presets_are_the_twin_recipe_with_another_network(name, dataset):
    """``NAME_DATASET_fast`` trains as ``unet_DATASET_fast`` (the convolutional networks) or
    ``swin_unet_DATASET_fast`` (Swin UNETR) does: a comparison changes the network only."""
    from organseg.training.config import load_config, resolve_config

    cfg = resolve_config(load_config(f"{name}_{dataset}_fast"))
    twin = resolve_config(load_config(f"{'swin_unet' if 'swin' in name else 'unet'}_{dataset}_fast"))
    assert cfg["model"]["name"] == name and cfg["model"]["args"] == {}
    assert cfg["train"] == twin["train"] and cfg["val"] == twin["val"]
