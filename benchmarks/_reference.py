"""The official code's ways of doing things, written out once for the benchmarks' side-by-side rows
(TransUNet / Swin-Unet ``train.py``, ``trainer.py``, ``utils.py``; reference_protocol.md §3).

* the training data path: a DataLoader over the slices with the per-sample SciPy ``RandomGenerator``;
* the training step: SGD (momentum 0.9, weight decay 1e-4), 0.4 CE + 0.6 Dice, poly learning rate,
  ``loss.item()`` every iteration;
* the per-case metric: ``calculate_metric_percase`` with MedPy (Dice, HD95 in voxels), and MedPy's ASSD /
  MONAI's surface Dice for the surface metrics.

organseg's own transcriptions of the reference arithmetic used in training and testing (``RandomGenerator``,
the reference inference loop, the official attention) live in the package; these are the surrounding loops the
package does not run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from organseg.data.augment import RandomGenerator, SliceDataset
from organseg.losses import DiceCELoss


def official_seed(seed: int = 1234) -> None:
    """The official scripts seed Python, NumPy and torch alike (1234 by default)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def official_loss(num_classes: int) -> nn.Module:
    """The official training loss: 0.4 cross-entropy + 0.6 Dice (organseg's DiceCELoss computes it)."""
    return DiceCELoss(num_classes, ce_weight=0.4, dice_weight=0.6)


def official_sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The official optimiser: plain SGD, momentum 0.9, weight decay 1e-4."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


def official_dataset(slices: Sequence[tuple[np.ndarray, np.ndarray]], size: int):
    """The slices through the reference ``RandomGenerator`` (per sample, SciPy), for a DataLoader."""
    return SliceDataset(slices, RandomGenerator((size, size)))


def official_train_rate(
    model: nn.Module,
    slices,
    num_classes: int,
    *,
    batch: int,
    warmup: int,
    iters: int,
    img: int,
    workers: int,
    device: str,
) -> float:
    """Images/s of the official trainer's loop (fp32), data loading inside the timed region as in training;
    ``warmup`` iterations first, untimed. The caller seeds (:func:`official_seed`) before building
    ``model``."""
    loader = DataLoader(
        official_dataset(slices, img),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device != "cpu",
        drop_last=True,
    )
    opt = official_sgd(model, 0.05)
    loss_fn = official_loss(num_classes)
    total = warmup + iters
    it, t0 = 0, 0.0
    while it < total:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = loss_fn(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for g in opt.param_groups:
                g["lr"] = 0.05 * (1 - it / 1000) ** 0.9
            loss.item()  # the reference logs every iteration
            it += 1
            if it == warmup:
                t0 = time.perf_counter()
            if it == total:
                break
    return batch * iters / (time.perf_counter() - t0)


def medpy_case(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """``calculate_metric_percase`` for classes 1..: (Dice, HD95) per class with MedPy, (1, 0) for a
    prediction without truth, (0, 0) for no prediction."""
    from medpy.metric import binary  # noqa: PLC0415 (MedPy is a dev extra, needed only for this row)

    out = []
    for i in range(1, num_classes):
        p, g = pred == i, gt == i
        if p.sum() > 0 and g.sum() > 0:
            out.append((binary.dc(p, g), binary.hd95(p, g)))
        elif p.sum() > 0:
            out.append((1, 0))
        else:
            out.append((0, 0))
    return np.array(out, dtype=np.float64)


def medpy_monai_surface(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing, tol: float
) -> np.ndarray:
    """(NSD from MONAI or NaN when it is not installed, ASSD from MedPy) per class present in both."""
    from medpy.metric import binary  # noqa: PLC0415 (MedPy is a dev extra, needed only for this row)

    try:
        from monai.metrics import compute_surface_dice  # noqa: PLC0415 (MONAI: an optional dev extra)
    except ImportError:
        compute_surface_dice = None

    out = np.full((num_classes - 1, 2), np.nan)
    for i in range(1, num_classes):
        p, g = pred == i, gt == i
        if not (p.any() and g.any()):
            continue
        out[i - 1, 1] = binary.assd(p, g, voxelspacing=spacing)
        if compute_surface_dice is not None:
            onehot = [torch.from_numpy(np.stack([~m, m])[None].astype(np.float32)) for m in (p, g)]
            out[i - 1, 0] = float(compute_surface_dice(*onehot, [tol], spacing=spacing)[0, 0])
    return out
