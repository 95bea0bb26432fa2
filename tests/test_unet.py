"""The seed U-Net: exact layout, parity with the reference logits, the fast paths against the plain one."""

from __future__ import annotations

import copy
import math
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from organseg.models import create_model, list_models
from organseg.models.unet import UNet, prepare_for_speed

SEED_PARAMS = 24_898_953


def _golden_keys(golden_dir: Path) -> list[tuple[str, list[int], str]]:
    lines = (golden_dir / "unet_state_dict_keys.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "dtype"]
    rows = []
    for line in lines[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype))
    return rows


def seed_fill(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The golden README's deterministic fill for the seed U-Net, one generator per key."""
    out = {}
    for key, t in state.items():
        if not t.is_floating_point():
            out[key] = t  # num_batches_tracked is left alone
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("running_var"):
            out[key] = torch.rand(t.shape, generator=g) + 0.5
        elif key.endswith("weight") and t.ndim > 1:
            out[key] = torch.randn(t.shape, generator=g) * math.sqrt(2 / t[0].numel())
        else:
            out[key] = torch.randn(t.shape, generator=g) * 0.1
    return out


@pytest.fixture(scope="module")
def seed_unet() -> UNet:
    torch.manual_seed(0)
    model = create_model("unet")
    model.load_state_dict(seed_fill(model.state_dict()))
    return model.eval()


@pytest.fixture(scope="module")
def small_unet() -> UNet:
    """The paper network with its own init. Tests share the 2x1x32x48 input shape because most of a small
    forward's time is oneDNN building kernels for a new shape."""
    torch.manual_seed(0)
    return create_model("unet").eval()


def test_registered_with_paper_defaults():
    assert "unet" in list_models()
    model = create_model("unet")
    assert isinstance(model, UNet)
    assert model.config == {"num_classes": 9, "in_chans": 1}
    assert (model.num_classes, model.in_chans) == (9, 1)


def test_state_dict_keys_shapes_order_match_reference(golden_dir):
    expected = _golden_keys(golden_dir)
    state = create_model("unet").state_dict()
    assert list(state) == [k for k, _, _ in expected]
    for key, shape, dtype in expected:
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype) == f"torch.{dtype}", key
    n_float = sum(math.prod(s) for k, s, d in expected if d.startswith("float") and "running" not in k)
    assert n_float == SEED_PARAMS


def test_parameter_count():
    assert sum(p.numel() for p in create_model("unet").parameters()) == SEED_PARAMS


def test_seed_reference_logits(golden_dir, seed_unet):
    ref = torch.load(golden_dir / "unet_seed_reference.pt", weights_only=True)
    with torch.no_grad():
        out = seed_unet(ref["input"])
    assert out.shape == ref["logits"].shape == (1, 9, 224, 224)
    assert out.dtype == torch.float32
    # The fill's logits are O(0.5), so 1e-4 absolute is a tight check, not a loose one.
    assert (out - ref["logits"]).abs().max().item() <= 1e-4


def test_seed_taps_and_unused_last_pool(seed_unet):
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        feats = seed_unet.encoder(x)
    expected = [(64, 32, 48), (128, 16, 24), (256, 8, 12), (512, 4, 6), (512, 2, 3)]
    assert [tuple(f.shape[1:]) for f in feats] == expected
    # The last MaxPool exists (it fixes the key indices) but is never applied.
    assert isinstance(seed_unet.encoder.features[-1], nn.MaxPool2d)
    assert len(seed_unet.encoder.features) == 44


def test_decoder_upsampling_is_bilinear_align_corners(seed_unet):
    # The seed's nn.UpsamplingBilinear2d; check the decoder against it directly on one layer.
    layer = seed_unet.decoder.up_concat1
    skip, deeper = torch.rand(1, 64, 16, 16), torch.rand(1, 128, 8, 8)
    with torch.no_grad():
        expect = torch.cat([skip, nn.UpsamplingBilinear2d(scale_factor=2)(deeper)], 1)
        expect = torch.relu(layer.conv2(torch.relu(layer.conv1(expect))))
        assert torch.allclose(layer(skip, deeper), expect, atol=1e-6)


