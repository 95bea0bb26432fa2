"""Building blocks of window-attention transformers that carry no Swin-Unet design decision: stochastic depth,
the two-layer MLP, their weight initialisation, the patch embedding and the Swin Transformer's patch merging,
the sub-pixel rearrangement of patch expansion, and the geometry of (shifted) window attention (partition and
its inverse, the relative-position index, the shift mask, the token permutation that does roll + partition in
one gather).

They live apart from :mod:`organseg.models.swin_unet` so that the network's file holds the network; the
attribute names inside them (``fc1``, ``proj``, ``reduction``, ...) are part of the Swin-Unet state-dict keys
and must not change.
"""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``drop_prob``, rescale the rest."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws, ws, C), windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, ws, ws, C) -> (B, H, W, C), the inverse of :func:`window_partition`."""
    B = windows.shape[0] // ((H // window_size) * (W // window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def relative_position_index(window_size: tuple[int, int]) -> torch.Tensor:
    """(N, N) index into the ((2Wh-1)(2Ww-1), nH) bias table for every query/key pair of a window."""
    wh, ww = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    return rel.sum(-1)


def shifted_window_mask(resolution: tuple[int, int], window_size: int, shift_size: int) -> torch.Tensor:
    """The reference SW-MSA mask (nW, N, N): 0 within a region, -100 across the 3x3 region cut."""
    H, W = resolution
    img = torch.zeros(1, H, W, 1)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for h in cuts:
        for w in cuts:
            img[:, h, w, :] = label
            label += 1
    win = window_partition(img, window_size).view(-1, window_size * window_size)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0)


def window_token_index(resolution: tuple[int, int], window_size: int, shift_size: int) -> torch.Tensor:
    """Token order of ``window_partition(roll(x, -shift))`` as indices into the flat H*W sequence.

    Gathering with it does the cyclic shift and the partition in one copy; ``argsort`` of it undoes both.
    """
    H, W = resolution
    rows = (torch.arange(H) + shift_size) % H
    cols = (torch.arange(W) + shift_size) % W
    flat = (rows[:, None] * W + cols[None, :]).view(1, H, W, 1)
    return window_partition(flat, window_size).reshape(-1)


class _PermuteTokens(torch.autograd.Function):
    """``x.index_select(1, index)`` for a permutation ``index`` of the tokens, whose gradient is the gather by
    the inverse permutation: the same numbers as autograd's zero-fill + ``index_add_``, in one pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def pixel_unfold(x: torch.Tensor, H: int, W: int, scale: int) -> torch.Tensor:
    """(B, H*W, s*s*c) -> (B, sH*sW, c): channel group (p1, p2) becomes sub-pixel (p1, p2) (einops
    ``b h w (p1 p2 c) -> b (h p1) (w p2) c``)."""
    B, _, C = x.shape
    c = C // (scale * scale)
    x = x.view(B, H, W, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H * scale * W * scale, c)


def init_transformer_weights(m: nn.Module) -> None:
    """The ViT / Swin initialisation, for ``model.apply``: linear weights truncated-normal (std 0.02) with
    zero bias, LayerNorm weight 1 and bias 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> linear embedding (a strided conv), then LayerNorm."""

    def __init__(
        self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patches_resolution = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"Swin-Unet was built for {self.img_size} inputs, got {tuple(x.shape[-2:])}")
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm is None else self.norm(x)


class PatchMerging(nn.Module):
    """2x downsampling: concatenate each 2x2 neighbourhood (4C), LayerNorm, linear to 2C."""

    def __init__(self, input_resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        # Sub-grid order (even,even), (odd,even), (even,odd), (odd,odd) is the reference's; weights need it.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))
