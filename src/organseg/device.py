"""One rule for ``--device`` / ``train.device`` everywhere (train, test, predict, compare, demo).

``auto`` takes the first CUDA device when this torch build and the machine have one, else the CPU; ``cpu``;
``cuda`` (under torchrun: the GPU of the process's local rank); ``cuda:N``. Anything else, or a CUDA request
that cannot be met, is one ConfigError that says why (a CPU-only torch build, no visible GPU, too few GPUs),
instead of the AssertionError torch raises on first use.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

from organseg.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(
    device: str | torch.device | None, *, local_rank: int | None = None, source: str = "--device"
) -> torch.device:
    """The torch device for a user's choice; ConfigError naming ``source`` (the option or configuration key)
    when the choice is malformed or this machine cannot provide it.

    ``local_rank``: the torchrun process's GPU for a bare ``cuda`` (and for ``auto``); None: GPU 0.
    """
    if isinstance(device, torch.device):
        device = str(device)
    pref = "auto" if device is None else str(device).strip()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(pref)
    if match is None:
        raise ConfigError(f"{source} {device!r}: expected {DEVICE_CHOICES}")
    if torch.version.cuda is None:
        raise ConfigError(
            f"{source} {device!r}: cuda requested but this torch build has no CUDA "
            f"(torch {torch.__version__}); use cpu or auto"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{source} {device!r}: torch {torch.__version__} has CUDA {torch.version.cuda} but sees no GPU "
            "(driver missing, or CUDA_VISIBLE_DEVICES empty?); use cpu or auto"
        )
    index = int(match.group(1)) if match.group(1) is not None else (local_rank or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{source} {device!r}: there is no GPU {index}; this machine shows {count} GPU(s)")
    return torch.device("cuda", index)


#: Where Linux describes the CPU (a module constant, so that tests can point it at a made-up file).
CPUINFO = Path("/proc/cpuinfo")


def cpu_info() -> tuple[str, frozenset[str]]:
    """This machine's CPU model name and instruction-set flags (from /proc/cpuinfo; elsewhere the name
    ``platform`` gives and no flags). The flags decide bf16 speed: AMX, AVX512-BF16 or neither."""
    model, flags = "", frozenset()
    try:
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:  # not Linux
        pass
    return model or platform.processor() or platform.machine(), flags
