"""Loading official Swin-Unet checkpoints, ImageNet Swin-T (Microsoft and timm layouts) and VGG16-BN weights.

The files are synthetic (random tensors) but carry the real key layouts and shapes, written to tmp_path.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from helpers import SWIN_T, TINY_SWIN_WIDTHS, ms_swin_state, rel_index, vgg16_bn_state
from organseg.errors import CheckpointError
from organseg.models import create_model
from organseg.models.pretrained import (
    LoadReport,
    detect_kind,
    load_pretrained,
    load_swin_imagenet,
    load_swin_unet_checkpoint,
    load_vgg16_bn_imagenet,
    read_weights,
    swin_layout,
)

# ------------------------------------------------------------------- synthetic files (more in helpers.py)


def timm_from_ms(ms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm >= 0.9 layout: merges start the next stage, head.fc, no index/mask buffers."""
    out = {}
    for k, v in ms.items():
        if "relative_position_index" in k or "attn_mask" in k:
            continue
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", k)
        out[k.replace("head.", "head.fc.")] = v.clone()
    return out


@pytest.fixture(scope="module")
def swin_t_full():
    """The paper-config Swin-Unet (built once) and its freshly initialised state, to restore between tests."""
    torch.manual_seed(0)
    model = create_model("swin_unet")
    return model, {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ ImageNet Swin-T


def test_real_swin_t_key_set_ms_layout(tmp_path, swin_t_full):
    model, init = swin_t_full
    model.load_state_dict(init)
    ms = ms_swin_state(**{k: tuple(v) if isinstance(v, tuple) else v for k, v in SWIN_T.items()})
    assert len(ms) == 190
    params = sum(
        v.numel() for k, v in ms.items() if "relative_position_index" not in k and "attn_mask" not in k
    )
    assert params == 28_288_354  # the published Swin-T size
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": ms}, path)

    report = load_swin_imagenet(model, path)
    state = model.state_dict()
    assert report.kind == "swin_imagenet_ms"
    assert (report.loaded, report.ignored, report.left_random) == (217, 60, 21)
    assert report.loaded + report.left_random == len(state)
    assert set(report.ignored_keys) == {k for k in ms if re.match(r"layers\.2\.blocks\.[2-5]\.|head\.", k)}

    def same(model_key: str, file_key: str) -> bool:
        return torch.equal(state["swin_unet." + model_key], ms[file_key])

    # encoder
    assert same("patch_embed.proj.weight", "patch_embed.proj.weight")
    assert same("layers.2.blocks.1.attn.qkv.weight", "layers.2.blocks.1.attn.qkv.weight")
    assert same("layers.0.downsample.reduction.weight", "layers.0.downsample.reduction.weight")
    assert same("norm.weight", "norm.weight")
    # mirrored decoder: layers.i -> layers_up.(3-i)
    assert same("layers_up.1.blocks.0.attn.qkv.weight", "layers.2.blocks.0.attn.qkv.weight")
    assert same("layers_up.2.blocks.1.mlp.fc2.bias", "layers.1.blocks.1.mlp.fc2.bias")
    assert same(
        "layers_up.3.blocks.1.attn.relative_position_bias_table",
        "layers.0.blocks.1.attn.relative_position_bias_table",
    )
    assert same("layers_up.3.blocks.1.attn_mask", "layers.0.blocks.1.attn_mask")
    # never loaded: the decoder's own layers and the head
    random = {
        "layers_up.0.expand.weight",
        "layers_up.1.upsample.expand.weight",
        "concat_back_dim.1.weight",
        "norm_up.weight",
        "up.expand.weight",
        "output.weight",
    }
    assert {"swin_unet." + k for k in random} <= set(report.left_random_keys)
    for k in random:
        assert torch.equal(state["swin_unet." + k], init["swin_unet." + k])
    assert all(k.startswith("swin_unet.") for k in report.loaded_keys)
    d = report.to_dict()
    assert d["loaded"] == 217 and d["ignored"] == 60 and report["left_random"] == 21
    assert "217 tensors loaded" in str(report)


@pytest.fixture(scope="module")
def tiny_ms() -> dict[str, torch.Tensor]:
    return ms_swin_state(embed_dim=12, num_heads=(1, 2, 3, 4), classes=10)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_layout_loads_like_ms(tmp_path, tiny_ms, suffix):
    ms_path = tmp_path / "ms.pth"
    torch.save({"model": tiny_ms}, ms_path)
    ref = create_model("swin_unet", **TINY_SWIN_WIDTHS)
    ms_report = load_swin_imagenet(ref, ms_path)

    timm = timm_from_ms(tiny_ms)
    assert (
        "layers.3.downsample.reduction.weight" in timm and "layers.0.downsample.reduction.weight" not in timm
    )
    path = tmp_path / f"swin_tiny_timm{suffix}"
    if suffix == ".safetensors":
        save_file(timm, str(path))
    else:
        torch.save(timm, path)
    model = create_model("swin_unet", **TINY_SWIN_WIDTHS)
    report = load_swin_imagenet(model, path)
    assert report.kind == "swin_imagenet_timm" and ms_report.kind == "swin_imagenet_ms"
    # every learnable tensor lands where the Microsoft file puts it; index/mask buffers stay computed
    ours, theirs = model.state_dict(), ref.state_dict()
    for k in ms_report.loaded_keys:
        assert torch.equal(ours[k], theirs[k]), k
    assert torch.equal(
        ours["swin_unet.layers.1.downsample.reduction.weight"],
        tiny_ms["layers.1.downsample.reduction.weight"],
    )
    n_buffers = sum(1 for k in ms_report.loaded_keys if k.endswith(("relative_position_index", "attn_mask")))
    assert n_buffers == 20
    assert report.loaded == ms_report.loaded - n_buffers
    assert len(report.kept_computed_keys) == n_buffers
    assert report.left_random == ms_report.left_random == 21
    assert set(report.ignored_keys) == {
        k for k in timm if re.match(r"layers\.2\.blocks\.[2-5]\.|head\.fc\.", k)
    }


def test_layout_detection(tiny_ms):
    assert swin_layout(tiny_ms) == "ms"
    assert swin_layout(timm_from_ms(tiny_ms)) == "timm"
    assert detect_kind(tiny_ms) == "swin_imagenet"
    assert detect_kind(vgg16_bn_state()) == "vgg16_bn"
    assert detect_kind(create_model("swin_unet", **TINY_SWIN_WIDTHS).state_dict()) == "swin_unet"
    with pytest.raises(CheckpointError, match="unrecognised"):
        detect_kind({"fc.weight": torch.zeros(2, 2)})


def test_other_window_size_drops_mismatched_tensors(tmp_path, tiny_ms):
    # SU#122: a 256x256 model with window 8; the 7x7-window bias tables no longer fit and are dropped
    path = tmp_path / "ms.pth"
    torch.save({"model": tiny_ms}, path)
    model = create_model("swin_unet", **TINY_SWIN_WIDTHS, img_size=256, window_size=8)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_swin_imagenet(model, path)
    table = "swin_unet.layers.0.blocks.0.attn.relative_position_bias_table"
    assert table in report.left_random_keys and torch.equal(model.state_dict()[table], init[table])
    assert "shape [169, 1]" in report.ignored_keys["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert torch.equal(
        model.state_dict()["swin_unet.layers.0.blocks.0.attn.qkv.weight"],
        tiny_ms["layers.0.blocks.0.attn.qkv.weight"],
    )
    # the model's own (8x8) index buffers are kept, not overwritten
    idx = "swin_unet.layers.0.blocks.0.attn.relative_position_index"
    assert idx in report.kept_computed_keys and torch.equal(model.state_dict()[idx], rel_index(8))
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(1, 1, 256, 256))).all()


