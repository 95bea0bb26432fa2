"""What a training run records: its environment (``env.json``) and its metric log (``metrics.jsonl`` and
TensorBoard events). The file names and the reader are :class:`organseg.run.RunDir`'s.

Only the main process writes. ``metrics.jsonl`` grows by whole lines (one ``write`` each, so a killed run
leaves at most a cut last line, which the reader ignores); on resume it is rewritten atomically without the
records past the checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import organseg
from organseg.device import cpu_info
from organseg.run import RunDir


def _version(dist_name: str) -> str | None:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def git_revision(path: Path) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the git tree holding ``path``, or nulls outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with its bf16 instructions (what decides bf16 speed: AMX,
    AVX512-BF16 or neither), e.g. ``AMD EPYC (avx512_bf16)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)

    name, flags = cpu_info()
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name} ({', '.join(bf16)})" if bf16 else name


def environment(device: torch.device, precision: str, world_size: int) -> dict[str, Any]:
    """Everything needed to tell two runs' set-ups apart: versions, git revision, hardware, command line."""

    return {
        "organseg": organseg.__version__,
        "git": git_revision(Path(organseg.__file__).resolve().parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {
            name: _version(name) for name in ("torch", "numpy", "scipy", "h5py", "SimpleITK", "medpy")
        },
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "precision": precision,
        "command": sys.argv,
        "cwd": os.getcwd(),  # what a relative data.root or --out of the command line is relative to
    }


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (the optional extra [tensorboard])
    except ImportError:  # tensorboard is optional: pip install organseg[tensorboard]
        return None
    return SummaryWriter(log_dir=str(log_dir))


class RunLog:
    """Appends metric records to ``metrics.jsonl`` and mirrors scalars to TensorBoard when installed."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_iteration: int | None = None) -> None:
        self.run = RunDir(run_dir)
        self.path = self.run.metrics_file
        self.enabled = enabled
        self._fh = None
        self._tb = None
        if not enabled:
            return
        if resume_iteration is None:
            self.run.write_metrics([])
        else:
            self._truncate(resume_iteration)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the run)
        self._tb = _summary_writer(self.run.tensorboard_dir)

    def _truncate(self, iteration: int) -> None:
        """Drop the records a killed run wrote after its last checkpoint: they are about to be redone."""
        records = self.run.metrics() if self.path.is_file() else []
        self.run.write_metrics([r for r in records if r.get("iter", 0) <= iteration])

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            step = record["iter"]
            if record["kind"] == "train":
                for key in ("loss", "ce", "dice", "lr"):
                    self._tb.add_scalar(f"train/{key}", record[key], step)
            else:
                self._tb.add_scalar("val/mean_dice", record["mean_dice"], step)
                self._tb.add_scalar("val/mean_hd95", record["mean_hd95"], step)
                for name, m in record["per_class"].items():
                    self._tb.add_scalar(f"val_dice/{name}", m["dice"], step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (optionally only ``kind`` "train" or "val"); the reader is
    :meth:`organseg.run.RunDir.metrics`."""
    return RunDir(run_dir).metrics(kind)
