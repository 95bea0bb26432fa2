"""The memory-layout policy of the networks: whether a network runs faster channels-last (NHWC).

It is a property of the network class, ``prefers_channels_last = True`` (the U-Net, nearly all 3x3
convolutions, which oneDNN and cuDNN run without layout reorders in NHWC, and whose bf16 kernels want it),
so that training (``train.channels_last: auto``) and reduced-precision inference ask the network instead of
guessing from its type or its parameters. A network that does not say so (Swin-Unet: linear layers) keeps
PyTorch's default layout. Measured effects are in docs/training.md and docs/evaluation.md.
"""

from __future__ import annotations

import torch
from torch import nn


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether ``model`` declares that it runs faster channels-last (class attribute
    ``prefers_channels_last``); False for a network that does not say."""
    return getattr(model, "prefers_channels_last", False) is True


def wants_channels_last(model: nn.Module, setting: str | bool = "auto") -> bool:
    """The layout decision for ``train.channels_last``: ``auto`` follows the network's own preference,
    True / False force it."""
    return prefers_channels_last(model) if setting == "auto" else bool(setting)


def is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s weights are in NHWC, judged on its first 4-D weight that is not both layouts at
    once (a 1-channel or 1x1 kernel is); False for a network without such a weight."""
    for p in model.parameters():
        if p.ndim == 4:
            nhwc = p.is_contiguous(memory_format=torch.channels_last)
            if nhwc != p.is_contiguous():
                return nhwc
    return False


def set_channels_last(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Put ``model``'s weights in NHWC (or back in the default layout), in place; returns the model."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