# ------------------------------------------------------------------------------------- Swin-Unet checkpoints


@pytest.mark.parametrize("wrap", ["plain", "module", "model", "state_dict", "bare_net"])
def test_official_swin_unet_checkpoint(tmp_path, wrap):
    torch.manual_seed(7)
    src = create_model("swin_unet", **TINY_SWIN_WIDTHS)
    sd = src.state_dict()
    if wrap == "module":  # DataParallel
        sd = {"module." + k: v for k, v in sd.items()}
    elif wrap == "bare_net":
        sd = src.swin_unet.state_dict()
    obj = {wrap: sd} if wrap in ("model", "state_dict") else sd
    path = tmp_path / "epoch_149.pth"
    torch.save(obj, path)
    model = create_model("swin_unet", **TINY_SWIN_WIDTHS)
    report = load_swin_unet_checkpoint(model, path)
    assert (report.loaded, report.ignored, report.left_random) == (238, 0, 0)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # the bare network accepts the wrapper's names too
    net = create_model("swin_unet", **TINY_SWIN_WIDTHS).swin_unet
    assert load_swin_unet_checkpoint(net, path).loaded == 238


def test_swin_unet_checkpoint_wrong_classes(tmp_path):
    src = create_model("swin_unet", **TINY_SWIN_WIDTHS, num_classes=4)
    path = tmp_path / "acdc.pth"
    torch.save(src.state_dict(), path)
    model = create_model("swin_unet", **TINY_SWIN_WIDTHS)
    before = model.state_dict()["swin_unet.patch_embed.proj.weight"].clone()
    with pytest.raises(CheckpointError, match=r"acdc\.pth.*shape mismatches.*output\.weight"):
        load_swin_unet_checkpoint(model, path)
    assert torch.equal(model.state_dict()["swin_unet.patch_embed.proj.weight"], before)  # untouched on error
    report = load_swin_unet_checkpoint(model, path, skip_output=True)
    assert report.left_random_keys == ["swin_unet.output.weight"] and report.loaded == 237
    assert list(report.ignored_keys) == ["swin_unet.output.weight"]


