"""The time budget on its own (organseg.training.budget.TimeBudget): when it is spent and the horizon it
fits, driven by made-up training seconds (no clock, no training; the loop's use of it is tested in
test_fast_recipe.py and test_train_loop.py)."""

from __future__ import annotations

import pytest

from organseg.training.budget import FIT_SKIP, FIT_WINDOW, BudgetFit, TimeBudget
from organseg.training.config import DEFAULTS


def _train_cfg(**changes) -> dict:
    return {**DEFAULTS["train"], "time_budget_min": 10.0, "max_epochs": 100, **changes}


def _feed(budget: TimeBudget, seconds, first: int, last: int) -> list[tuple[int, BudgetFit]]:
    """The fits reported over iterations ``first``..``last``, ``seconds(i)``: training seconds at i's end."""
    fits = []
    for i in range(first, last + 1):
        fitted = budget.after_iteration(i, seconds(i))
        if fitted is not None:
            fits.append((i, fitted))
    return fits


def test_the_window_constants_are_the_documented_ones():
    assert (FIT_SKIP, FIT_WINDOW) == (2, 8)  # docs/training.md: "after 2 warm iterations, 8 are timed"


def test_fit_then_refit_half_way_from_the_rate_since():
    budget = TimeBudget(10.0, fit=True, cap=10_000)

    def seconds(i: int) -> float:
        # 3 s of start-up, 0.5 s an iteration up to iteration 10, then 0.25 s (the machine got quieter).
        return 3.0 + 0.5 * i if i <= 10 else 8.0 + 0.25 * (i - 10)

    fits = _feed(budget, seconds, 1, 3000)
    # Measured from the end of iteration 2 (4.0 s) to the end of 10 (8.0 s): 0.5 s an iteration;
    # (600 s * 0.98 - 8 s) / 0.5 = 1160 more. Half-way there (iteration 590, 153 s): 0.25 s an iteration
    # since, (588 - 153) / 0.25 = 1740 more. No third fit.
    assert fits == [
        (10, BudgetFit(1170, 0.5, (2, 10), refit=False)),
        (590, BudgetFit(2330, 0.25, (10, 590), refit=True)),
    ]
    assert [f.key for _, f in fits] == ["time_budget_fit", "time_budget_refit"]
    assert budget.horizon == 2330


def test_nothing_is_measured_before_the_window_starts():
    budget = TimeBudget(10.0, fit=True, cap=10_000)
    # Not started: iterations before FIT_SKIP's end report nothing, whatever their (slow, warm-up) times;
    # the window's iterations alone set the rate.
    assert budget.after_iteration(1, 50.0) is None
    fits = _feed(budget, lambda i: 50.0 + (i - 2), 2, 10)
    assert fits == [(10, BudgetFit(540, 1.0, (2, 10), refit=False))]  # 10 + (588 - 58) / 1.0


def test_the_cap_and_at_least_one_more_iteration():
    capped = TimeBudget(10.0, fit=True, cap=200)
    assert _feed(capped, lambda i: 0.1 * i, 1, 10)[0][1].horizon == 200  # the whole recipe fits the budget
    spent = TimeBudget(10.0, fit=True, cap=10_000)
    fits = _feed(spent, lambda i: 590.0 + 0.5 * i, 1, 20)
    assert fits[0][1].horizon == 11  # the budget is gone: one more iteration, and no refit half-way to it
    assert len(fits) == 1


def test_every_process_takes_the_agreed_horizon():
    budget = TimeBudget(10.0, fit=True, cap=10_000, agree=lambda horizon: 30)  # rank 0's, say
    fits = _feed(budget, lambda i: 0.5 * i, 1, 100)
    assert [(i, f.horizon) for i, f in fits] == [(10, 30), (20, 30)]  # the refit half-way to the agreed one


def test_exhausted():
    budget = TimeBudget(1.0)
    assert budget.limited and budget.seconds == 60.0
    assert not budget.exhausted(59.9) and budget.exhausted(60.0) and budget.exhausted(61.0)
    none = TimeBudget(None)
    assert not none.limited and not none.exhausted(1e12)
    assert _feed(none, float, 1, 100) == []


def test_a_set_length_or_a_fitted_horizon_is_not_fitted_again():
    for changes in ({"max_iterations": 50}, {"budget_images": 1000}, {"fitted_iterations": 70}):
        budget = TimeBudget.from_config(_train_cfg(**changes), 0, 4)
        assert budget.limited and _feed(budget, float, 1, 200) == []  # it only stops the run
    assert _feed(TimeBudget.from_config(_train_cfg(time_budget_min=None), 0, 4), float, 1, 200) == []


def test_resumed_with_seconds_already_spent():
    # last.pt carried 500 s of training at iteration 100, no horizon fitted yet (interrupted before the fit).
    budget = TimeBudget.from_config(_train_cfg(), 100, 4)
    assert budget.cap == 400 and not budget.exhausted(500.0)

    def seconds(i: int) -> float:
        return 500.0 + 2.0 + 0.5 * (i - 100)  # 2 s to start again, then 0.5 s an iteration

    assert budget.after_iteration(101, seconds(101)) is None
    fits = _feed(budget, seconds, 102, 400)
    # The window starts FIT_SKIP after the resume (end of 102, 503 s) and fits at 110 (507 s): the seconds
    # spent before the interruption count, (588 - 507) / 0.5 = 162 more; then half-way, at 191.
    assert fits[0] == (110, BudgetFit(272, 0.5, (102, 110), refit=False))
    assert fits[1][0] == 191 and fits[1][1].refit
    # A run resumed with its budget spent stops at once (the loop asks before its first iteration).
    assert TimeBudget.from_config(_train_cfg(), 100, 4).exhausted(600.0)


@pytest.mark.parametrize("minutes", [None, 5.0])
def test_without_fit_nothing_is_reported(minutes):
    assert _feed(TimeBudget(minutes, fit=False, cap=10), lambda i: 0.01 * i, 1, 50) == []
