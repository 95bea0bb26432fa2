"""nnU-Net's 2-D U-Net: ``PlainConvUNet`` of nnU-Net's own architecture package,
``dynamic-network-architectures`` (the ``nnunet`` extra), configured as nnU-Net v2's default planner
(``ExperimentPlanner``, plans ``nnUNetPlans``) configures its ``2d`` network for a square ``img_size``
input of isotropic in-plane spacing.

The plan and where each number comes from (nnU-Net v2, ``experiment_planning/experiment_planners/
default_experiment_planner.py`` and ``network_topology.py``):

* **Stages.** ``get_pool_and_conv_props`` halves an axis while it is at least ``2 * min_feature_map_size``
  pixels (``UNet_featuremap_min_edge_length = 4``), rounding up; with equal spacing both axes pool together.
  The number of poolings plus one is ``n_stages``: 224 -> 112 -> 56 -> 28 -> 14 -> 7 is 5 poolings, 6 stages
  (the planner's own comment: "224 / 2**5 = 7; 7 < 2 * 4 so it's valid"). The input side must be divisible by
  ``2 ** poolings`` (nnU-Net pads its patch up to that; organseg asks for such a ``train.img_size``).
* **Features** ``min(32 * 2**k, 512)`` per stage: ``UNet_base_num_features = 32``,
  ``UNet_max_features_2d = 512`` (32, 64, 128, 256, 512, 512 at 224).
* **Kernels** 3x3 at every stage (isotropic spacing: every axis within a factor 2 of the finest; the
  bottleneck is always 3x3); **strides** 1 for the first stage, then 2.
* **Convolutions per stage** 2 in the encoder and 2 in the decoder (``UNet_blocks_per_stage_encoder`` /
  ``_decoder``, all 2s).
* ``conv_bias=True``; ``InstanceNorm2d(eps=1e-5, affine=True)``; no dropout; ``LeakyReLU(inplace=True)``,
  whose slope is PyTorch's default 0.01 (the plan gives only ``inplace``); ``nonlin_first=False``.
* **Initialisation** ``PlainConvUNet.initialize`` applied to every module (He-normal with ``a=1e-2``, zero
  bias), as nnU-Net's ``get_network_from_plans`` does.
* **Deep supervision off**: organseg's loss takes one output. The decoder still builds nnU-Net's
  lower-resolution segmentation heads (so state dicts of nnU-Net load); unused here, they are frozen
  (``requires_grad=False``): no weight decay moves them, and DDP finds no unused parameter that wants a
  gradient. They count in the parameters, as in nnU-Net.

nnU-Net's batch size, patch size from the dataset's median shape, normalisation and augmentation are its
*training* plan, not the network's: organseg's recipe (``train.*``) replaces them, as for every network here.

PlainConvUNet imports only torch and numpy; the package declares ``timm`` and ``einops`` for other
architectures it ships (docs/networks.md, installing).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from organseg.models._registry import register_model
from organseg.models.library import LibraryNet, require_extra

NAME = "nnunet_2d"
_MODULE = "dynamic_network_architectures.architectures.unet"
_PACKAGE = "dynamic-network-architectures (nnU-Net's networks)"
_EXTRA = "nnunet"

#: nnU-Net v2 ExperimentPlanner: UNet_featuremap_min_edge_length.
MIN_EDGE = 4


def poolings(side: int, min_edge: int = MIN_EDGE) -> int:
    """How many times nnU-Net v2's planner pools a ``side``-pixel axis: while it is at least ``2 * min_edge``
    pixels, halving and rounding up."""
    n = 0
    while side >= 2 * min_edge:
        side = -(-side // 2)
        n += 1
    return n


def plan_2d(
    img_size: int,
    in_chans: int = 1,
    num_classes: int = 9,
    base_features: int = 32,
    max_features: int = 512,
    n_conv_per_stage: int = 2,
    n_conv_per_stage_decoder: int = 2,
) -> dict[str, Any]:
    """The ``PlainConvUNet`` keyword arguments of nnU-Net v2's 2-D plan for a square ``img_size`` input
    (module notes), the torch classes given as classes."""
    stages = poolings(img_size) + 1
    return {
        "input_channels": in_chans,
        "n_stages": stages,
        "features_per_stage": [min(base_features * 2**k, max_features) for k in range(stages)],
        "conv_op": nn.Conv2d,
        "kernel_sizes": [[3, 3]] * stages,
        "strides": [[1, 1]] + [[2, 2]] * (stages - 1),
        "n_conv_per_stage": [n_conv_per_stage] * stages,
        "num_classes": num_classes,
        "n_conv_per_stage_decoder": [n_conv_per_stage_decoder] * (stages - 1),
        "conv_bias": True,
        "norm_op": nn.InstanceNorm2d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
        "deep_supervision": False,
    }


class NnUNet2D(LibraryNet):
    """nnU-Net's 2-D ``PlainConvUNet`` (``net``) as an organseg network.

    ``prefers_channels_last``: 3x3 convolutions throughout, as the U-Net; a bf16 training step measured 4 %
    faster channels-last (docs/networks.md).
    """

    prefers_channels_last = True

    def describe(self) -> str:
        """The plan in one line (``organseg info``)."""
        enc = self.net.encoder
        c = self.config
        return (
            f"PlainConvUNet, nnU-Net 2d plan for {c['img_size']}: {len(enc.output_channels)} stages "
            f"{'-'.join(map(str, enc.output_channels))}, 3x3, {c['n_conv_per_stage']}+"
            f"{c['n_conv_per_stage_decoder']} convs/stage, InstanceNorm, LeakyReLU, in {c['in_chans']}, "
            f"classes {c['num_classes']}"
        )


def _size_problem(side: int, args: dict) -> str | None:
    # A missing library is said before any work: the input size is checked first.
    require_extra(_MODULE, NAME, _PACKAGE, _EXTRA)
    n = poolings(side)
    if n < 1:
        return f"takes inputs of at least {2 * MIN_EDGE} pixels a side"
    if side % 2**n:
        return (
            f"pools a {side}-pixel side {n} times (nnU-Net's plan: down to at least {MIN_EDGE} pixels), "
            f"so the side must be a multiple of {2**n}"
        )
    return None


@register_model(NAME, head="net.decoder.seg_layers.0.weight", size_problem=_size_problem)
def nnunet_2d(
    num_classes: int = 9,
    in_chans: int = 1,
    img_size: int = 224,
    base_features: int = 32,
    max_features: int = 512,
    n_conv_per_stage: int = 2,
    n_conv_per_stage_decoder: int = 2,
) -> NnUNet2D:
    """nnU-Net v2's 2-D PlainConvUNet planned for ``img_size`` (224: 6 stages, 32-512 features,
    20,626,061 parameters for 9 classes)."""
    unet = require_extra(_MODULE, NAME, _PACKAGE, _EXTRA)
    if isinstance(img_size, list | tuple):
        if len(img_size) != 2 or img_size[0] != img_size[1]:
            raise ValueError(f"{NAME} is planned for square inputs, got img_size {img_size}")
        img_size = int(img_size[0])
    problem = _size_problem(int(img_size), {})
    if problem is not None:
        raise ValueError(f"{NAME} with img_size {img_size} {problem}")
    config = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "img_size": int(img_size),
        "base_features": base_features,
        "max_features": max_features,
        "n_conv_per_stage": n_conv_per_stage,
        "n_conv_per_stage_decoder": n_conv_per_stage_decoder,
    }
    plan = plan_2d(**config)
    net = unet.PlainConvUNet(**plan)
    net.apply(net.initialize)  # nnU-Net's get_network_from_plans initialises so
    for head in net.decoder.seg_layers[:-1]:  # deep-supervision heads: unused without deep supervision
        head.requires_grad_(False)
    return NnUNet2D(net, config, NAME)