# ------------------------------------------------------------------------------------------ errors


def test_corrupt_and_missing_files(tmp_path, tiny_ms):
    model = create_model("swin_unet", **TINY_SWIN_WIDTHS)
    good = tmp_path / "good.pth"
    torch.save({"model": tiny_ms}, good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    for fn in (load_swin_imagenet, load_swin_unet_checkpoint, load_pretrained):
        with pytest.raises(CheckpointError, match=r"truncated\.pth: cannot read"):
            fn(model, bad)
    st = tmp_path / "broken.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: cannot read safetensors"):
        load_swin_imagenet(model, st)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(model, tmp_path / "absent.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_weights(empty)


def test_wrong_architecture_files(tmp_path, tiny_ms):
    swin = create_model("swin_unet", **TINY_SWIN_WIDTHS)
    vgg_path = tmp_path / "vgg16_bn.pth"
    torch.save(vgg16_bn_state(), vgg_path)
    ms_path = tmp_path / "swin_t.pth"
    torch.save({"model": tiny_ms}, ms_path)
    unet_ckpt = tmp_path / "swin_unet.pth"
    torch.save(swin.state_dict(), unet_ckpt)

    with pytest.raises(CheckpointError, match=r"vgg16_bn\.pth: not a Swin classification checkpoint"):
        load_swin_imagenet(swin, vgg_path)
    with pytest.raises(
        CheckpointError, match=r"swin_t\.pth: does not fit this Swin-Unet: \d+ missing keys \[swin_unet\."
    ):
        load_swin_unet_checkpoint(swin, ms_path)
    with pytest.raises(CheckpointError, match="is a Swin-Unet checkpoint"):
        load_swin_imagenet(swin, unet_ckpt)
    with pytest.raises(CheckpointError, match="vgg16_bn weights, which do not fit"):
        load_pretrained(swin, vgg_path)
    # another Swin size (width 16 instead of 12): nothing fits
    wide = tmp_path / "swin_wide.pth"
    torch.save({"model": ms_swin_state(embed_dim=16, num_heads=(1, 2, 4, 8))}, wide)
    with pytest.raises(CheckpointError, match=r"swin_wide\.pth: no Swin block weights fit"):
        load_swin_imagenet(swin, wide)
    with pytest.raises(CheckpointError, match="unknown weight kind"):
        load_pretrained(swin, ms_path, kind="resnet")


def test_load_pretrained_dispatch(tmp_path, tiny_ms):
    ms_path = tmp_path / "swin_t.pth"
    torch.save({"model": tiny_ms}, ms_path)
    ckpt = tmp_path / "swin_unet.pth"
    state = create_model("swin_unet", **TINY_SWIN_WIDTHS).state_dict()
    torch.save({"module." + k: v for k, v in state.items()}, ckpt)
    swin = create_model("swin_unet", **TINY_SWIN_WIDTHS)
    assert load_pretrained(swin, ms_path).kind == "swin_imagenet_ms"
    assert load_pretrained(swin, ckpt).kind == "swin_unet"
    assert load_pretrained(swin, ms_path, kind="swin_imagenet").loaded == 217
    assert isinstance(load_pretrained(swin, ckpt, kind="swin_unet"), LoadReport)


# ------------------------------------------------------------------------------------------ VGG16-BN -> U-Net


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = create_model("unet")
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("with_counter", [False, True])
def test_vgg16_bn_into_unet_encoder(tmp_path, unet, golden_dir, with_counter):
    model, init = unet
    model.load_state_dict(init)
    # the U-Net's names and shapes are the seed's (golden tsv)
    rows = [line.split("\t")[0] for line in (golden_dir / "unet_state_dict_keys.tsv").open()][1:]
    assert list(model.state_dict()) == rows
    vgg = vgg16_bn_state(num_batches_tracked=with_counter)
    path = tmp_path / "vgg16_bn-6c64b313.pth"
    torch.save(vgg, path)
    report = load_vgg16_bn_imagenet(model, path)
    state = model.state_dict()
    assert report.kind == "vgg16_bn"
    assert report.loaded == (91 if with_counter else 78)
    assert report.ignored == 6 and all(k.startswith("classifier.") for k in report.ignored_keys)
    assert report.left_random == 18 and all(k.startswith("decoder.") for k in report.left_random_keys)
    assert len(report.kept_computed_keys) == (0 if with_counter else 13)
    # RGB -> grey: the first conv's kernels summed over input channels
    w0 = vgg["features.0.weight"]
    assert torch.allclose(state["encoder.features.0.weight"], w0.sum(1, keepdim=True))
    x = torch.rand(1, 1, 8, 8)
    grey = torch.nn.functional.conv2d(x, state["encoder.features.0.weight"], padding=1)
    rgb = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), w0, padding=1)
    assert torch.allclose(grey, rgb, atol=1e-5)
    for k in ("features.3.weight", "features.41.running_var", "features.40.bias", "features.24.weight"):
        assert torch.equal(state["encoder." + k], vgg[k]), k
    assert torch.equal(state["decoder.final.weight"], init["decoder.final.weight"])
    assert load_pretrained(model, path).kind == "vgg16_bn"


