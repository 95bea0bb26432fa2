"""One rule for ``--precision`` everywhere (training, validation, testing, prediction), and the one answer to
"is bf16 fast here?" (:func:`fast_bf16`), which ``--precision auto`` of ``test`` and ``predict`` follows."""

from __future__ import annotations

import contextlib

import torch

from organseg.device import cpu_info
from organseg.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: What ``test`` and ``predict`` take: a precision, or ``auto`` (:func:`resolve_precision`).
INFERENCE_PRECISIONS: tuple[str, ...] = ("auto", *PRECISIONS)
#: The CPU instruction-set flags (``/proc/cpuinfo``) with native bf16 matrix products, fastest first. Without
#: one, oneDNN emulates bf16 and it is slower than fp32 (docs/training.md).
CPU_BF16_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


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


def fast_bf16(device: torch.device) -> str | None:
    """Why bf16 is fast on ``device``, in words (``"CPU has avx512_bf16"``), or None where it is not.

    CUDA: compute capability 8.0 or newer (Ampere on; ``torch.cuda.is_bf16_supported`` also says yes where
    bf16 is only emulated). CPU: a flag of :data:`CPU_BF16_FLAGS` in ``/proc/cpuinfo``
    (:func:`organseg.device.cpu_info`) and a torch build with oneDNN, whose kernels use them. Anything else
    (no flags, not Linux, another device type): None."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return f"{torch.cuda.get_device_name(device)} has bf16 (compute capability {major}.{minor})"
        return None
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    _, flags = cpu_info()
    found = next((f for f in CPU_BF16_FLAGS if f in flags), None)
    return f"CPU has {found}" if found else None


def resolve_precision(
    precision: str, device: torch.device, *, fp32_only: str | None = None
) -> tuple[str, str]:
    """(the precision to run, why it was chosen, in words) for a ``--precision`` of ``test`` or ``predict``.

    ``auto``: bf16 where :func:`fast_bf16` says the hardware has it, else fp32; always fp32 when
    ``fp32_only`` gives a reason (an ONNX model, the reference loop). An explicit precision is checked for
    ``device`` (:func:`autocast_dtype`) and kept. ConfigError for any other name."""
    if precision not in INFERENCE_PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
    if precision != "auto":
        try:
            autocast_dtype(precision, device)
        except ConfigError as exc:
            raise ConfigError(f"--precision {precision}: {exc}") from None
        return precision, "as requested"
    if fp32_only:
        return "fp32", f"auto: {fp32_only}"
    why = fast_bf16(device)
    if why is None:
        what = "CPU" if device.type == "cpu" else str(device)
        flags = "/".join(CPU_BF16_FLAGS) if device.type == "cpu" else "compute capability 8.0"
        return "fp32", f"auto: the {what} has no fast bf16 (no {flags})"
    return "bf16", f"auto: {why}"
