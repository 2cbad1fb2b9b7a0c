"""The restartable lr-schedule clock that stages share (a stage's ``ramp`` itself is read by
:mod:`tunespec.recipe.ramps`)."""

from __future__ import annotations

from typing import Any, Callable


class LRClock:
    """The lr-schedule factor at optimizer step t, where a stage may restart the schedule (or switch
    to its own) at its first step: factor(t) = schedule.factor(t - offset).

    The backends get :meth:`function`, a plain function, so that torch's LambdaLR stores nothing of
    it in its state_dict and resuming restores ``offset`` and ``schedule`` from the run's state.
    """

    def __init__(self, schedule: Any = None):
        self.schedule = schedule  # an LRSchedule counted in steps, or None (factor 1)
        self.offset = 0

    def factor(self, t: int) -> float:
        if self.schedule is None:
            return 1.0
        return self.schedule.factor(max(t - self.offset, 0))

    def function(self) -> Callable[[int], float]:
        def factor(t: int) -> float:
            return self.factor(t)

        return factor