def test_channels_last_equals_contiguous(seed_unet):
    x = torch.rand(2, 1, 32, 48)  # not square: a swapped H/W would show
    with torch.no_grad():
        plain = seed_unet(x)
    fast = prepare_for_speed(copy.deepcopy(seed_unet))
    assert fast.is_channels_last and not seed_unet.is_channels_last
    with torch.no_grad():
        out_contig_in = fast(x)
        out_cl_in = fast(x.contiguous(memory_format=torch.channels_last))
    for out in (out_contig_in, out_cl_in):
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert (out - plain).abs().max().item() <= 1e-5
    # and back: the helper also undoes the layout
    assert not prepare_for_speed(fast, channels_last=False).is_channels_last


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_close_to_fp32(seed_unet, channels_last):
    model = prepare_for_speed(copy.deepcopy(seed_unet), channels_last=channels_last)
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16  # autocast really ran the convs in bf16
    rel = ((low.float() - ref).norm() / ref.norm()).item()
    assert rel <= 2e-2


@pytest.mark.parametrize(("num_classes", "in_chans"), [(4, 1), (2, 3)])
def test_other_classes_and_channels(num_classes, in_chans):
    model = create_model("unet", num_classes=num_classes, in_chans=in_chans).eval()
    assert model.config == {"num_classes": num_classes, "in_chans": in_chans}
    assert model.encoder.features[0].weight.shape == (64, in_chans, 3, 3)
    assert model.decoder.final.weight.shape == (num_classes, 64, 1, 1)
    with torch.no_grad():
        assert model(torch.rand(2, in_chans, 32, 48)).shape == (2, num_classes, 32, 48)


def test_a_one_channel_slice_feeds_a_three_channel_unet_as_the_slice_repeated():
    model = create_model("unet", num_classes=4, in_chans=3, width=0.25).eval()
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.repeat(1, 3, 1, 1)))


def test_backward_reaches_every_parameter(small_unet):
    model = copy.deepcopy(small_unet).train()
    x = torch.rand(2, 1, 32, 48)
    loss = nn.functional.cross_entropy(model(x), torch.randint(0, 9, (2, 32, 48)))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_channels_last_training_step_matches_contiguous(seed_unet):
    # The fast layout must train the same network, not only infer it: gradients agree to float rounding.
    grads = []
    x = torch.rand(2, 1, 32, 48)
    y = torch.randint(0, 9, (2, 32, 48))
    model = copy.deepcopy(seed_unet).train()
    for cl in (False, True):
        prepare_for_speed(model, channels_last=cl)
        model.load_state_dict(seed_unet.state_dict())  # undo the BatchNorm running-stat update
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert model.is_channels_last
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() <= 1e-4


def test_initialisation_follows_torchvision_vgg():
    torch.manual_seed(0)
    model = create_model("unet")
    conv = model.encoder.features[24]  # 256 -> 512, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    assert torch.all(conv.bias == 0)
    bn = model.encoder.features[25]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # The decoder keeps PyTorch's default init (the seed initialises the encoder only): biases are not zero.
    assert model.decoder.up_concat1.conv1.bias.abs().sum() > 0


@pytest.mark.parametrize("shape", [(1, 1, 30, 32), (1, 2, 32, 32), (1, 32, 32)])
def test_bad_input_shape_is_a_clear_error(small_unet, shape):
    with pytest.raises(ValueError, match="divisible by 16|expects"):
        small_unet(torch.rand(*shape))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("unet", num_classes=0)


def test_width_multiplier_scales_channels_and_keeps_keys():
    from organseg.models import create_model

    full = create_model("unet")
    small = create_model("unet", width=0.25, num_classes=4)
    assert list(full.state_dict()) == list(small.state_dict())
    assert small.encoder.features[0].out_channels == 16
    assert small.decoder.final.in_channels == 16
    assert small.config == {"num_classes": 4, "in_chans": 1, "width": 0.25}
    n_full = sum(p.numel() for p in full.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < n_full / 12
    out = small(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 4, 64, 64)
    rebuilt = create_model("unet", **small.config)
    rebuilt.load_state_dict(small.state_dict())
