"""``train.time_budget_min``: when a run stops, and, for a run whose length nothing else sets, the horizon its
schedule is fitted to.

Time is the run's training seconds, the clock that ``last.pt`` carries across resumes: the loop hands it over
after every iteration and the budget reads no clock itself, so that the tests drive it with plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# The horizon comes from the time per iteration measured over FIT_WINDOW iterations after FIT_SKIP warm ones
# (allocator, first-call caches), leaving FIT_RESERVE of the budget for the checkpoint writes and validations
# that the measured iterations do not include.
FIT_SKIP, FIT_WINDOW, FIT_RESERVE = 2, 8, 0.02


def fit_horizon(budget_s: float, elapsed_s: float, done: int, seconds_per_iteration: float, cap: int) -> int:
    """The number of iterations that ends training at the budget: those done plus as many more as the time
    left (less the reserve) holds at the measured rate, at least one more, at most ``cap`` (the configured
    epochs: a budget longer than the whole recipe runs the whole recipe)."""
    left = budget_s * (1.0 - FIT_RESERVE) - elapsed_s
    more = int(left / seconds_per_iteration) if seconds_per_iteration > 0 else cap
    return max(done + 1, min(cap, done + more))


@dataclass(frozen=True)
class BudgetFit:
    """A horizon fixed at the end of an iteration, and the measurement behind it."""

    horizon: int
    seconds_per_iteration: float
    measured: tuple[int, int]  # the iterations whose ends the rate was measured between
    refit: bool  # the second fit, half-way to the first one's horizon

    @property
    def key(self) -> str:
        """Where env.json records it."""
        return "time_budget_refit" if self.refit else "time_budget_fit"


@dataclass(frozen=True)
class _Window:
    """A measurement: from the end of iteration ``start`` (at ``since`` training seconds, None until that
    iteration has ended) to the end of iteration ``fit_at``, where the horizon is fitted."""

    start: int
    since: float | None
    fit_at: int


class TimeBudget:
    """The time budget of one run (``minutes`` None: no budget, never exhausted, nothing fitted).

    With ``fit``, the end of iteration ``start_iteration + FIT_SKIP`` starts a measurement of FIT_WINDOW
    iterations, after which the horizon is fitted to what the budget has left; half-way from there to that
    horizon it is fitted once more from the rate since the first fit, so that a machine that got slower or
    faster (other jobs) still ends its schedule near the budget. Both points are iterations, not clock
    readings, so every process reaches them together: ``agree`` turns each process's horizon into the one they
    all take (rank 0's, broadcast). ``cap``: the most iterations a horizon may have.
    """

    def __init__(
        self,
        minutes: float | None,
        *,
        fit: bool = False,
        start_iteration: int = 0,
        cap: int = 0,
        agree: Callable[[int], int] | None = None,
    ) -> None:
        self.seconds = minutes * 60 if minutes else math.inf
        self.cap = cap
        self.agree = agree or (lambda horizon: horizon)
        self.horizon: int | None = None  # the last horizon fitted here
        first = start_iteration + FIT_SKIP
        self._window = _Window(first, None, first + FIT_WINDOW) if fit and minutes else None

    @classmethod
    def from_config(
        cls,
        train_cfg: dict,
        iteration: int,
        iterations_per_epoch: int,
        agree: Callable[[int], int] | None = None,
    ) -> TimeBudget:
        """The budget of a run (re)starting at ``iteration``. The horizon is fitted only where neither the
        configuration (``max_iterations``, ``budget_images``) nor an earlier part of the run
        (``fitted_iterations``, kept on resume) has set it; otherwise the budget only stops the run."""
        minutes = train_cfg["time_budget_min"]
        length_set = (
            train_cfg["max_iterations"] or train_cfg["budget_images"] or train_cfg["fitted_iterations"]
        )
        return cls(
            minutes,
            fit=bool(minutes) and not length_set,
            start_iteration=iteration,
            cap=train_cfg["max_epochs"] * iterations_per_epoch,
            agree=agree,
        )

    @property
    def limited(self) -> bool:
        return math.isfinite(self.seconds)

    def exhausted(self, train_seconds: float) -> bool:
        return train_seconds >= self.seconds

    def after_iteration(self, iteration: int, train_seconds: float) -> BudgetFit | None:
        """Called at the end of every iteration (``iteration``: how many are done) with the training seconds
        then; returns the fit when this iteration fixes the horizon."""
        window = self._window
        if window is None:
            return None
        if window.since is None:
            if iteration == window.start:
                self._window = _Window(window.start, train_seconds, window.fit_at)
            return None
        if iteration != window.fit_at:
            return None
        per_iteration = (train_seconds - window.since) / (iteration - window.start)
        refit = self.horizon is not None
        horizon = fit_horizon(self.seconds, train_seconds, iteration, per_iteration, self.cap)
        self.horizon = horizon = self.agree(horizon)
        refit_at = iteration + (horizon - iteration) // 2
        self._window = None if refit or refit_at <= iteration else _Window(iteration, train_seconds, refit_at)
        return BudgetFit(horizon, per_iteration, (window.start, iteration), refit)
