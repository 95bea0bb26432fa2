"""The optimisation recipe's arithmetic: optimizers, learning-rate schedules and the run's length. Pure
functions of the configuration's ``train`` section, so that a variant changes them in one place and the tests
check them without training. The horizon a time budget fits is :mod:`organseg.training.budget`'s."""

from __future__ import annotations

import math

import torch


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """The reference schedule: after step ``iteration`` (0-based) the LR becomes
    ``base_lr * (1 - iteration / max_iterations) ** power``. Steps 0 and 1 therefore both use ``base_lr``."""
    return base_lr * (1.0 - iteration / max_iterations) ** power


def scheduled_lr(t: dict, base_lr: float, step: int, max_iterations: int) -> float:
    """The learning rate of step ``step`` (0-based) under ``train.schedule`` and ``train.warmup_iterations``.

    Warm-up: step s < W uses ``base_lr * (s + 1) / W``. ``poly`` without warm-up is the reference exactly:
    its LR is updated after each step from that step's index, so step s >= 1 uses ``poly_lr(base_lr, s - 1)``
    and steps 0 and 1 both use ``base_lr``; after a warm-up the poly curve spans the remaining steps.
    ``cosine`` decays from ``base_lr`` after the warm-up to 0 at ``max_iterations``.
    """
    warm = t["warmup_iterations"]
    if step < warm:
        return base_lr * (step + 1) / warm
    if t["schedule"] == "cosine":
        span = max(max_iterations - warm, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))
    if warm == 0:
        return poly_lr(base_lr, max(step - 1, 0), max_iterations, t["poly_power"])
    span = max_iterations - warm
    return poly_lr(base_lr, min(step - warm, span - 1), span, t["poly_power"])


def run_length(t: dict, iterations_per_epoch: int) -> int:
    """A run's length in iterations, the horizon of its schedule: ``budget_images`` (ceil over the global
    batch: equal images seen, whatever the batch), else ``max_iterations``, else the horizon fitted to
    ``time_budget_min`` (``fitted_iterations``), else ``max_epochs`` epochs."""
    if t.get("budget_images"):
        return math.ceil(t["budget_images"] / t["batch_size"])
    return t["max_iterations"] or t.get("fitted_iterations") or t["max_epochs"] * iterations_per_epoch


def is_save_epoch(epoch: int, max_epochs: int, save_interval: int = 50) -> bool:
    """The reference cadence of ``epoch_N`` files (0-based N): past half-way every ``save_interval`` epochs,
    and the last epoch; 150 epochs give epoch_99 and epoch_149."""
    return (epoch > max_epochs // 2 and (epoch + 1) % save_interval == 0) or epoch == max_epochs - 1


def make_optimizer(params, t: dict, lr: float) -> torch.optim.Optimizer:
    """``train.optimizer``: the reference SGD (momentum, L2 weight decay) or AdamW (decoupled weight decay,
    torch's default betas), fused where this torch has the kernel."""
    if t["optimizer"] == "sgd":
        return make_sgd(params, lr, t["momentum"], t["weight_decay"])
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=t["weight_decay"], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=t["weight_decay"])


def make_sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """The reference SGD, fused where this torch has the fused kernel (CPU and CUDA since 2.4): the same
    update in one pass over the parameters instead of four (timings in docs/training.md), equal to the loop
    implementation (tests/test_train_loop.py)."""
    params = list(params)
    try:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
