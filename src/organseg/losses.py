"""The reference training loss: weighted cross-entropy plus soft Dice.

The Dice term follows the official ``utils.DiceLoss`` exactly: softmax over classes, one-hot targets for
*every* class including background, sums over the whole batch and all pixels (not per sample), smooth 1e-5
in numerator and denominator, squared terms in the denominator, mean over classes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    smooth: float = 1e-5,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Batch-global soft Dice loss of the reference, averaged over ``num_classes`` classes.

    ``all_reduce`` (distributed training) sums the per-class sums over processes: the global batch counts.
    """
    # float32 even under autocast: the sums run over ~1e6 pixels and bf16 would lose the small organs.
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersect = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + onehot.sum(dims)  # onehot squared is onehot
    if all_reduce is not None:
        intersect, denom = all_reduce(intersect), all_reduce(denom)
    dice = (2 * intersect + smooth) / (denom + smooth)
    return (1 - dice).mean()


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice``; Swin-Unet uses 0.4 / 0.6, TransUNet 0.5 / 0.5.

    ``forward`` returns the total; ``components`` returns (total, ce, dice) for logging.
    """

    def __init__(
        self,
        num_classes: int,
        ce_weight: float = 0.4,
        dice_weight: float = 0.6,
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.all_reduce = all_reduce
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight

    def components(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = labels.long()
        ce = F.cross_entropy(logits.float(), labels)
        dice = soft_dice_loss(logits, labels, self.num_classes, all_reduce=self.all_reduce)
        return self.ce_weight * ce + self.dice_weight * dice, ce, dice

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.components(logits, labels)[0]
