"""Checkpoint files: one self-describing format for training, testing and prediction.

A checkpoint is a dict saved with ``torch.save`` and read with ``weights_only=True``::

    format        "organseg-checkpoint/1"
    model         state dict (reference key names)
    model_name    registry name, e.g. "swin_unet"
    model_args    constructor overrides used to build it (plain data)
    class_names   list of class names, index 0 background
    preprocessing plain dict describing how raw intensities were mapped to [0, 1] (see organseg.data)
    config        the resolved run configuration (plain data), may be {}
    ...           training state (optimizer, scheduler, RNG, epoch, iteration) when written by ``train``

Everything is written atomically through :mod:`organseg.fileio`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from organseg.errors import CheckpointError
from organseg.fileio import atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401 (earlier home)

FORMAT = "organseg-checkpoint/1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`organseg.fileio.atomic_write` (temporary file, mode, clean-up)."""

    def write(tmp: Path) -> None:
        # Through a Python file object: a failed write (disk full) then raises OSError, which atomic_write
        # turns into one line naming the checkpoint, instead of torch's multi-line RuntimeError.
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load an organseg checkpoint safely; a missing, corrupt or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / non-torch files
        # torch's unpickling errors run over many lines; the first one says what is wrong.
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an organseg checkpoint (expected a dict with format={FORMAT!r}); "
            "official Swin-Unet or ImageNet weights are loaded with organseg.models.pretrained"
        )
    return obj


def make_checkpoint(
    model: nn.Module,
    *,
    model_name: str,
    model_args: dict | None = None,
    class_names: list[str] | tuple[str, ...] = (),
    preprocessing: dict | None = None,
    config: dict | None = None,
    **extra: Any,
) -> dict:
    """The dict :func:`read_checkpoint` returns; ``extra`` carries training state."""
    module = model.module if hasattr(model, "module") else model  # DDP / DataParallel
    module = getattr(module, "_orig_mod", module)  # torch.compile
    return {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "model_name": model_name,
        "model_args": dict(model_args or {}),
        "class_names": list(class_names),
        "preprocessing": dict(preprocessing or {}),
        "config": dict(config or {}),
        **extra,
    }


def model_from_checkpoint(
    ckpt: dict | str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the network a checkpoint describes and load its weights strictly.

    Returns (model in eval mode, checkpoint dict)."""
    from organseg.models import create_model

    if not isinstance(ckpt, dict):
        ckpt = read_checkpoint(ckpt, map_location)
    model = create_model(ckpt["model_name"], **ckpt.get("model_args", {}))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        more_m = "..." if len(missing) > 5 else ""
        more_u = "..." if len(unexpected) > 5 else ""
        raise CheckpointError(
            f"checkpoint does not fit {ckpt['model_name']}: missing keys {missing[:5]}{more_m}, "
            f"unexpected keys {unexpected[:5]}{more_u}"
        )
    return model.eval(), ckpt
