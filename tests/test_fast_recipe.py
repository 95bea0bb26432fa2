"""The time-to-accuracy recipe: optimizer and schedule choices, the warm-up, the fast presets, and a time
budget that fits the schedule's horizon to the minutes (recorded in the run's config, kept on resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import organseg.training.budget as budget
import organseg.training.loop as loop
from helpers import state_dict_of, tiny_config, tiny_dataset
from organseg.checkpoint import read_checkpoint
from organseg.errors import ConfigError
from organseg.training import poly_lr, read_metrics, train
from organseg.training.budget import FIT_SKIP, FIT_WINDOW, fit_horizon
from organseg.training.config import DEFAULTS, config_differences, load_config, resolve_config
from organseg.training.schedule import make_optimizer, scheduled_lr

N_SLICES, IPE, EPOCHS = 12, 3, 3


def _t(**changes) -> dict:
    return {**DEFAULTS["train"], **changes}


def test_poly_without_warmup_is_the_reference_schedule_exactly():
    t, total = _t(), 10
    ours = [scheduled_lr(t, 0.05, s, total) for s in range(total)]
    assert ours == [0.05] + [poly_lr(0.05, i, total, 0.9) for i in range(total - 1)]


def test_warmup_then_cosine_reaches_zero_at_the_horizon():
    t, base, total = _t(schedule="cosine", warmup_iterations=4), 1e-3, 20
    lrs = [scheduled_lr(t, base, s, total) for s in range(total + 1)]
    assert lrs[:4] == pytest.approx([base * k / 4 for k in (1, 2, 3, 4)])
    assert lrs[4] == base and lrs[total] == pytest.approx(0.0, abs=1e-18)
    assert lrs[12] == pytest.approx(base / 2)  # half-way through the decay
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert scheduled_lr(t, base, total + 5, total) == lrs[total]  # never negative past the horizon


def test_poly_after_a_warmup_spans_the_remaining_steps():
    t, base, total = _t(warmup_iterations=5), 0.01, 25
    lrs = [scheduled_lr(t, base, s, total) for s in range(total)]
    assert lrs[4] == base and lrs[5] == base
    assert lrs[6] == pytest.approx(poly_lr(base, 1, 20, 0.9))
    assert all(lr > 0 for lr in lrs) and all(a > b for a, b in zip(lrs[5:], lrs[6:], strict=False))


def test_make_optimizer_gives_adamw_with_decoupled_decay_and_the_reference_sgd():
    p = [torch.nn.Parameter(torch.ones(3))]
    adamw = make_optimizer(p, _t(optimizer="adamw", weight_decay=0.05), 1e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    sgd = make_optimizer(p, _t(), 0.05)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9


def test_fit_horizon_fills_the_budget_within_the_cap():
    # 100 s budget, 10 s gone, 4 done, 0.5 s an iteration: (100 * 0.98 - 10) / 0.5 = 176 more.
    assert fit_horizon(100.0, 10.0, 4, 0.5, cap=10_000) == 180
    assert fit_horizon(100.0, 10.0, 4, 0.5, cap=50) == 50  # the whole recipe is shorter than the budget
    assert fit_horizon(100.0, 99.0, 4, 0.5, cap=50) == 5  # the budget is spent: one more iteration


@pytest.mark.parametrize(
    "preset", ["swin_unet_acdc_fast", "unet_acdc_fast", "swin_unet_synapse_fast", "unet_synapse_fast"]
)
def test_fast_presets_resolve_to_the_reference_networks_and_input(preset):
    cfg = resolve_config(load_config(preset))
    reference = resolve_config(load_config(preset.replace("_fast", "")))
    assert cfg["model"]["name"] == reference["model"]["name"]
    # The same network: only stochastic depth, a training-time regulariser, may differ (no weight changes).
    assert set(cfg["model"]["args"]) <= {"drop_path_rate"}
    assert cfg["train"]["img_size"] == reference["train"]["img_size"] == 224
    assert cfg["model"]["pretrained"] is None  # from scratch
    assert cfg["train"]["optimizer"] == "adamw" and cfg["train"]["schedule"] == "cosine"
    # The horizon is fitted during the warm-up, so it changes no learning rate already used.
    assert cfg["train"]["warmup_iterations"] > FIT_SKIP + FIT_WINDOW
    assert reference["train"]["optimizer"] == "sgd" and reference["train"]["schedule"] == "poly"


def test_fitted_iterations_cannot_be_set_beside_a_run_length():
    with pytest.raises(ConfigError, match="train.fitted_iterations"):
        resolve_config({"train": {"fitted_iterations": 10, "max_iterations": 20}})
    with pytest.raises(ConfigError, match="train.optimizer: expected one of 'sgd', 'adamw', got 'adam'"):
        resolve_config({"train": {"optimizer": "adam"}})


def _budget_config() -> dict:
    # AdamW, warm-up over the first 3 steps (so the horizon found at iteration 3 changes no LR already used).
    return tiny_config(
        train={
            "optimizer": "adamw",
            "base_lr": 1e-3,
            "schedule": "cosine",
            "warmup_iterations": 3,
            "time_budget_min": 10.0,
        }
    )


@pytest.fixture()
def fixed_fit(monkeypatch):
    """Measure over iterations 1..3 (then 3..5) and fit a horizon of 7 whatever the clock says (the fit's
    arithmetic is tested above; here: where the horizon goes, and that resume keeps it)."""
    seen = []

    def fake_fit(budget_s, elapsed_s, done, per_it, cap):
        seen.append((budget_s, done, cap))
        assert per_it > 0 and elapsed_s > 0
        return 7

    monkeypatch.setattr(budget, "FIT_SKIP", 1)
    monkeypatch.setattr(budget, "FIT_WINDOW", 2)
    monkeypatch.setattr(budget, "fit_horizon", fake_fit)
    return seen


def test_time_budget_fits_the_horizon_and_records_it(tmp_path, fixed_fit):
    out = tmp_path / "fit"
    summary = train(_budget_config(), tiny_dataset(N_SLICES), out)
    # Fitted after iterations 1..3, and again half-way to the horizon (iteration 5) from the rate since then.
    assert fixed_fit == [(600.0, 3, IPE * EPOCHS), (600.0, 5, IPE * EPOCHS)]
    assert summary["stopped"] == "completed" and summary["iterations"] == summary["max_iterations"] == 7
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["fitted_iterations"] == 7
    assert read_checkpoint(out / "checkpoints" / "last.pt")["config"]["train"]["fitted_iterations"] == 7
    fit = json.loads((out / "env.json").read_text())["time_budget_fit"]
    assert fit["horizon"] == 7 and fit["measured_iterations"] == [1, 3] and fit["seconds_per_iteration"] > 0
    refit = json.loads((out / "env.json").read_text())["time_budget_refit"]
    assert refit["horizon"] == 7 and refit["measured_iterations"] == [3, 5]
    t = resolve_config(_budget_config())["train"]
    lrs = [r["lr"] for r in read_metrics(out, "train")]
    assert lrs[3:] == pytest.approx([scheduled_lr(t, 1e-3, s, 7) for s in range(3, 7)])
    assert lrs[-1] < 2e-4  # near the cosine's end at 7 iterations (at 9 it would be 5e-4 here)


def test_resume_keeps_the_fitted_horizon(tmp_path, fixed_fit):
    full = tmp_path / "full"
    train(_budget_config(), tiny_dataset(N_SLICES), full)
    out = tmp_path / "interrupted"

    class Interrupt(loop.DiceCELoss):
        calls = 0

        def components(self, logits, labels):
            Interrupt.calls += 1
            if Interrupt.calls == 5:  # after epoch 1's last.pt, which holds the horizon fitted at iteration 3
                raise KeyboardInterrupt
            return super().components(logits, labels)

    original = loop.DiceCELoss
    loop.DiceCELoss = Interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            train(_budget_config(), tiny_dataset(N_SLICES), out)
    finally:
        loop.DiceCELoss = original
    assert read_checkpoint(out / "checkpoints" / "last.pt")["config"]["train"]["fitted_iterations"] == 7
    # Resumed with a longer budget: no second fit; the weights are the uninterrupted run's.
    cfg = _budget_config()
    cfg["train"]["time_budget_min"] = 30.0
    summary = train(cfg, tiny_dataset(N_SLICES), out, resume=True)
    assert len(fixed_fit) == 3  # the full run's two fits, the interrupted one's first; none on resume
    assert summary["max_iterations"] == summary["iterations"] == 7
    ref, got = state_dict_of(full / "checkpoints" / "last.pt"), state_dict_of(out / "checkpoints" / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert not config_differences(
        read_checkpoint(full / "checkpoints" / "last.pt")["config"],
        read_checkpoint(out / "checkpoints" / "last.pt")["config"],
    )


def test_a_budget_beside_a_set_length_only_stops(tmp_path, fixed_fit):
    out = tmp_path / "stop"
    cfg = _budget_config()
    cfg["train"]["max_iterations"] = 5
    summary = train(cfg, tiny_dataset(N_SLICES), out)
    assert not fixed_fit and summary["max_iterations"] == 5
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["fitted_iterations"] is None
    assert math.isclose(
        read_metrics(out, "train")[-1]["lr"], scheduled_lr(resolve_config(cfg)["train"], 1e-3, 4, 5)
    )


def test_a_study_reuses_a_budget_run_that_finished_its_fitted_horizon(tmp_path, fixed_fit):
    from organseg.study.runner import run_state

    out = tmp_path / "run"
    train(_budget_config(), tiny_dataset(N_SLICES), out)
    planned = resolve_config(_budget_config())  # what a study asks for: no fitted horizon yet
    assert run_state(out, planned) == ("complete", 7)
    spent = tiny_config(train={"time_budget_min": 1e-9})  # stops after one iteration, before any fit
    train(spent, tiny_dataset(N_SLICES), tmp_path / "spent")
    assert run_state(tmp_path / "spent", resolve_config(spent)) == ("complete", 1)  # not resumed again


def _fitted_run(study: Path, name: str, iterations: int) -> None:
    """A run folder whose config.yaml records the horizon train fitted to its budget."""
    run = study / "runs" / name
    run.mkdir(parents=True)
    fitted = resolve_config(_budget_config())
    fitted["train"]["fitted_iterations"] = iterations
    (run / "config.yaml").write_text(yaml.safe_dump(fitted))


def test_the_study_progress_bar_follows_a_fitted_horizon(tmp_path):
    from types import SimpleNamespace

    from organseg.study.runner import _ProcessPool

    # With a run of set length beside it, the bar counts iterations (the budgeted one's once it has fitted).
    plan = SimpleNamespace(name="r", config=resolve_config(_budget_config()))
    fixed = SimpleNamespace(name="f", config=resolve_config(tiny_config(train={"max_iterations": 4})))
    heads = {"r": "[1/2] r", "f": "[2/2] f"}
    pool = _ProcessPool([plan, fixed], tmp_path, 1, N_SLICES, heads, [], progress=False)
    assert pool.totals == {"r": IPE * EPOCHS, "f": 4}  # nothing fitted yet: the configured epochs
    _fitted_run(tmp_path, "r", 5)
    pool.running["r"] = ("train", None, None)
    bar = SimpleNamespace(total=IPE * EPOCHS + 4)
    pool._refit_totals(bar)
    assert pool.totals == {"r": 5, "f": 4} and bar.total == 9


def test_a_study_of_budgets_alone_counts_training_seconds(tmp_path):
    # Networks of one study share no iteration count, and a budgeted run knows its length in iterations only
    # once it has fitted its horizon; its seconds are known from the start, so the ETA holds from the start.
    from types import SimpleNamespace

    from organseg.study.runner import _ProcessPool

    other = resolve_config(
        {**_budget_config(), "train": {**_budget_config()["train"], "time_budget_min": 0.5}}
    )
    plans = [
        SimpleNamespace(name="a", config=resolve_config(_budget_config())),
        SimpleNamespace(name="b", config=other),
    ]
    pool = _ProcessPool(plans, tmp_path, 2, N_SLICES, {"a": "a", "b": "b"}, [], progress=False)
    assert pool.by_time and pool.totals == {"a": 600, "b": 30}
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(
        '{"kind": "train", "iter": 40, "loss": 0.5, "time": 61.7}\n{"kind": "val", "epoch": 1, "time": 70}\n'
    )
    pool.running["a"] = ("train", None, None)
    pool.finished["b"] = pool.totals["b"]
    bar = SimpleNamespace(n=0, total=630, set_postfix_str=lambda text, refresh: setattr(bar, "post", text))
    bar.refresh = lambda: None
    pool._show(bar)
    assert bar.n == 30 + 61 and bar.total == 630  # the last training record's clock, not the validation's
    assert bar.post == "a 61/600 s"


def test_waiting_runs_take_the_fitted_horizon_of_a_run_like_them(tmp_path):
    # A cross-validation's later folds (same network, same recipe) are estimated from the first fitted run,
    # not from max_epochs: the bar's ETA is minutes, not days.
    from types import SimpleNamespace

    from organseg.study.runner import _ProcessPool

    cfg = resolve_config(_budget_config())
    other = resolve_config({**_budget_config(), "train": {**_budget_config()["train"], "seed": 7}})
    fixed = resolve_config(tiny_config(train={"max_iterations": 4}))  # so that the bar counts iterations
    named = (("f0", cfg), ("f1", cfg), ("s7", other), ("x", fixed))
    plans = [SimpleNamespace(name=n, config=c) for n, c in named]
    pool = _ProcessPool(plans, tmp_path, 1, N_SLICES, {p.name: p.name for p in plans}, [], progress=False)
    pool.pending = plans[1:]
    _fitted_run(tmp_path, "f0", 5)
    pool.running["f0"] = ("train", None, None)
    bar = SimpleNamespace(total=3 * IPE * EPOCHS + 4)
    pool._refit_totals(bar)
    assert pool.totals == {"f0": 5, "f1": 5, "s7": IPE * EPOCHS, "x": 4}  # another seed is another recipe
    assert bar.total == 10 + IPE * EPOCHS + 4
