"""Volume inference: the batched path gives the reference loop's predictions; the loop is the reference's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom
from torch import nn

from helpers import make_volume, tiny_swin
from organseg.errors import ConfigError
from organseg.inference.engine import _near_tie, predict_volume
from organseg.models import create_model
from organseg.models.unet import prepare_for_speed


def seed_unet(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("unet", num_classes=num_classes)
    # A random U-Net with fresh BatchNorm statistics predicts one class everywhere; a wider head gives varied
    # labels, so the comparison below means something.
    nn.init.normal_(model.decoder.final.weight, std=1.0)
    return model.eval()


def reference_test_single_volume(image: np.ndarray, net: nn.Module, patch_size=(64, 64)) -> np.ndarray:
    """TransUNet / Swin-Unet ``utils.test_single_volume``'s prediction part, transcribed (CPU)."""
    prediction = np.zeros_like(image)
    for ind in range(image.shape[0]):
        slc = image[ind, :, :]
        x, y = slc.shape[0], slc.shape[1]
        if x != patch_size[0] or y != patch_size[1]:
            slc = zoom(slc, (patch_size[0] / x, patch_size[1] / y), order=3)
        inp = torch.from_numpy(slc).unsqueeze(0).unsqueeze(0).float()
        net.eval()
        with torch.no_grad():
            outputs = net(inp)
            out = torch.argmax(torch.softmax(outputs, dim=1), dim=1).squeeze(0)
            out = out.cpu().detach().numpy()
            if x != patch_size[0] or y != patch_size[1]:
                pred = zoom(out, (x / patch_size[0], y / patch_size[1]), order=0)
            else:
                pred = out
            prediction[ind] = pred
    return prediction


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    return tiny_swin()


@pytest.mark.parametrize("shape", [(5, 50, 37), (3, 64, 64), (4, 130, 97)])
def test_batched_equals_reference_loop_swin(swin: nn.Module, shape) -> None:
    img = make_volume(shape)
    ref = predict_volume(swin, img, 64, reference_loop=True)
    assert ref.dtype == np.uint8 and ref.shape == img.shape
    np.testing.assert_array_equal(ref, reference_test_single_volume(img, swin))
    assert len(np.unique(ref)) > 1, "the test model must predict more than one class"
    for batch_size in (3, 16) if shape[0] > 3 else (16,):
        stats: dict = {}
        np.testing.assert_array_equal(predict_volume(swin, img, (64, 64), batch_size, stats=stats), ref)
        assert stats["slices"] == shape[0]


def test_near_ties_are_rerun_alone(swin: nn.Module) -> None:
    # This volume has a pixel whose two largest logits differ by 4e-8: in a batch of 4 its argmax flips
    # (measured), so without the re-run the batched prediction would differ from the reference here.
    img = make_volume((4, 130, 97))
    stats: dict = {}
    predict_volume(swin, img, 64, batch_size=4, stats=stats)
    assert stats["rerun_slices"] >= 1
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 0] = 1.0
    logits[1, 1, 2, 2] = 1.0 - 1e-6  # a near-tie in slice 1 only
    np.testing.assert_array_equal(_near_tie(logits).numpy(), [False, True])


def test_batched_equals_reference_loop_unet() -> None:
    model = seed_unet()
    img = make_volume((3, 40, 29), seed=1)
    ref = predict_volume(model, img, 32, reference_loop=True)
    np.testing.assert_array_equal(ref, reference_test_single_volume(img, model, (32, 32)))
    assert len(np.unique(ref)) > 1
    np.testing.assert_array_equal(predict_volume(model, img, 32, batch_size=2), ref)


def test_float64_input_zoomed_like_the_reference(swin: nn.Module) -> None:
    # The reference zooms in the input's dtype and casts to float32 afterwards.
    img = make_volume((2, 45, 45)).astype(np.float64)
    np.testing.assert_array_equal(predict_volume(swin, img, 64), reference_test_single_volume(img, swin))


def test_bf16_runs_and_mostly_agrees(swin: nn.Module) -> None:
    img = make_volume((3, 64, 64))
    fp32 = predict_volume(swin, img, 64)
    bf16 = predict_volume(swin, img, 64, precision="bf16")
    assert bf16.shape == fp32.shape and bf16.dtype == fp32.dtype
    assert (bf16 == fp32).mean() > 0.8


def test_bf16_unet_runs_channels_last_and_gets_its_layout_back() -> None:
    model = seed_unet()
    img = make_volume((3, 40, 29), seed=1)
    fp32 = predict_volume(model, img, 32)
    bf16 = predict_volume(model, img, 32, precision="bf16")
    assert not model.is_channels_last  # the caller's layout is restored
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same bf16 function in the contiguous layout
        plain = predict_volume(model, img, 32, precision="fp32")
    assert (bf16 == plain).mean() > 0.99
    assert (bf16 == fp32).mean() > 0.9
    prepare_for_speed(model)
    predict_volume(model, img, 32, precision="bf16")
    assert model.is_channels_last  # a model already in the fast layout stays there


def test_model_mode_and_grad_state_are_kept(swin: nn.Module) -> None:
    swin.train()
    try:
        predict_volume(swin, make_volume((1, 64, 64)), 64)
        assert swin.training
    finally:
        swin.eval()


class _Constant(nn.Module):
    def __init__(self, num_classes: int, shrink: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shrink = shrink
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        out = torch.zeros(b, self.num_classes, h // 2 if self.shrink else h, w)
        out[:, -1] = 1.0
        return out


def test_many_classes_use_int64() -> None:
    pred = predict_volume(_Constant(300), np.zeros((2, 8, 8), np.float32), 8)
    assert pred.dtype == np.int64 and (pred == 299).all()


def test_bad_input_and_settings() -> None:
    model = _Constant(3)
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        predict_volume(model, np.zeros((8, 8), np.float32), 8)
    with pytest.raises(ValueError, match="empty"):
        predict_volume(model, np.zeros((0, 8, 8), np.float32), 8)
    with pytest.raises(ConfigError, match="precision"):
        predict_volume(model, np.zeros((1, 8, 8), np.float32), 8, precision="int8")
    with pytest.raises(ConfigError, match="CUDA"):
        predict_volume(model, np.zeros((1, 8, 8), np.float32), 8, precision="fp16", device="cpu")
    with pytest.raises(ConfigError, match="batch_size"):
        predict_volume(model, np.zeros((1, 8, 8), np.float32), 8, batch_size=0)
    with pytest.raises(ValueError, match="logits"):
        predict_volume(_Constant(3, shrink=True), np.zeros((1, 8, 8), np.float32), 8)


def test_fp32_switches_tf32_off_on_cuda_and_restores_it() -> None:
    from organseg.inference.engine import _true_fp32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with _true_fp32(torch.device("cuda")):  # only flips flags: runs without a GPU
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with _true_fp32(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
