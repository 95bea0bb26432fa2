"""Swin-Unet: reference parity (golden logits), fast vs plain attention, architecture knobs, training path."""

from __future__ import annotations

import copy
import json
import math
import zlib

import pytest
import torch

from organseg.errors import ConfigError
from organseg.models import create_model, list_models
from organseg.models.swin_unet import (
    DropPath,
    SwinTransformerBlock,
    SwinUnet,
    WindowAttention,
    _PermuteTokens,
    shifted_window_mask,
    window_partition,
    window_reverse,
    window_token_index,
)

IMPLS = ("sdpa", "reference")
TINY = {"embed_dim": 12, "num_heads": (1, 2, 3, 4)}
# Three stages at 112x112 (28/14/7 grids): shifted windows in two stages, several times cheaper to train.
SMALL = {"img_size": 112, "embed_dim": 12, "depths": (2, 2, 2), "num_heads": (1, 2, 3)}


def deterministic_fill(model: torch.nn.Module) -> None:
    """The golden README's fill, key by key in state-dict order (reference names)."""
    state = {}
    for key, t in model.state_dict().items():
        if "relative_position_index" in key or "attn_mask" in key:
            state[key] = t
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("weight") and t.ndim > 1:
            state[key] = torch.randn(t.shape, generator=g) * math.sqrt(1 / t[0].numel())
        elif "norm" in key and key.endswith("weight"):
            state[key] = 1 + torch.randn(t.shape, generator=g) * 0.1
        else:
            state[key] = torch.randn(t.shape, generator=g) * 0.02
    model.load_state_dict(state, strict=True)


@pytest.fixture(scope="module")
def full_model() -> SwinUnet:
    """The paper configuration as constructed (read-only in tests: building it costs seconds)."""
    torch.manual_seed(0)
    return create_model("swin_unet")


@pytest.fixture(scope="module")
def full_filled(full_model) -> SwinUnet:
    model = copy.deepcopy(full_model).eval()
    deterministic_fill(model)
    return model


@pytest.fixture(scope="module")
def full_reference(golden_dir) -> dict:
    return torch.load(golden_dir / "swin_unet_full_reference.pt", weights_only=True)


# ------------------------------------------------------------------------------------------ layout


def test_registered_with_paper_defaults(full_model):
    assert "swin_unet" in list_models()
    model = full_model
    cfg = model.config
    assert cfg["img_size"] == 224 and cfg["patch_size"] == 4 and cfg["embed_dim"] == 96
    assert cfg["depths"] == [2, 2, 2, 2] and cfg["num_heads"] == [3, 6, 12, 24] and cfg["window_size"] == 7
    assert cfg["drop_path_rate"] == 0.2 and cfg["ape"] is False and cfg["attn_impl"] == "sdpa"
    assert model.num_classes == 9 and model.in_chans == 3
    json.dumps(cfg)  # plain data: goes into checkpoints and JSON results
    # stochastic depth: linspace(0, 0.2, 8); decoder stage k reuses encoder stage 3-k's rates
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for layer in model.swin_unet.layers for b in layer.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 8).tolist())
    up = [b.drop_path.drop_prob for b in model.swin_unet.layers_up[1].blocks]
    assert up == pytest.approx(rates[4:6])


