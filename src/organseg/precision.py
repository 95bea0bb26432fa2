"""One rule for ``--precision`` everywhere (training, validation, testing, prediction)."""

from __future__ import annotations

import contextlib

import torch

from organseg.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision name (None for fp32); ConfigError where the device cannot run it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        # fp16 needs loss scaling and has no fast CPU kernels; bf16 is the CPU's reduced precision.
        raise ConfigError("precision fp16 needs a CUDA device (it uses a gradient scaler); use bf16 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use fp16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for "bf16" / "fp16", a no-op for "fp32"."""
    dtype = autocast_dtype(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
