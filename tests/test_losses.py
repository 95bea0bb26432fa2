import pytest
import torch

from organseg.losses import DiceCELoss, soft_dice_loss


def test_matches_reference_loss(golden_dir):
    ref = torch.load(golden_dir / "loss_reference.pt", weights_only=True)
    loss = DiceCELoss(num_classes=9, ce_weight=0.4, dice_weight=0.6)
    total, ce, dice = loss.components(ref["logits"], ref["labels"])
    assert abs(ce.item() - ref["ce"].item()) <= 1e-6
    assert abs(dice.item() - ref["dice"].item()) <= 1e-6
    assert abs(total.item() - ref["loss_0.4ce_0.6dice"].item()) <= 1e-6
    assert torch.equal(loss(ref["logits"], ref["labels"]), total)


def test_dice_is_batch_global_not_per_sample():
    # One sample holds class 1, the other does not. A per-sample mean would give a different number.
    logits = torch.zeros(2, 2, 4, 4)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2] = 1
    p = 0.5  # softmax of equal logits
    n1, n0 = 8, 24
    d1 = (2 * p * n1 + 1e-5) / (p * p * 32 + n1 + 1e-5)
    d0 = (2 * p * n0 + 1e-5) / (p * p * 32 + n0 + 1e-5)
    expected = ((1 - d0) + (1 - d1)) / 2
    assert soft_dice_loss(logits, labels, 2).item() == pytest.approx(expected, abs=1e-6)


def test_perfect_prediction_has_near_zero_dice_loss():
    labels = torch.randint(0, 3, (2, 8, 8))
    logits = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 100
    assert soft_dice_loss(logits, labels, 3).item() < 1e-6


def test_gradients_flow_under_bf16_autocast():
    logits = torch.randn(2, 9, 16, 16, requires_grad=True)
    labels = torch.randint(0, 9, (2, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DiceCELoss(9)(logits * 1.0, labels)
    assert out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(logits.grad).all()
