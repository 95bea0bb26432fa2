"""What the networks of other libraries (nnU-Net's ``dynamic-network-architectures``, MONAI) share in
organseg: the wrapper that makes a library's module an organseg network, and the one wording of a missing
extra.

The library module is kept whole as ``net`` (its own class, arguments and state-dict layout under the
``net.`` prefix), so its logits are the library's own; the wrapper adds only what every organseg network
has: ``config`` (the constructor arguments a checkpoint stores), ``in_chans`` / ``num_classes``, a
1-channel slice repeated to ``in_chans``, and one channels-last conversion of the input when the weights are
channels-last (the U-Net's rule, :mod:`organseg.models.unet`). Each network is its own file
(``nnunet_2d.py``, ``monai_*.py``) whose subclass says ``prefers_channels_last`` as measured.

The libraries are optional extras, imported inside the factories only: ``organseg`` itself never needs them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from organseg.errors import ExtraNotInstalledError
from organseg.models.layout import is_channels_last


def require_extra(module: str, network: str, package: str, extra: str) -> ModuleType:
    """Import ``module`` of an optional library, or raise a one-line ExtraNotInstalledError (a ConfigError)
    naming the network, the missing package and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExtraNotInstalledError(
            f"{network} needs {package}, not installed: pip install 'organseg[{extra}]'"
        ) from None


class LibraryNet(nn.Module):
    """A library's 2-D segmentation module as an organseg network (see the module notes).

    Args:
        net: the library module, mapping (B, in_chans, H, W) to (B, num_classes, H, W) logits.
        config: the factory's arguments, as a checkpoint stores them.
        name: the registry name, for messages.
    """

    prefers_channels_last = False

    def __init__(self, net: nn.Module, config: dict[str, Any], name: str) -> None:
        super().__init__()
        self.net = net
        self.config = dict(config)
        self.name = name
        self.in_chans = int(config.get("in_chans", 1))
        self.num_classes = int(config["num_classes"])

    def describe(self) -> str:
        """A one-line summary for ``organseg info``: the library's class and the configuration."""
        library = type(self.net).__module__.split(".")[0]
        settings = ", ".join(f"{k} {v}" for k, v in self.config.items())
        return f"{library} {type(self.net).__name__}: {settings}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, self.in_chans):
            raise ValueError(f"{self.name} expects (B, 1 or {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1 and self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)  # slices are one channel, as the U-Net repeats them
        if is_channels_last(self.net):
            # A channels-last network fed a contiguous tensor would convert at every conv; convert once.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)
