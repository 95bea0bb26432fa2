"""Finding checkpoints, configurations and results in a run folder.

Layout (written by ``organseg train``)::

    RUN_DIR/config.yaml
    RUN_DIR/metrics.jsonl
    RUN_DIR/checkpoints/{best,last,epoch_N}.pt
    RUN_DIR/results/<split>_<checkpoint>/{summary.json, per_case.csv, per_case.json, reference_log.txt,
                                          overlay_slices.npz, nifti/}
    RUN_DIR/report.md, RUN_DIR/report/*.png      (organseg report)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from organseg.device import resolve_device  # noqa: F401 (re-exported: the rule lives in organseg.device)
from organseg.errors import CheckpointError, DataError

_CHECKPOINT_NAME = re.compile(r"^(best|last|epoch_\d+)$")


@dataclass(frozen=True)
class RunTarget:
    """What ``organseg test`` evaluates: a checkpoint file, and the run folder it belongs to (if any)."""

    checkpoint_path: Path
    checkpoint_name: str
    run_dir: Path | None


def resolve_target(target: str | Path, checkpoint: str | None = None) -> RunTarget:
    """A run folder (then ``checkpoint`` picks best / last / epoch_N; default best.pt, else last.pt, as the
    reference test script prefers ``best_model.pth``) or a checkpoint file."""
    path = Path(target)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file")
    if path.is_file():
        if checkpoint is not None:
            raise CheckpointError(f"{path}: a checkpoint file; --checkpoint only picks one in a run folder")
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        if run_dir is not None and not (run_dir / "config.yaml").is_file():
            run_dir = None
        return RunTarget(path, path.stem, run_dir)
    ckpt_dir = path / "checkpoints"
    available = sorted(p.stem for p in ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    if checkpoint is not None:
        if not _CHECKPOINT_NAME.match(checkpoint):
            raise CheckpointError(f"--checkpoint {checkpoint!r}: expected best, last or epoch_N")
        names = [checkpoint]
    else:
        names = ["best", "last"]
    for name in names:
        file = ckpt_dir / f"{name}.pt"
        if file.is_file():
            return RunTarget(file, name, path)
    raise CheckpointError(
        f"{ckpt_dir}: no {' or '.join(n + '.pt' for n in names)}"
        + (f" (available: {', '.join(available)})" if available else " (no checkpoints: not a run folder?)")
    )


def results_dir(target: RunTarget, split: str, out: str | Path | None = None) -> Path:
    """``RUN_DIR/results/<split>_<checkpoint>/``; beside a bare checkpoint file when there is no run."""
    if out is not None:
        return Path(out)
    base = target.run_dir if target.run_dir is not None else target.checkpoint_path.parent
    return base / "results" / f"{split}_{target.checkpoint_name}"


def checkpoint_patch_size(ckpt: dict[str, Any], default: int = 224) -> tuple[int, int]:
    """The network input size a checkpoint was trained with: ``config.train.img_size``, else the model's
    ``img_size`` argument, else ``default``."""
    size = (ckpt.get("config") or {}).get("train", {}).get("img_size")
    if size is None:
        size = (ckpt.get("model_args") or {}).get("img_size", default)
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl``; a damaged line raises DataError naming the line."""
    from organseg.fileio import read_text

    path = Path(path)
    records = []
    for n, line in enumerate(read_text(path, "metrics log").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not a JSON record ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line")
        records.append(rec)
    return records
