"""MONAI's ``BasicUNet`` in 2-D, computed by MONAI itself (the ``monai`` extra):
``monai.networks.nets.BasicUNet(spatial_dims=2)``.

Configuration: MONAI's defaults throughout (the class docstring's): ``features=(32, 32, 64, 128, 256, 32)``
(five encoder levels, the last number the decoder's top level), two 3x3 conv-norm-act per level, instance
norm with affine parameters, ``LeakyReLU(0.1)``, transposed-convolution upsampling, no dropout. 1,978,697
parameters for 9 classes: a small network, as MONAI ships it; ``model.args.features`` widens it.

Input side: at least 32 pixels (four 2x2 max-poolings leave a bottleneck of at least 2x2, which instance
norm needs in training). Any side works above that: MONAI pads the upsampled map to the skip's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from organseg.models._registry import register_model
from organseg.models.library import LibraryNet, require_extra

NAME = "monai_basic_unet"
_EXTRA = "monai"


class MonaiBasicUNet(LibraryNet):
    """MONAI's ``BasicUNet(spatial_dims=2)`` (``net``) as an organseg network.

    ``prefers_channels_last`` stays False: a bf16 training step measured 5 % slower channels-last
    (docs/networks.md).
    """


def _size_problem(side: int, args: dict) -> str | None:
    # A missing library is said before any work: the input size is checked first.
    require_extra("monai.networks.nets", NAME, "monai", _EXTRA)
    return None if side >= 32 else "takes inputs of at least 32 pixels a side"


@register_model(NAME, head="net.final_conv.weight", size_problem=_size_problem)
def monai_basic_unet(
    num_classes: int = 9,
    in_chans: int = 1,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> MonaiBasicUNet:
    """MONAI's 2-D BasicUNet with MONAI's defaults (1,978,697 parameters for 9 classes)."""
    nets = require_extra("monai.networks.nets", NAME, "monai", _EXTRA)
    config: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "features": [int(f) for f in features],
        "dropout": dropout,
        "upsample": upsample,
    }
    return MonaiBasicUNet(nets.BasicUNet(**library_args(config)), config, NAME)


def library_args(config: dict[str, Any]) -> dict[str, Any]:
    """MONAI's ``BasicUNet`` keyword arguments for an organseg configuration."""
    return {
        "spatial_dims": 2,
        "in_channels": config["in_chans"],
        "out_channels": config["num_classes"],
        "features": tuple(config["features"]),
        "dropout": config["dropout"],
        "upsample": config["upsample"],
    }
