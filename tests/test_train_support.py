"""Shared pieces of the training tests: a tiny registered network, a tiny dataset, a tiny configuration.

Subprocess scripts (SIGKILL resume, torchrun) import this module too, so everything here is importable
without pytest fixtures. It holds one self-check so that pytest collects it harmlessly.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from organseg.data.base import ArrayDataset, Volume
from organseg.models import list_models, register_model

TINY = "tiny_train_test_net"
SIZE = 32


class TinySegNet(nn.Module):
    """Two 3x3 convs with GroupNorm (no batch statistics, so a 2-process run can match one process exactly)
    and dropout (so the tests see whether the random stream is reproduced)."""

    def __init__(self, num_classes: int = 3, in_chans: int = 1, width: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "in_chans": in_chans, "width": width, "dropout": dropout}
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1),
            nn.GroupNorm(2, width),
            nn.ReLU(),
            nn.Dropout2d(dropout),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


if TINY not in list_models():

    @register_model(TINY)
    def tiny_train_test_net(num_classes: int = 3, in_chans: int = 1, width: int = 8, dropout: float = 0.1):
        return TinySegNet(num_classes, in_chans, width, dropout)


def make_slice(rng: np.random.Generator, h: int = SIZE, w: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with two bright rectangles labelled 1 and 2."""
    label = np.zeros((h, w), np.int64)
    r, c = rng.integers(2, h // 2), rng.integers(2, w // 2)
    label[r : r + h // 4, c : c + w // 4] = 1
    label[h // 2 + 2 : h - 3, w // 2 : w - 4] = 2
    image = (0.2 * rng.random((h, w)) + 0.35 * label).astype(np.float32)
    return image.clip(0, 1), label


def tiny_dataset(
    n_slices: int = 16, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((SIZE, SIZE),)
) -> ArrayDataset:
    """Training slices (sizes cycled), two validation volumes, one *test* volume."""
    rng = np.random.default_rng(seed)
    slices = [make_slice(rng, *sizes[i % len(sizes)]) for i in range(n_slices)]

    def volume(case_id: str, depth: int) -> Volume:
        pairs = [make_slice(rng) for _ in range(depth)]
        return Volume(case_id, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))

    volumes = {"val": [volume("val_a", 3), volume("val_b", 2)], "test": [volume("test_a", 2)]}
    return ArrayDataset(slices, volumes, class_names=["background", "box", "bar"], name="tiny")


BASE_CONFIG = {
    "model": {"name": TINY, "args": {}},
    "train": {
        "img_size": SIZE,
        "batch_size": 4,
        "base_lr": 0.05,
        "max_epochs": 3,
        "augment": "batched",
        "progress": False,
        "threads": 1,
    },
    "val": {"every": 1, "batch_size": 4},
    "checkpoint": {"save_interval": 1},
}


def tiny_config(**sections: dict) -> dict:
    """BASE_CONFIG with ``section={key: value}`` updates."""
    cfg = copy.deepcopy(BASE_CONFIG)
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def state_dict_of(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_tiny_pieces_work():
    ds = tiny_dataset(4)
    assert ds.num_classes == 3 and len(ds.train_slices()) == 4 and ds.case_ids("val") == ["val_a", "val_b"]
    from organseg.models import create_model

    out = create_model(TINY, num_classes=3)(torch.zeros(2, 1, SIZE, SIZE))
    assert out.shape == (2, 3, SIZE, SIZE)