def test_state_dict_equals_reference_tsv(golden_dir, full_model):
    rows = [
        line.rstrip("\n").split("\t") for line in (golden_dir / "swin_unet_full_state_dict_keys.tsv").open()
    ][1:]
    state = full_model.state_dict()
    ours = [(k, str(list(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert ours == [tuple(r) for r in rows]  # names, shapes, dtypes and order
    assert sum(p.numel() for p in full_model.parameters()) == 27_168_900


def test_init_follows_reference(full_model):
    net = full_model.swin_unet
    w = net.layers[0].blocks[0].attn.qkv.weight
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max() <= 2.0
    assert torch.all(net.layers[0].blocks[0].attn.qkv.bias == 0)
    assert torch.all(net.norm.weight == 1) and torch.all(net.norm.bias == 0)
    table = net.layers[1].blocks[0].attn.relative_position_bias_table
    assert 0.015 < table.std().item() < 0.025
    # convs keep PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in) for the bias)
    assert net.patch_embed.proj.bias.abs().max() <= 1 / math.sqrt(3 * 16) + 1e-6
    assert net.output.bias is None


def test_config_rebuilds_same_model():
    model = create_model("swin_unet", **TINY, num_classes=4, window_size=7)
    again = create_model("swin_unet", **model.config)
    assert list(again.state_dict()) == list(model.state_dict())
    again.load_state_dict(model.state_dict(), strict=True)


# ------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("impl", IMPLS)
def test_tiny_official_checkpoint_parity(golden_dir, impl):
    ref = torch.load(golden_dir / "swin_unet_tiny_official.pt", weights_only=True)
    model = create_model("swin_unet", **{**ref["config"], "attn_impl": impl}).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        logits = model(ref["input"])
    assert logits.shape == ref["logits"].shape
    assert (logits - ref["logits"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_full_config_golden_logits(full_filled, full_reference, impl):
    full_filled.set_attn_impl(impl)
    try:
        with torch.no_grad():
            logits = full_filled(full_reference["input"])
    finally:
        full_filled.set_attn_impl("sdpa")
    assert (logits - full_reference["logits"]).abs().max().item() <= 1e-4


def test_bf16_autocast_close_to_fp32(full_filled, full_reference):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = full_filled(full_reference["input"])
    ref = full_reference["logits"]
    rel = ((logits.float() - ref).norm() / ref.norm()).item()
    assert rel <= 2e-2
    assert rel > 0  # it really ran in bf16


def test_fast_equals_plain_on_random_weights():
    torch.manual_seed(1)
    model = create_model("swin_unet", **TINY, drop_path_rate=0.0).eval()
    x = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        fast = model(x)
        plain = model.set_attn_impl("reference")(x)
    assert model.config["attn_impl"] == "reference"
    assert (fast - plain).abs().max().item() <= 1e-5
    assert fast.abs().max() > 1e-2  # not a degenerate all-zero comparison


def test_one_channel_input_is_repeated():
    torch.manual_seed(2)
    model = create_model("swin_unet", **SMALL).eval()
    x = torch.rand(2, 1, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="expects"):
        model(torch.rand(1, 2, 112, 112))
    with pytest.raises(ValueError, match="built for"):
        model(torch.rand(1, 1, 96, 96))


# ------------------------------------------------------------------------------------------ attention pieces


def test_shift_mask_regions_and_buffer():
    mask = shifted_window_mask((14, 14), 7, 3)
    assert mask.shape == (4, 49, 49)
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert torch.all(mask[0] == 0)  # the top-left window holds one region only
    assert torch.all(mask.diagonal(dim1=1, dim2=2) == 0)
    model = create_model("swin_unet", **TINY)
    blocks = model.swin_unet.layers[0].blocks
    assert blocks[0].attn_mask is None and blocks[1].attn_mask.shape == (64, 49, 49)
    assert model.swin_unet.layers[3].blocks[1].shift_size == 0  # 7x7 map: one window, no shift


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_pairs_get_zero_probability(impl):
    torch.manual_seed(3)
    attn = WindowAttention(24, (7, 7), 2, attn_impl=impl).eval()
    mask = shifted_window_mask((14, 14), 7, 3)
    x = torch.randn(2 * 4, 49, 24) * 3
    with torch.no_grad():
        probs = attn.attention_probs(x, mask)
    masked = (mask < 0).unsqueeze(1).repeat(2, 2, 1, 1)
    assert probs.shape == (8, 2, 49, 49)
    assert torch.allclose(probs.sum(-1), torch.ones(8, 2, 49))
    if impl == "sdpa":
        # exact zeros: no subnormal ~exp(-100) values reach the @v product
        assert torch.all(probs[masked] == 0)
        additive = attn.additive_mask(mask, 2, torch.float32)
        assert torch.all(torch.isneginf(additive[masked])) and torch.isfinite(additive[~masked]).all()
        assert not torch.isneginf(additive).all(-1).any()  # no fully masked row, so no NaN
    else:
        # the reference's -100 leaves tiny (subnormal) weights on masked pairs
        assert probs[masked].max() < 1e-30 and (probs[masked] > 0).any()
    with torch.no_grad():
        other = WindowAttention(24, (7, 7), 2, attn_impl="reference" if impl == "sdpa" else "sdpa")
        other.load_state_dict(attn.state_dict())
        assert (attn(x, mask) - other.eval()(x, mask)).abs().max() <= 1e-5


def test_fast_mask_follows_bias_table_updates():
    attn = WindowAttention(12, (7, 7), 3).eval()
    x = torch.randn(4, 49, 12)
    mask = shifted_window_mask((14, 14), 7, 3)
    with torch.no_grad():
        before = attn(x, mask)
        attn.relative_position_bias_table.add_(0.5 * torch.randn_like(attn.relative_position_bias_table))
        after = attn(x, mask)
        attn.attn_impl = "reference"
        plain = attn(x, mask)
    assert not torch.allclose(before, after)
    assert (after - plain).abs().max() <= 1e-5


@pytest.mark.parametrize("shift", [0, 3])
def test_fused_roll_partition_index(shift):
    B, H, W, C, ws = 2, 14, 21, 5, 7
    x = torch.randn(B, H, W, C)
    idx = window_token_index((H, W), ws, shift)
    rolled = torch.roll(x, (-shift, -shift), (1, 2))
    expected = window_partition(rolled, ws).reshape(B, H * W, C)
    assert torch.equal(x.reshape(B, H * W, C).index_select(1, idx), expected)
    back = expected.index_select(1, torch.argsort(idx)).view(B, H, W, C)
    assert torch.equal(back, x)
    assert torch.equal(window_reverse(window_partition(x, ws), ws, H, W), x)


# ------------------------------------------------------------------------------------------ training path


def test_backward_both_paths_agree():
    torch.manual_seed(4)
    model = create_model("swin_unet", **SMALL, drop_path_rate=0.0).train()
    x = torch.rand(2, 1, 112, 112)
    target = torch.randint(0, 9, (2, 112, 112))
    grads = {}
    for impl in IMPLS:
        model.set_attn_impl(impl)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, g in grads["sdpa"].items():
        ref = grads["reference"][name]
        assert torch.isfinite(g).all(), name
        assert (g - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item()), name
    table = "swin_unet.layers.0.blocks.1.attn.relative_position_bias_table"
    assert grads["sdpa"][table].abs().sum() > 0  # the bias table trains through the fused mask


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.ones(4000, 3, 2)
    dp.eval()
    assert dp(x) is x
    dp.train()
    torch.manual_seed(0)
    y = dp(x)
    per_sample = y[:, 0, 0]
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.all(y == per_sample[:, None, None])  # whole samples are dropped
    assert abs(y.mean().item() - 1.0) < 0.06
    assert DropPath(0.0).train()(x) is x
    model = create_model("swin_unet", **SMALL, drop_path_rate=0.5).eval()
    x = torch.rand(1, 1, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: identity, deterministic


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(5)
    plain = create_model("swin_unet", **SMALL, drop_path_rate=0.0).train()
    ckpt = create_model("swin_unet", **SMALL, drop_path_rate=0.0, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 112, 112)
    plain(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-7, rtol=1e-5), n


# ------------------------------------------------------------------------------------------ knobs


def test_knobs_change_the_architecture():
    base = create_model("swin_unet", **TINY).state_dict()
    ape = create_model("swin_unet", **TINY, ape=True).state_dict()
    assert next(iter(ape)) == "swin_unet.absolute_pos_embed" and ape[
        "swin_unet.absolute_pos_embed"
    ].shape == (1, 3136, 12)
    assert "swin_unet.absolute_pos_embed" not in base
    nonorm = create_model("swin_unet", **TINY, patch_norm=False).state_dict()
    assert "swin_unet.patch_embed.norm.weight" in base and "swin_unet.patch_embed.norm.weight" not in nonorm
    nobias = create_model("swin_unet", **TINY, qkv_bias=False).state_dict()
    assert "swin_unet.layers.0.blocks.0.attn.qkv.bias" not in nobias
    deep = create_model("swin_unet", **TINY, depths=(2, 2, 6, 2)).state_dict()
    assert "swin_unet.layers.2.blocks.5.attn.qkv.weight" in deep
    assert "swin_unet.layers_up.1.blocks.5.attn.qkv.weight" in deep  # decoder mirrors encoder depths
    assert (
        "swin_unet.layers.2.blocks.5.attn_mask" in deep
        and "swin_unet.layers.2.blocks.4.attn_mask" not in deep
    )
    mlp = create_model("swin_unet", **TINY, mlp_ratio=2.0).state_dict()
    assert mlp["swin_unet.layers.0.blocks.0.mlp.fc1.weight"].shape == (24, 12)
    assert create_model("swin_unet", **TINY, num_classes=4).state_dict()["swin_unet.output.weight"].shape == (
        4,
        12,
        1,
        1,
    )


@pytest.mark.parametrize(
    "overrides, shape",
    [
        ({"img_size": 256, "window_size": 8}, (1, 9, 256, 256)),  # 64/32/16/8 grids, 8x8 windows
        ({"img_size": 112, "depths": (2, 2, 2), "num_heads": (1, 2, 3)}, (1, 9, 112, 112)),  # three stages
        ({"img_size": 112, "patch_size": 2, "window_size": 7}, (1, 9, 112, 112)),  # 56/28/14/7 grids
        # non-square: the output head's pixel rearrangement must keep rows and columns apart
        ({"img_size": (112, 224), "depths": (2, 2, 2), "num_heads": (1, 2, 3)}, (1, 9, 112, 224)),
        ({"ape": True, "qk_scale": 0.1, "in_chans": 1, "num_classes": 4}, (1, 4, 224, 224)),
    ],
)
def test_other_configurations_run_and_paths_agree(overrides, shape):
    torch.manual_seed(6)
    model = create_model("swin_unet", **{**TINY, **overrides}).eval()
    x = torch.rand(1, 1, *shape[-2:])
    with torch.no_grad():
        fast = model(x)
        plain = model.set_attn_impl("reference")(x)
    assert fast.shape == shape
    assert (fast - plain).abs().max() <= 1e-5


def test_qk_scale_is_used():
    attn = WindowAttention(12, (7, 7), 3, qk_scale=0.1)
    assert attn.scale == 0.1
    assert WindowAttention(12, (7, 7), 3).scale == 4**-0.5


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"attn_impl": "flash"}, "attn_impl"),
        ({"final_upsample": "expand_last"}, "final_upsample"),
        ({"img_size": 230}, "not divisible by patch_size"),
        ({"img_size": 200}, "halve"),
        ({"img_size": 256}, "whole number of windows"),
        ({"depths": (2, 2, 2)}, "equal length"),
        ({"embed_dim": 10}, "not divisible"),
    ],
)
def test_bad_config_raises_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        create_model("swin_unet", **{**TINY, **overrides})


def test_set_attn_impl_rejects_unknown():
    with pytest.raises(ConfigError):
        create_model("swin_unet", **TINY).set_attn_impl("xformers")


def test_cpu_training_path_matches_the_official_logits(golden_dir):
    # With gradients enabled on the CPU the sdpa path runs its explicit form (see WindowAttention); it must be
    # the same function as the fused SDPA path and the reference.
    ref = torch.load(golden_dir / "swin_unet_tiny_official.pt", weights_only=True)
    model = create_model("swin_unet", **{**ref["config"], "attn_impl": "sdpa"}).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    logits = model(ref["input"])
    assert logits.requires_grad
    assert (logits.detach() - ref["logits"]).abs().max().item() <= 1e-5
    with torch.no_grad():
        fused = model(ref["input"])
    assert (logits.detach() - fused).abs().max().item() <= 1e-5


def test_token_permutation_gradient_is_the_inverse_gather():
    idx = window_token_index((14, 21), 7, 3)
    inv = torch.argsort(idx)
    x = torch.randn(2, 14 * 21, 5, requires_grad=True)
    g = torch.randn(2, 14 * 21, 5)
    (plain,) = torch.autograd.grad(x.index_select(1, idx), x, g)
    out = _PermuteTokens.apply(x, idx, inv)
    (fast,) = torch.autograd.grad(out, x, g)
    assert torch.equal(out, x.index_select(1, idx))
    assert torch.equal(fast, plain)


def test_bf16_training_step_unchanged_by_the_early_cast(monkeypatch):
    """Under autocast the block casts norm1's output before the window gather; the loss and every gradient
    must be bit-identical to the block that lets qkv cast after the gather (the plain formulation)."""

    def plain_forward(self, x):
        x = x + self.drop_path(self._window_attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    torch.manual_seed(0)
    model = create_model("swin_unet", **SMALL, drop_path_rate=0.0).train()
    x = torch.rand(2, 1, 112, 112)

    def grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().mean().backward()
        return out.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_new, g_new = grads()
    monkeypatch.setattr(SwinTransformerBlock, "forward", plain_forward)
    out_old, g_old = grads()
    assert out_new.dtype == torch.bfloat16
    assert torch.equal(out_new, out_old)
    assert all(torch.equal(g_new[n], g_old[n]) for n in g_old)