def test_vgg_errors(tmp_path, unet, tiny_ms):
    model, init = unet
    model.load_state_dict(init)
    plain = {k: v for k, v in vgg16_bn_state().items() if not re.match(r"features\.(1|4)\.", k)}
    path = tmp_path / "vgg16_partial.pth"
    torch.save(plain, path)
    with pytest.raises(
        CheckpointError,
        match=r"vgg16_partial\.pth: does not fit the U-Net's VGG16-BN encoder: "
        r"8 missing keys \[features\.1\.weight",
    ):
        load_vgg16_bn_imagenet(model, path)
    swin_path = tmp_path / "swin_t.pth"
    torch.save({"model": tiny_ms}, swin_path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_vgg16_bn_imagenet(model, swin_path)
    with pytest.raises(CheckpointError, match="do not fit a UNet"):
        load_pretrained(model, swin_path)
    with pytest.raises(CheckpointError, match="expected a Swin-Unet model"):
        load_swin_imagenet(model, swin_path)
    assert torch.equal(model.state_dict()["encoder.features.0.weight"], init["encoder.features.0.weight"])


# ------------------------------------------------------------------------------------------ official, applied


@pytest.mark.parametrize("wrap", ["plain", "module"])
@pytest.mark.parametrize(
    "args",
    [
        {},  # the paper configuration: 224², window 7, 9 classes
        {"img_size": 64, "embed_dim": 12, "num_heads": (1, 2, 3, 4), "window_size": 4, "num_classes": 4},
    ],
)
def test_official_checkpoint_applied_directly(tmp_path, wrap, args):
    from organseg.checkpoint import model_from_checkpoint, official_swin_unet_checkpoint

    torch.manual_seed(11)
    src = create_model("swin_unet", **args).eval()
    sd = src.state_dict()
    if wrap == "module":
        sd = {"module." + k: v for k, v in sd.items()}
    path = tmp_path / "epoch_149.pth"
    torch.save(sd, path)
    ckpt = official_swin_unet_checkpoint(path)
    assert ckpt["model_args"]["num_classes"] == args.get("num_classes", 9)  # from the head
    assert ckpt["model_args"]["img_size"] == args.get("img_size", 224)  # from the shifted-window mask
    assert ckpt["source"] == {"kind": "official_swin_unet", "path": str(path)}
    model, _ = model_from_checkpoint(ckpt)
    size = args.get("img_size", 224)
    x = torch.rand(1, 1, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_official_checkpoint_refusals(tmp_path, tiny_ms):
    from organseg.checkpoint import official_swin_unet_checkpoint

    sd = create_model("swin_unet", **TINY_SWIN_WIDTHS).state_dict()
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in sd.items() if ".output." not in k}, headless)
    with pytest.raises(CheckpointError, match="without a class head"):
        official_swin_unet_checkpoint(headless)
    imagenet = tmp_path / "swin_tiny.pth"
    torch.save({"model": tiny_ms}, imagenet)
    with pytest.raises(CheckpointError, match="holds swin_imagenet weights"):
        official_swin_unet_checkpoint(imagenet)
    other = tmp_path / "other.pth"
    torch.save({"a.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an organseg checkpoint, and unrecognised weights"):
        official_swin_unet_checkpoint(other)


def test_fine_tuning_drops_a_head_of_another_class_count(tmp_path):
    torch.manual_seed(12)
    src = create_model("swin_unet", **TINY_SWIN_WIDTHS, num_classes=9)
    path = tmp_path / "epoch_149.pth"
    torch.save(src.state_dict(), path)
    model = create_model("swin_unet", **TINY_SWIN_WIDTHS, num_classes=4)
    head = model.state_dict()["swin_unet.output.weight"].clone()
    report = load_pretrained(model, path)
    assert report.ignored_keys == {"swin_unet.output.weight": "output head skipped"}
    assert report.left_random_keys == ["swin_unet.output.weight"]
    assert torch.equal(model.state_dict()["swin_unet.output.weight"], head)
    assert torch.equal(model.state_dict()["swin_unet.norm.weight"], src.state_dict()["swin_unet.norm.weight"])
    # Same class count: the head is loaded too.
    same = create_model("swin_unet", **TINY_SWIN_WIDTHS, num_classes=9)
    assert load_pretrained(same, path).ignored == 0
