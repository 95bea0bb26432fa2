"""What ``organseg test`` / ``export`` evaluate: a checkpoint file, or one picked in a run folder (whose
layout is :class:`organseg.run.RunDir`'s), and where its results go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from organseg.device import resolve_device  # noqa: F401 (re-exported: the rule lives in organseg.device)
from organseg.errors import CheckpointError
from organseg.run import CHECKPOINT_NAME, CHECKPOINTS, RunDir


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
        run_dir = path.parent.parent if path.parent.name == CHECKPOINTS else None
        if run_dir is not None and not RunDir(run_dir).is_run():
            run_dir = None
        return RunTarget(path, path.stem, run_dir)
    run = RunDir(path)
    ckpt_dir = run.checkpoints_dir
    available = run.checkpoints()
    if checkpoint is not None:
        if not CHECKPOINT_NAME.match(checkpoint):
            raise CheckpointError(f"--checkpoint {checkpoint!r}: expected best, last or epoch_N")
        names = [checkpoint]
    else:
        names = ["best", "last"]
    for name in names:
        file = run.checkpoint(name)
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
    return RunDir(base).results(split, target.checkpoint_name).path


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
