"""MONAI's Swin UNETR (Hatamizadeh et al., 2022) in 2-D, computed by MONAI itself (the ``monai`` extra):
``monai.networks.nets.SwinUNETR(spatial_dims=2)``.

Configuration (the factory's defaults) and where each number comes from:

* ``feature_size=48``: the paper's and MONAI's BTCV tutorial's (``swin_unetr_btcv_segmentation_3d``)
  setting; MONAI's own default is 24 (6.3 M parameters in 2-D), 48 gives 25.1 M, beside Swin-Unet's 27.2 M and
  the U-Net's 24.9 M.
* ``depths=(2, 2, 2, 2)``, ``num_heads=(3, 6, 12, 24)``, window 7, patch 2, instance norm, ``normalize=True``,
  no dropout: MONAI's defaults (the paper's Swin-T-like encoder).
* Input side: a multiple of 32 (MONAI checks ``2 ** 5``: the patch embedding and four patch mergings), at
  least 64 (the bottleneck at 1/32 must be at least 2x2 for instance norm in training). At 224
  the token grids (112, 56, 28, 14, 7) are all multiples of the window, so no window is padded.
* ``img_size``: MONAI 1.3 and 1.4 still take it (deprecated, checked only) and 1.5 dropped it; it is passed
  as 224 x 224 only to a MONAI that has it, and the input size rule above is organseg's either way.

MONAI's Swin transformer imports ``einops``, which the ``monai`` extra installs.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from organseg.models._registry import register_model
from organseg.models.library import LibraryNet, require_extra

NAME = "monai_swin_unetr"
_EXTRA = "monai"


def _require() -> ModuleType:
    nets = require_extra("monai.networks.nets", NAME, "monai", _EXTRA)
    require_extra("einops", NAME, "einops (MONAI's Swin transformer imports it)", _EXTRA)
    return nets


class MonaiSwinUNETR(LibraryNet):
    """MONAI's ``SwinUNETR(spatial_dims=2)`` (``net``) as an organseg network.

    ``prefers_channels_last``: its convolutional encoder and decoder blocks at full and half resolution carry
    much of the work; a bf16 training step measured 6 % faster channels-last (docs/networks.md).
    """

    prefers_channels_last = True


def _size_problem(side: int, args: dict) -> str | None:
    # A missing library is said before any work: the input size is checked first.
    _require()
    if side % 32 or side < 64:
        return "takes inputs whose side is a multiple of 32, at least 64"
    return None


@register_model(NAME, head="net.out.conv.conv.weight", size_problem=_size_problem)
def monai_swin_unetr(
    num_classes: int = 9,
    in_chans: int = 1,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    dropout_path_rate: float = 0.0,
    use_v2: bool = False,
) -> MonaiSwinUNETR:
    """MONAI's 2-D Swin UNETR, feature size 48 (25,138,323 parameters for 9 classes)."""
    nets = _require()
    config: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "feature_size": feature_size,
        "depths": [int(d) for d in depths],
        "num_heads": [int(h) for h in num_heads],
        "dropout_path_rate": dropout_path_rate,
        "use_v2": use_v2,
    }
    kwargs = library_args(config)
    if "img_size" in inspect.signature(nets.SwinUNETR).parameters:
        kwargs["img_size"] = (224, 224)  # MONAI < 1.5: deprecated and only checked
    return MonaiSwinUNETR(nets.SwinUNETR(**kwargs), config, NAME)


def library_args(config: dict[str, Any]) -> dict[str, Any]:
    """MONAI's ``SwinUNETR`` keyword arguments for an organseg configuration."""
    return {
        "in_channels": config["in_chans"],
        "out_channels": config["num_classes"],
        "feature_size": config["feature_size"],
        "depths": tuple(config["depths"]),
        "num_heads": tuple(config["num_heads"]),
        "dropout_path_rate": config["dropout_path_rate"],
        "use_v2": config["use_v2"],
        "spatial_dims": 2,
    }
