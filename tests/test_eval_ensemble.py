"""Ensembles and mirror test-time augmentation: the mean of the members' softmax, flips exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import TINY_SWIN, make_volume, tiny_swin
from organseg.evaluation.tester import members_table
from organseg.formatting import MISSING
from organseg.inference.engine import MIRROR_FLIPS, SoftmaxAverage, averaged, predict_volume
from organseg.models import create_model
from organseg.models.unet import UNet

S = TINY_SWIN["img_size"]  # the tiny Swin-Unets' input size


def _probs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(net(x).float(), dim=1)


@pytest.fixture(scope="module")
def nets() -> list[nn.Module]:
    return [tiny_swin(seed=s) for s in range(3)]


def test_ensemble_is_the_mean_of_the_members_softmax(nets) -> None:
    x = torch.rand(3, 1, S, S, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = SoftmaxAverage(nets)(x)
    want = sum(_probs(n, x) for n in nets) / 3
    torch.testing.assert_close(out.exp(), want, rtol=0, atol=1e-6)
    assert torch.equal(torch.softmax(out, 1).argmax(1), want.argmax(1))


def test_mirror_tta_flips_exact(nets) -> None:
    net = nets[0]
    x = torch.rand(2, 1, S, S, generator=torch.Generator().manual_seed(2))
    want = (
        _probs(net, x)
        + _probs(net, x.flip(-2)).flip(-2)
        + _probs(net, x.flip(-1)).flip(-1)
        + _probs(net, x.flip(-2, -1)).flip(-2, -1)
    ) / 4
    with torch.no_grad():
        out = averaged([net], tta=True)(x)
    torch.testing.assert_close(out.exp(), want, rtol=0, atol=1e-6)
    assert MIRROR_FLIPS == ((), (-2,), (-1,), (-2, -1))


def test_tta_of_a_mirror_symmetric_network_changes_nothing() -> None:
    class Symmetric(nn.Module):  # per-pixel: flips commute with it, so TTA must give its own softmax
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    torch.manual_seed(3)
    net = Symmetric().eval()
    x = torch.rand(2, 1, S, S)
    with torch.no_grad():
        torch.testing.assert_close(averaged([net], tta=True)(x).exp(), _probs(net, x), rtol=0, atol=1e-6)


def test_one_model_without_tta_is_the_model_itself(nets) -> None:
    assert averaged(nets[:1]) is nets[0]  # the reference arithmetic, fp32 tie check and all
    assert isinstance(averaged(nets[:1], tta=True), SoftmaxAverage)
    with pytest.raises(ValueError, match="at least one"):
        SoftmaxAverage([])


def test_volume_prediction_with_ensemble_and_tta(nets) -> None:
    image = make_volume((2, 40, 30))
    members = [predict_volume(n, image, patch_size=S) for n in nets[:2]]
    ens = predict_volume(averaged(nets[:2]), image, patch_size=S)
    ens_loop = predict_volume(averaged(nets[:2]), image, patch_size=S, reference_loop=True)
    np.testing.assert_array_equal(ens, ens_loop)  # the batched path still equals the loop
    assert ens.shape == image.shape and ens.dtype == np.uint8
    tta = predict_volume(averaged(nets[:1], tta=True), image, patch_size=S)
    assert tta.shape == image.shape
    # Random networks: the average differs from at least one member somewhere (not a no-op).
    assert any((ens != m).any() for m in members)


def test_members_must_agree_on_classes() -> None:
    with pytest.raises(ValueError, match="disagree on the class count"):
        SoftmaxAverage([tiny_swin(4), tiny_swin(5, seed=1)])(torch.rand(1, 1, S, S))


def test_bf16_ensemble_switches_each_unet_to_channels_last_and_back() -> None:
    torch.manual_seed(4)
    a, b = (create_model("unet", num_classes=3, width=0.25).eval() for _ in range(2))
    assert isinstance(a, UNet) and not a.is_channels_last
    image = make_volume((2, 40, 30))
    pred = predict_volume(averaged([a, b], tta=True), image, patch_size=S, precision="bf16")
    assert pred.shape == image.shape
    assert not a.is_channels_last and not b.is_channels_last


def test_members_table_writes_a_missing_corrected_hd95_as_missing() -> None:
    # An organ missed in every case leaves the corrected mean HD95 undefined (None in summary.json): the
    # table of an ensemble or TTA test must say so, not crash on the number format.
    def summary(dice: float, hd95: float | None) -> dict:
        return {
            "checkpoint": "a.pt",
            "reference": {"mean_dice": dice, "mean_hd95": 12.5, "hd95_unit": "voxel"},
            "corrected": {"mean_dice": dice, "mean_hd95": hd95, "hd95_unit": "mm"},
        }

    table = members_table({**summary(0.5, None), "tta": True}, [summary(0.8123, None)])
    member, ensemble = table.splitlines()[2:]
    assert member == f"| member 1: a.pt | 81.23 | 12.50 | 81.23 | {MISSING} |"
    assert ensemble == f"| **the network + mirror TTA** | 50.00 | 12.50 | 50.00 | {MISSING} |"
