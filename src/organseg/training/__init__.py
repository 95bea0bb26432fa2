"""The training loop, configuration presets, checkpoints and distributed set-up."""

from organseg.training.config import (
    DEFAULTS,
    apply_overrides,
    effective_lr,
    list_presets,
    load_config,
    resolve_config,
)
from organseg.training.loop import TrainingDiverged, train
from organseg.training.runlog import read_metrics
from organseg.training.schedule import poly_lr

__all__ = [
    "DEFAULTS",
    "TrainingDiverged",
    "apply_overrides",
    "effective_lr",
    "list_presets",
    "load_config",
    "poly_lr",
    "read_metrics",
    "resolve_config",
    "train",
]
