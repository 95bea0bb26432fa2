"""Validation during training: the dataset's ``val`` volumes (never ``test``), reference-protocol metrics.

Cases are shared out over processes and the per-case results gathered, so a torchrun job validates N times
faster; every process returns the same record.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.distributed as dist
from torch import nn

from organseg.data.base import SegmentationDataset
from organseg.inference.engine import predict_turned, volume_turn
from organseg.metrics import case_metrics
from organseg.training.distributed import DistEnv


def validate(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    img_size: int,
    batch_size: int,
    precision: str,
    env: DistEnv,
    max_cases: int | None = None,
) -> dict[str, Any] | None:
    """Mean and per-class (Dice, HD95) over the validation volumes, or None when the dataset has none."""
    case_ids = dataset.case_ids("val")[:max_cases]
    if not case_ids:
        return None
    was_training = model.training
    model.eval()
    mine: dict[str, np.ndarray] = {}
    for case_id in case_ids[env.rank :: env.world_size]:
        vol = dataset.volume(case_id)
        # in the orientation of the training slices, as test and predict give volumes to the network
        turn = volume_turn(vol.meta, dataset.orientation, str(vol.meta.get("source", case_id)))
        pred = predict_turned(model, vol.image, turn, img_size, batch_size, precision, env.device)
        # Reference protocol: voxel units, spacing ignored, the (1, 0) / (0, 0) edge rules.
        mine[case_id] = case_metrics(np.asarray(pred), vol.label, dataset.num_classes, protocol="reference")
    model.train(was_training)
    if env.distributed:
        gathered: list[dict[str, np.ndarray]] = [{} for _ in range(env.world_size)]
        dist.all_gather_object(gathered, mine)
        mine = {k: v for part in gathered for k, v in part.items()}
    per_case = np.stack([mine[c] for c in case_ids])  # (cases, classes - 1, 2)
    per_class = per_case.mean(axis=0)
    names = list(dataset.class_names[1:])
    return {
        "mean_dice": float(per_class[:, 0].mean()),
        "mean_hd95": float(per_class[:, 1].mean()),
        "per_class": {
            n: {"dice": float(d), "hd95": float(h)} for n, (d, h) in zip(names, per_class, strict=True)
        },
        "cases": len(case_ids),
    }
