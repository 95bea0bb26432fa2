"""The Trainer's seams for recipe variants (build_optimizer, build_loss, lr_at, step, validate, save): each
works on a Trainer just built, before fit(), and what resume depends on stays with the loop whatever a variant
overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_config, tiny_dataset
from organseg.checkpoint import read_checkpoint
from organseg.losses import DiceCELoss
from organseg.training import read_metrics
from organseg.training.config import resolve_config
from organseg.training.distributed import STREAM_MODEL, DistEnv, derive_seed
from organseg.training.loop import Trainer

N_SLICES = 12  # batch 4: 3 iterations per epoch


def _trainer(run: Path, cls: type[Trainer] = Trainer, **train) -> Trainer:
    cfg = resolve_config(tiny_config(train=train))
    return cls(cfg, tiny_dataset(N_SLICES), run, DistEnv(), None)


def test_the_seams_work_on_a_trainer_just_built(tmp_path):
    run = tmp_path / "run"
    trainer = _trainer(run)
    assert trainer.lr_at(0) == 0.05 and trainer.iteration == 0 and trainer.stopped == "completed"
    assert isinstance(trainer.build_optimizer(), torch.optim.SGD)
    assert isinstance(trainer.build_loss(), DiceCELoss)
    record = trainer.validate(0)
    assert record is not None and (record["kind"], record["iter"], record["cases"]) == ("val", 0, 2)
    images, labels = next(iter(trainer.batches.epoch(0)))
    loss, ce, dice = trainer.step(images, labels)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.4 * ce.item() + 0.6 * dice.item())
    trainer.save("last.pt", full=True)
    assert read_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 0
    assert not (run / "metrics.jsonl").exists()  # nothing is recorded before fit() opens the run's log


def test_fit_sets_no_attribute_that_init_did_not(tmp_path):
    trainer = _trainer(tmp_path / "run", max_iterations=2, time_budget_min=60.0)
    before = set(vars(trainer))
    trainer.fit()
    assert set(vars(trainer)) == before


def test_a_variant_overriding_step_still_gets_the_per_iteration_seed(tmp_path):
    drawn: list[tuple[int, float]] = []

    class OwnStep(Trainer):
        def step(self, images, labels):  # a variant that knows nothing of the seeding
            drawn.append((self.iteration, torch.rand(1).item()))
            return super().step(images, labels)

    _trainer(tmp_path / "run", OwnStep, max_iterations=4).fit()
    expected = []
    for iteration in range(4):
        torch.manual_seed(derive_seed(1234, STREAM_MODEL, iteration, 0))
        expected.append((iteration, torch.rand(1).item()))
    assert drawn == expected


def test_a_variant_loss_from_build_loss_is_the_one_trained_with(tmp_path):
    class CountingLoss(DiceCELoss):
        calls = 0

        def components(self, logits, labels):
            CountingLoss.calls += 1
            return super().components(logits, labels)

    class CrossEntropyOnly(Trainer):
        def build_loss(self):
            return CountingLoss(self.dataset.num_classes, ce_weight=1.0, dice_weight=0.0)

    run = tmp_path / "run"
    trainer = _trainer(run, CrossEntropyOnly, max_iterations=2)
    assert isinstance(trainer.loss_fn, CountingLoss)
    trainer.fit()
    assert CountingLoss.calls == 2
    records = read_metrics(run, "train")
    assert len(records) == 2 and all(r["loss"] == pytest.approx(r["ce"]) for r in records)
