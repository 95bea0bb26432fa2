"""Swin-Unet (Cao et al., 2021): a pure-transformer U-shaped network, computed as the official
``SwinTransformerSys`` (HuCaoFighting/Swin-Unet @ f998666) wrapped in its ``SwinUnet`` module.

The parameter and buffer names, shapes and order are the reference's (``swin_unet.`` prefix, 27,168,900
parameters for the paper configuration), so official training checkpoints load with a strict
``load_state_dict``; ImageNet Swin-T weights go through :mod:`organseg.models.pretrained`.

Shape walk for the paper configuration (tokens @ resolution x channels)::

    patch_embed   224x224x3 -> 56x56x96              skip[0] = this (not the stage-1 output)
    layers.0      2 blocks (W-MSA, SW-MSA) + merge -> 28x28x192      skip[1] = input of layers.1
    layers.1      2 blocks + merge -> 14x14x384                       skip[2] = input of layers.2
    layers.2      2 blocks + merge -> 7x7x768
    layers.3      2 blocks (7x7 = one window: never shifted), then norm
    layers_up.0   PatchExpand -> 14x14x384
    layers_up.k   cat(x, skip[3-k]) -> concat_back_dim.k -> 2 blocks -> PatchExpand (k = 1, 2; k = 3 none)
    norm_up, up   FinalPatchExpand_X4 -> 224x224x96 -> output 1x1 conv (no bias) -> logits

Two attention paths give the same function (tested to 1e-5):

* ``attn_impl="reference"``: the official arithmetic, ``softmax(q*scale @ k^T + bias + mask)`` with the
  shifted-window mask filled with -100.
* ``attn_impl="sdpa"`` (default): ``F.scaled_dot_product_attention`` with the relative-position bias and the
  shifted-window mask folded into one additive float mask, whose masked entries are ``-inf``. The -100 of the
  reference makes softmax produce ~1e-44 values, i.e. subnormal floats, which x86 CPUs process in slow
  microcode; ``-inf`` gives exact zeros instead. No row is fully masked (a token always sees itself), so
  ``-inf`` never yields NaN. The roll + window partition (and its inverse) are one precomputed
  ``index_select`` each instead of four copies, with the inverse gather as gradient (not a scatter-add), and
  the output head applies LayerNorm and the 1x1 conv before the 4x4 pixel rearrangement (both act per pixel),
  so that the rearrangement moves num_classes channels instead of 96.

While the bias table needs a gradient, SDPA runs its math kernel on CPU (the fused one has no mask gradient),
so training gains less than inference. Both paths agree to ~4e-6 in fp32 on CPU and GPU. Measured times of
both paths: docs/training.md, "Where the network time goes".
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from organseg.errors import ConfigError
from organseg.models._registry import register_model
from organseg.models.blocks import (
    DropPath,
    Mlp,
    PatchEmbed,
    PatchMerging,
    _PermuteTokens,
    init_transformer_weights,
    pixel_unfold,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
    window_token_index,
)

ATTN_IMPLS = ("sdpa", "reference")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias."""

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_impl = attn_impl
        # Registration order is the reference's: it fixes the state-dict order.
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(nH, N, N) bias gathered from the table (inside autograd, so the table trains)."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous()

    def additive_mask(self, mask: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """The one float mask SDPA adds to ``q k^T * scale``: (1, nH, N, N) or (batch * nW, nH, N, N).

        Built in every forward from the bias table (a gather and one write), so it follows the table as it
        trains and carries its gradient. Pairs the reference masks with -100 get -inf: see the module notes.
        """
        bias = self.relative_position_bias().to(dtype)
        if mask is None:
            return bias.unsqueeze(0)
        per_window = torch.where(mask.unsqueeze(1) < 0, float("-inf"), bias)  # (nW, nH, N, N)
        # SDPA's fused CPU kernel wants a 4-D mask broadcastable to (B * nW, nH, N, N) (a 3-D or 5-D one
        # falls back to the slow math kernel). The window index varies fastest in that batch, so the batch
        # copies are written out; a contiguous repeat measured faster than a broadcasting write.
        return per_window if batch == 1 else per_window.repeat(batch, 1, 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: the block's (nW, N, N) shift mask or None."""
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        # unbind, not qkv[0], qkv[1], qkv[2]: the same views, but one stack in the backward instead of three
        # zero-filled full-size gradients added together.
        q, k, v = qkv.unbind(0)
        if self.attn_impl == "sdpa" and q.device.type == "cpu" and torch.is_grad_enabled():
            out = self._explicit_attention(q, k, v, mask)
        elif self.attn_impl == "sdpa":
            nw = 1 if mask is None else mask.shape[0]
            attn_mask = self.additive_mask(mask, B_ // nw, q.dtype)
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=drop, scale=self.scale
            )
        else:
            attn = self.attn_drop(self._reference_probs(q, k, mask))
            out = attn @ v
        x = out.transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The sdpa path's function written out, for CPU training. There SDPA's fused kernel cannot run (it
        has no mask gradient, and the bias table trains), and its math fallback materialises the mask for the
        whole batch and checks every row for full masking; broadcasting the same -inf mask over the batch
        is faster (docs/training.md, "Where the network time goes")."""
        B_, nH, N, _ = q.shape
        attn = (q * self.scale) @ k.transpose(-2, -1)
        add = self.additive_mask(mask, 1, attn.dtype)  # (nW, nH, N, N), or (1, nH, N, N) without a shift
        attn = (attn.view(-1, add.shape[0], nH, N, N) + add).view(B_, nH, N, N)
        return self.attn_drop(attn.softmax(dim=-1)) @ v

    def _reference_probs(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B_, _, N, _ = q.shape
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(B_ // nw, nw, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        return attn.softmax(dim=-1)

    def attention_probs(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax weights (B * nW, nH, N, N) of the active path, for inspection and tests."""
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        if self.attn_impl == "reference":
            return self._reference_probs(q, k, mask)
        nw = 1 if mask is None else mask.shape[0]
        logits = (q @ k.transpose(-2, -1)) * self.scale + self.additive_mask(mask, B_ // nw, q.dtype)
        return logits.softmax(dim=-1)


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted) window attention + MLP, each with a residual and stochastic depth."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        if min(input_resolution) <= window_size:
            # One window covers the map: nothing to shift, and the window shrinks to the map.
            self.shift_size = 0
            self.window_size = min(input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ConfigError(f"shift size must be in [0, window size), got {self.shift_size}")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            window_size=(self.window_size, self.window_size),
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
            attn_impl=attn_impl,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = (
            shifted_window_mask(input_resolution, self.window_size, self.shift_size)
            if self.shift_size
            else None
        )
        self.register_buffer("attn_mask", mask)
        # Not in the state dict (derived from the architecture); moves with .to(device).
        self.register_buffer(
            "token_index",
            window_token_index(input_resolution, self.window_size, self.shift_size),
            persistent=False,
        )
        self.register_buffer("token_index_inv", torch.argsort(self.token_index), persistent=False)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        B, L, C = x.shape
        ws, n = self.window_size, self.window_size * self.window_size
        if self.attn.attn_impl == "reference":
            x = x.view(B, H, W, C)
            if self.shift_size > 0:
                x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            windows = window_partition(x, ws).view(-1, n, C)
            windows = self.attn(windows, mask=self.attn_mask)
            x = window_reverse(windows.view(-1, ws, ws, C), ws, H, W)
            if self.shift_size > 0:
                x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
            return x.reshape(B, L, C)
        windows = _PermuteTokens.apply(x, self.token_index, self.token_index_inv).view(-1, n, C)
        windows = self.attn(windows, mask=self.attn_mask)
        return _PermuteTokens.apply(windows.view(B, L, C), self.token_index_inv, self.token_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        if x.shape[1] != H * W:
            raise ValueError(f"expected {H * W} tokens ({H}x{W}), got {x.shape[1]}")
        h = self.norm1(x)
        dev = x.device.type
        if self.attn.attn_impl != "reference" and torch.is_autocast_enabled(dev):
            # Under autocast the LayerNorm gives fp32 and qkv casts it to the autocast type anyway; casting
            # first makes the window gather (and its backward) move half the bytes, with the same numbers:
            # a gather commutes with an elementwise cast.
            h = h.to(torch.get_autocast_dtype(dev))
        x = x + self.drop_path(self._window_attention(h))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchExpand(nn.Module):
    """2x upsampling: linear C -> 2C, rearrange to 2H x 2W x C/2, LayerNorm."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, dim_scale: int = 2) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.expand = nn.Linear(dim, 2 * dim, bias=False) if dim_scale == 2 else nn.Identity()
        self.norm = nn.LayerNorm(dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        return self.norm(pixel_unfold(self.expand(x), H, W, 2))


class FinalPatchExpand(nn.Module):
    """Last upsampling back to pixels: linear C -> s*s*C, rearrange to sH x sW x C, LayerNorm.

    The reference class is ``FinalPatchExpand_X4`` with s fixed at 4; here s is the patch size, which is 4 in
    every reference configuration and keeps the output at the input size for other patch sizes.
    """

    def __init__(self, input_resolution: tuple[int, int], dim: int, dim_scale: int = 4) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.dim_scale = dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim_scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        return self.norm(pixel_unfold(self.expand(x), H, W, self.dim_scale))


class BasicLayer(nn.Module):
    """An encoder stage (``up=False``, the reference ``BasicLayer``: blocks, then PatchMerging if
    ``resample``) or a decoder stage (``up=True``, ``BasicLayer_up``: blocks, then PatchExpand if
    ``resample``). Odd blocks use shifted windows."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        resample: bool,
        up: bool,
        use_checkpoint: bool,
        attn_impl: str,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                input_resolution,
                num_heads,
                window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
                attn_impl=attn_impl,
            )
            for i in range(depth)
        )
        # The attribute name ("downsample" / "upsample") is part of the state-dict keys.
        if up:
            self.upsample = PatchExpand(input_resolution, dim, 2) if resample else None
        else:
            self.downsample = PatchMerging(input_resolution, dim) if resample else None
        self._up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        resample = self.upsample if self._up else self.downsample
        return x if resample is None else resample(x)


class SwinTransformerSys(nn.Module):
    """The Swin-Unet network proper (the reference's ``SwinTransformerSys``); 3-channel input."""

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 9,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        final_upsample: str = "expand_first",
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        img_size = _pair(img_size)
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        _check_config(
            img_size, patch_size, embed_dim, depths, num_heads, window_size, final_upsample, attn_impl
        )
        self.num_classes = num_classes
        self.num_layers = n = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.num_features = embed_dim * 2 ** (n - 1)
        self.final_upsample = final_upsample
        self.attn_impl = attn_impl  # also picks the output head's arithmetic (up_x4)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, patch_norm)
        res = self.patches_resolution = self.patch_embed.patches_resolution
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]

        def stage(i: int, up: bool, resample: bool) -> BasicLayer:
            return BasicLayer(
                embed_dim * 2**i,
                (res[0] // 2**i, res[1] // 2**i),
                depths[i],
                num_heads[i],
                window_size,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop_rate,
                attn_drop_rate,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                resample=resample,
                up=up,
                use_checkpoint=use_checkpoint,
                attn_impl=attn_impl,
            )

        self.layers = nn.ModuleList(stage(i, up=False, resample=i < n - 1) for i in range(n))
        # Decoder stage k mirrors encoder stage n-1-k (its depth, heads and drop-path rates: the reference
        # never uses its decoder-depth setting). Stage 0 is a bare PatchExpand.
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for k in range(n):
            i = n - 1 - k
            dim = embed_dim * 2**i
            self.concat_back_dim.append(nn.Linear(2 * dim, dim) if k > 0 else nn.Identity())
            if k == 0:
                self.layers_up.append(PatchExpand((res[0] // 2**i, res[1] // 2**i), dim, 2))
            else:
                self.layers_up.append(stage(i, up=True, resample=k < n - 1))
        self.norm = nn.LayerNorm(self.num_features)
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = FinalPatchExpand(res, embed_dim, dim_scale=patch_size)
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)
        self.apply(init_transformer_weights)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        skips = []
        for layer in self.layers:
            skips.append(x)  # the stage *input* is the skip (skip[0] = patch embedding)
            x = layer(x)
        return self.norm(x), skips

    def forward_up_features(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for k, layer_up in enumerate(self.layers_up):
            if k > 0:
                x = self.concat_back_dim[k](torch.cat([x, skips[self.num_layers - 1 - k]], -1))
            x = layer_up(x)
        return self.norm_up(x)

    def up_x4(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_impl == "reference":
            H, W = self.patch_embed.img_size
            x = self.up(x)
            x = x.view(x.shape[0], H, W, -1).permute(0, 3, 1, 2)
            return self.output(x)
        # The same function in another order: LayerNorm and the 1x1 output conv act on each pixel's C values
        # alone, so they run before the 4x4 pixel rearrangement, which then moves num_classes channels
        # instead of C (96): the largest copies of a 224² step (forward and backward) shrink ~10x.
        B = x.shape[0]
        h, w = self.patches_resolution
        s, c = self.up.dim_scale, self.embed_dim
        y = self.up.norm(self.up.expand(x).view(B, h * w, s * s, c))
        y = F.linear(y, self.output.weight.view(self.num_classes, c))  # (B, h*w, s*s, classes)
        y = y.view(B, h, w, s, s, self.num_classes).permute(0, 5, 1, 3, 2, 4)
        return y.reshape(B, self.num_classes, h * s, w * s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.forward_features(x)
        return self.up_x4(self.forward_up_features(x, skips))


def _check_config(
    img_size: tuple[int, int],
    patch_size: int,
    embed_dim: int,
    depths: list[int],
    num_heads: list[int],
    window_size: int,
    final_upsample: str,
    attn_impl: str,
) -> None:
    """Reject configurations the reference would fail on deep inside a forward pass."""
    if attn_impl not in ATTN_IMPLS:
        raise ConfigError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
    if final_upsample != "expand_first":
        raise ConfigError(
            f"final_upsample must be 'expand_first' (the only one the reference defines), "
            f"got {final_upsample!r}"
        )
    if len(depths) != len(num_heads) or not depths:
        raise ConfigError(f"depths {depths} and num_heads {num_heads} must be non-empty and of equal length")
    if any(d < 1 for d in depths):
        raise ConfigError(f"every stage needs at least one block, got depths {depths}")
    for i, h in enumerate(num_heads):
        if (embed_dim * 2**i) % h:
            raise ConfigError(f"stage {i}: width {embed_dim * 2**i} is not divisible by {h} heads")
    problem = _size_error(img_size, patch_size, len(depths), window_size)
    if problem:
        raise ConfigError(problem)


def _size_error(img_size: tuple[int, int], patch_size: int, n: int, window_size: int) -> str | None:
    """Why an input of ``img_size`` does not fit (a patch grid that halves n - 1 times into whole windows)."""
    if img_size[0] % patch_size or img_size[1] % patch_size:
        return f"img_size {img_size} is not divisible by patch_size {patch_size}"
    res = (img_size[0] // patch_size, img_size[1] // patch_size)
    if res[0] % 2 ** (n - 1) or res[1] % 2 ** (n - 1):
        return (
            f"img_size {img_size}: the {res[0]}x{res[1]} patch grid must halve {n - 1} times "
            f"(divisible by {2 ** (n - 1)})"
        )
    for i in range(n):
        h, w = res[0] // 2**i, res[1] // 2**i
        ws = min(window_size, h, w)
        if ws < 1 or h % ws or w % ws:
            return (
                f"img_size {img_size}, window_size {window_size}: stage {i} grid {h}x{w} "
                "is not a whole number of windows"
            )
    return None


class SwinUnet(nn.Module):
    """The reference wrapper: a 1-channel input is repeated to the network's channels; weights under
    ``swin_unet``. Its work is linear layers on token sequences, which NHWC does not speed up:
    ``prefers_channels_last`` is False (:mod:`organseg.models.layout`)."""

    prefers_channels_last = False

    def __init__(self, **config) -> None:
        super().__init__()
        self.swin_unet = SwinTransformerSys(**config)
        self.num_classes: int = self.swin_unet.num_classes
        self.in_chans: int = self.swin_unet.patch_embed.proj.in_channels
        self.img_size: tuple[int, int] = self.swin_unet.patch_embed.img_size
        self.config: dict = dict(config)

    @property
    def attn_impl(self) -> str:
        return self.config.get("attn_impl", "sdpa")

    def set_attn_impl(self, attn_impl: str) -> SwinUnet:
        """Switch every window attention between "sdpa" and "reference" (same weights, same function)."""
        if attn_impl not in ATTN_IMPLS:
            raise ConfigError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        for m in self.modules():
            if isinstance(m, (WindowAttention, SwinTransformerSys)):
                m.attn_impl = attn_impl
        self.config["attn_impl"] = attn_impl
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, self.in_chans):
            raise ValueError(f"Swin-Unet expects (B, 1 or {self.in_chans}, H, W) input, got {tuple(x.shape)}")
        if x.shape[1] == 1 and self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)  # the reference's repeat, without the copy
        return self.swin_unet(x)


#: The paper configuration: the constructor's own defaults (one place; the factory's signature is this).
_PAPER = inspect.signature(SwinTransformerSys)


def _size_problem(side: int, args: dict) -> str | None:
    """Why a ``side`` x ``side`` input does not fit a Swin-Unet built with ``args``, or None. Arguments wrong
    whatever the size are left to the constructor's own message."""
    cfg = {k: p.default for k, p in _PAPER.parameters.items()} | args
    try:
        patch, depths, window = int(cfg["patch_size"]), len(cfg["depths"]), int(cfg["window_size"])
    except (TypeError, ValueError):
        return None
    if patch < 1 or depths < 1 or window < 1:
        return None
    problem = _size_error((side, side), patch, depths, window)
    return None if problem is None else f"does not take {side}x{side} inputs ({problem})"


@register_model("swin_unet", head="swin_unet.output.weight", size_problem=_size_problem)
def swin_unet(**overrides: Any) -> SwinUnet:
    """Swin-Unet with the paper's Synapse configuration (swin_tiny_patch4_window7_224_lite): the defaults of
    :class:`SwinTransformerSys`, any of its arguments overridden (the registry reads them from this
    function's signature, which is the constructor's)."""
    bound = _PAPER.bind(**overrides)  # an unknown argument is a TypeError, as for a written-out signature
    bound.apply_defaults()
    config = dict(bound.arguments)
    # Plain lists, so that the configuration a checkpoint stores reads back equal from JSON or YAML.
    if not isinstance(config["img_size"], int):
        config["img_size"] = list(config["img_size"])
    config["depths"] = [int(d) for d in config["depths"]]
    config["num_heads"] = [int(h) for h in config["num_heads"]]
    return SwinUnet(**config)


swin_unet.__signature__ = _PAPER.replace(return_annotation=SwinUnet)  # type: ignore[attr-defined]
