"""The seed write-up's U-Net: a VGG16-BN encoder and a bilinear-upsampling decoder without BatchNorm.

This is the network of the reproduction write-up (``Unet`` / ``Encoder`` / ``Decoder`` in
``shared/seed``), adapted there to 224x224 single-channel slices. Its parameter and state-dict layout is
kept exactly (24,898,953 parameters for 9 classes, keys ``encoder.features.N.*``,
``decoder.up_concatK.conv1/conv2.*``, ``decoder.final.*``), so weights trained with the seed code load as is.

Shape walk for a 1x224x224 input (channels @ resolution)::

    feat1 = features[:6]     64 @ 224   conv-bn-relu x2
    feat2 = features[6:13]  128 @ 112   pool, conv-bn-relu x2
    feat3 = features[13:23] 256 @ 56    pool, conv-bn-relu x3
    feat4 = features[23:33] 512 @ 28    pool, conv-bn-relu x3
    feat5 = features[33:-1] 512 @ 14    pool, conv-bn-relu x3   (features[43], the last MaxPool, is unused)
    up4 = conv-relu x2 (cat[feat4, up(feat5)])  1024 -> 512 @ 28
    up3 = conv-relu x2 (cat[feat3, up(up4)])     768 -> 256 @ 56
    up2 = conv-relu x2 (cat[feat2, up(up3)])     384 -> 128 @ 112
    up1 = conv-relu x2 (cat[feat1, up(up2)])     192 -> 64  @ 224
    logits = final 1x1 conv                       64 -> num_classes

Any input whose height and width are divisible by 16 works.

Speed (CPU and GPU): nearly all of the work is 3x3 convolutions, so memory format and precision are what
matter. ``prepare_for_speed(model)`` converts the weights to channels-last; the forward pass then converts
its input once (a no-op when it is already channels-last) and returns channels-last logits, which every
PyTorch op accepts, so callers need not care. Combine it with ``torch.autocast(device, torch.bfloat16)``.
Outputs equal the contiguous fp32 path to float rounding (tested). Channels-last is what lets oneDNN's bf16
kernels run without reorders, hence the two together (measured step times: docs/training.md). The class says
``prefers_channels_last = True``, which ``train.channels_last: auto`` and bf16 inference follow
(:mod:`organseg.models.layout`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from organseg.models._registry import register_model
from organseg.models.layout import set_channels_last

# VGG16 configuration ("D" in the VGG paper): output channels of each 3x3 conv, "M" for a 2x2 max-pool.
# The indices of the resulting nn.Sequential are the seed's (conv, bn, relu per entry; one module per "M").
VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)

# Where the five feature taps cut ``encoder.features`` (the seed's slice bounds).
_TAPS: tuple[tuple[int, int], ...] = ((0, 6), (6, 13), (13, 23), (23, 33), (33, 43))


class Encoder(nn.Module):
    """VGG16-BN feature extractor returning the five skip/bottleneck features (the seed's ``Encoder``)."""

    def __init__(self, in_chans: int = 1, cfg: tuple[int | str, ...] = VGG16_CFG) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                c_out = int(v)
                layers += [nn.Conv2d(c, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c = c_out
        self.features = nn.Sequential(*layers)
        # The width of the conv just before each pool is the width of one of the five taps.
        pairs = zip(cfg, (*cfg[1:], "M"), strict=True)
        self.out_channels = [int(v) for v, nxt in pairs if v != "M" and nxt == "M"]
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        # The seed calls ``_initialize_weights`` without showing it; its Encoder is torchvision's VGG16-BN
        # feature stack, so we use torchvision VGG's scheme: He-normal (fan_out, ReLU gain) convs with zero
        # bias, BatchNorm weight 1 / bias 0. fan_out keeps the backward-pass variance stable through the 13
        # stacked convs. The decoder is not touched here, exactly as in the seed (PyTorch default init there).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for start, stop in _TAPS:
            for i in range(start, stop):  # index, not slice: slicing builds a new Sequential per call
                x = self.features[i](x)
            feats.append(x)
        return feats


class DecoderLayer(nn.Module):
    """``cat([skip, up2(deeper)])`` -> conv3x3 -> ReLU -> conv3x3 -> ReLU; no BatchNorm (as in the seed)."""

    def __init__(self, in_size: int, out_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_size, out_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_size, out_size, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, skip: torch.Tensor, deeper: torch.Tensor) -> torch.Tensor:
        # The seed's nn.UpsamplingBilinear2d is bilinear with align_corners=True.
        up = F.interpolate(deeper, scale_factor=2.0, mode="bilinear", align_corners=True)
        # Under autocast the conv output is bf16 while the upsample may stay fp32; cat needs one dtype.
        x = torch.cat([skip, up.to(skip.dtype)], dim=1)
        x = self.relu(self.conv1(x))
        return self.relu(self.conv2(x))


class Decoder(nn.Module):
    """Four ``DecoderLayer``s from the bottleneck up, then a 1x1 classifier (the seed's ``Decoder``)."""

    def __init__(self, num_classes: int, enc_channels: tuple[int, ...] = (64, 128, 256, 512, 512)) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = enc_channels
        self.up_concat4 = DecoderLayer(c4 + c5, c4)  # 1024 -> 512
        self.up_concat3 = DecoderLayer(c3 + c4, c3)  # 768 -> 256
        self.up_concat2 = DecoderLayer(c2 + c3, c2)  # 384 -> 128
        self.up_concat1 = DecoderLayer(c1 + c2, c1)  # 192 -> 64
        self.final = nn.Conv2d(c1, num_classes, kernel_size=1)

    def forward(self, feat1, feat2, feat3, feat4, feat5) -> torch.Tensor:
        up4 = self.up_concat4(feat4, feat5)
        up3 = self.up_concat3(feat3, up4)
        up2 = self.up_concat2(feat2, up3)
        up1 = self.up_concat1(feat1, up2)
        return self.final(up1)


class UNet(nn.Module):
    """U-Net of the seed reproduction: VGG16-BN encoder, bilinear x2 decoder, ``num_classes`` logits.

    ``prefers_channels_last``: nearly all of the work is 3x3 convolutions, fastest in NHWC (see the module
    notes); the layout policy (:mod:`organseg.models.layout`) reads it.

    Args:
        num_classes: output channels (9 for Synapse: background + 8 organs; 4 for ACDC).
        in_chans: input channels of the first convolution (1 for CT / MRI slices); a 1-channel input is
            repeated to ``in_chans``, so slices feed a network built for 3-channel (ImageNet) weights.
        width: multiplier on every channel count (1.0 is the seed's network; 0.25 gives a 16x cheaper
            U-Net of the same shape, used by the CPU demo). Channels are rounded to multiples of 8.
    """

    prefers_channels_last = True

    def __init__(self, num_classes: int = 9, in_chans: int = 1, width: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
        if not 0 < width <= 4:
            raise ValueError(f"width must be in (0, 4], got {width}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.width = width
        self.config: dict = {"num_classes": num_classes, "in_chans": in_chans}
        if width != 1.0:
            self.config["width"] = width
        cfg = tuple(v if v == "M" else max(8, int(round(int(v) * width / 8)) * 8) for v in VGG16_CFG)
        self.encoder = Encoder(in_chans, cfg)
        self.decoder = Decoder(num_classes, tuple(self.encoder.out_channels))

    @property
    def is_channels_last(self) -> bool:
        """Whether :func:`prepare_for_speed` put the weights in NHWC (judged on a conv with C > 1; a 1-channel
        or 1x1 kernel is both layouts at once)."""
        w = self.encoder.features[3].weight
        return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, self.in_chans) or x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(
                f"UNet expects (B, 1 or {self.in_chans}, H, W) with H and W divisible by 16, "
                f"got {tuple(x.shape)}"
            )
        if x.shape[1] == 1 and self.in_chans != 1:
            # CT / MRI slices are one channel; a network built for more (ImageNet VGG weights take 3) sees the
            # slice repeated, as the Swin-Unet does.
            x = x.expand(-1, self.in_chans, -1, -1)
        if self.is_channels_last:
            # A channels-last model fed a contiguous tensor would convert at every conv; convert once.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.decoder(*self.encoder(x))


def prepare_for_speed(model: UNet, channels_last: bool = True) -> UNet:
    """Put the U-Net in its fast layout (in place; returns the model for chaining).

    Channels-last (NHWC) lets oneDNN (CPU) and cuDNN (GPU) run the 3x3 convolutions without layout
    reorders, and is what bf16 / tensor-core kernels prefer. The logits are numerically the same as the
    contiguous path; they come back channels-last, which every PyTorch op accepts.
    """
    return set_channels_last(model, channels_last)


def _size_problem(side: int, args: dict) -> str | None:
    # Four 2x2 poolings, then four x2 upsamplings concatenated with the skips: any side not divisible by 16
    # gives skips and upsampled maps of different sizes.
    return None if side > 0 and side % 16 == 0 else "takes inputs whose side is a multiple of 16"


@register_model("unet", head="decoder.final.weight", size_problem=_size_problem)
def unet(num_classes: int = 9, in_chans: int = 1, width: float = 1.0) -> UNet:
    """The seed's U-Net, 24,898,953 parameters for 1 input channel and 9 classes (``width`` 1.0)."""
    return UNet(num_classes=num_classes, in_chans=in_chans, width=width)
