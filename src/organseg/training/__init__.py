"""Training: ``train(config, data, out)`` and what it is made of.

``config``       presets, the schema, ``model_args`` / ``check_network``
``schedule``     optimizers, learning-rate schedules, the run length
``budget``       ``TimeBudget``: the time budget and the horizon fitted to it
``loop``         ``train``, the ``Trainer`` (seams: build_optimizer, build_loss, lr_at, step, validate, save)
``data``         the batches (``TrainBatches``); ``validation`` the per-epoch validation
``distributed``  torchrun set-up, seeds, all-reduces; ``runlog`` metrics.jsonl, env.json, TensorBoard
"""

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
