"""A stage's ``ramp``: newly unfrozen parameters start at a small lr that grows to their full one,
as Lightning's ``BackboneFinetuning`` does for a backbone::

    ramp: {start: 0.1, growth: 2.0, ceiling: 1.0, per: epoch}
    ramp: {start: 0.1, growth: [1.5, 2.0, 3.0, 1.2]}   # a growth per epoch, the last repeating

The group starts at ``start`` x the lr it would otherwise have (its *target*: base lr x lr_mult x
lr_factor) and each epoch (or optimizer step) its lr is multiplied by ``growth``, never past
``ceiling`` x target. The products are taken on the lr itself, one growth after the other, in the
order Lightning takes them, so the per-epoch lrs are Lightning's bit for bit. A list of growths
is Lightning's ``lambda_func`` varying with the epoch: the k-th growth is the list's k-th entry
(the last repeats), and a growth below 1 after the ceiling brings the lr back down, as Lightning
does; lists are per epoch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunespec.errors import SpecError
from tunespec.recipe import validate as V

RAMP_KEYS = ("start", "growth", "ceiling", "per")
RAMP_UNITS = ("epoch", "step")
# A ramp that needs more growth steps than this to reach its ceiling is a typo (growth 1.0000001).
MAX_RAMP_STEPS = 10**6
MAX_GROWTHS = 10_000  # entries of a per-epoch growth list
# Growth products Ramp.lr has taken since the process started: tests count work with it.
RAMP_WORK = [0]


@dataclass(frozen=True)
class Ramp:
    """How the lr of parameters a stage newly unfreezes grows: see the module docstring."""

    start: float
    growth: float | tuple[float, ...]  # a tuple: one growth per epoch, the last repeating
    ceiling: float = 1.0
    per: str = "epoch"

    @classmethod
    def from_dict(cls, data: Any, origin: str) -> "Ramp":
        data = V.mapping(data, origin, "{start: 0.1, growth: 2.0, ceiling: 1.0, per: epoch}")
        V.keys(data, origin, RAMP_KEYS, "ramp key")
        for key in ("start", "growth"):
            if key not in data:
                raise SpecError(f"{origin}: give {key} (e.g. {{start: 0.1, growth: 2.0}})")
        start = V.number(data["start"], f"{origin}.start", minimum=0.0, min_exclusive=True,
                         maximum=V.MAX_FACTOR)
        if isinstance(data["growth"], (list, tuple)):
            return cls._listed(data, origin, start)
        growth = V.number(data["growth"], f"{origin}.growth", minimum=1.0, min_exclusive=True,
                          maximum=V.MAX_FACTOR)
        ceiling = V.number(data.get("ceiling", 1.0), f"{origin}.ceiling", minimum=0.0,
                           min_exclusive=True, maximum=V.MAX_FACTOR)
        per = V.choice(data.get("per", "epoch"), f"{origin}.per", RAMP_UNITS,
                       "grow once per epoch (schedule.step) or per optimizer step")
        if start >= ceiling:
            raise SpecError(f"{origin}: start {start!r} is not below ceiling {ceiling!r}, so the ramp "
                            f"never grows; use lr_factor: {start!r} for a fixed factor, or lower start")
        steps = math.log(ceiling / start) / math.log(growth)
        if steps > MAX_RAMP_STEPS:
            raise SpecError(f"{origin}.growth: {growth!r} would take {steps:.3g} {per}s to grow from "
                            f"{start!r} to {ceiling!r}; use a larger growth")
        return cls(start, growth, ceiling, per)

    @classmethod
    def _listed(cls, data: Any, origin: str, start: float) -> "Ramp":
        """A ramp whose growth is a list, one entry per epoch (Lightning's lambda_func by epoch)."""
        items = V.sequence(data["growth"], f"{origin}.growth", what="a growth per epoch, e.g. [1.5, 2.0, 1.2]",
                           max_length=MAX_GROWTHS, nonempty=True)
        growth = tuple(V.number(g, f"{origin}.growth[{i}]", minimum=0.0, min_exclusive=True, maximum=V.MAX_FACTOR)
                       for i, g in enumerate(items))
        if growth[-1] < 1.0:
            raise SpecError(f"{origin}.growth: the last entry ({growth[-1]!r}) repeats for every later epoch, "
                            f"so below 1 the lr would shrink forever; end the list with 1 or more")
        ceiling = V.number(data.get("ceiling", 1.0), f"{origin}.ceiling", minimum=0.0,
                           min_exclusive=True, maximum=V.MAX_FACTOR)
        if data.get("per", "epoch") != "epoch":
            raise SpecError(f"{origin}.growth: a list gives one growth per epoch; use per: epoch, or a single "
                            f"growth per step")
        if start >= ceiling:
            raise SpecError(f"{origin}: start {start!r} is not below ceiling {ceiling!r}; lower start")
        return cls(start, growth, ceiling, "epoch")

    def growth_at(self, k: int) -> float:
        """The k-th growth (k >= 1): the constant one, or the list's k-th entry (the last repeats)."""
        if isinstance(self.growth, tuple):
            return self.growth[min(k, len(self.growth)) - 1]
        return self.growth

    def _settled(self, k: int) -> bool:
        """Whether no growth from the k-th on is below 1 (at the ceiling, the lr stays there)."""
        if not isinstance(self.growth, tuple) or k > len(self.growth):
            return True
        last_drop = self.__dict__.get("_last_drop")
        if last_drop is None:  # the last growth below 1 (0: none), found once
            last_drop = max((i + 1 for i, g in enumerate(self.growth) if g < 1.0), default=0)
            object.__setattr__(self, "_last_drop", last_drop)
        return k > last_drop

    def lr(self, target: float, k: int) -> float:
        """The lr after ``k`` growths of a group whose full lr is ``target`` (a per-epoch ramp).

        Lightning's ``BackboneFinetuning``: ``lr_0 = current_lr * ratio``, then
        ``lr = lambda(epoch + 1) * previous``, set to ``current_lr`` once it would pass it. The
        products are Lightning's, one after the other, so they are continued from the last call
        for this target (the runner asks for k, k+1, ...: O(1) each); a first call at k, or one
        going back, multiplies min(k, steps_to_ceiling() + 1) times: the loop stops at the ceiling.
        """
        cap = target * self.ceiling
        memo = self._memo().get(target)
        done, lr = memo if memo is not None and memo[0] <= k else (0, target * self.start)
        for i in range(done + 1, k + 1):
            if lr >= cap and self._settled(i):
                break
            RAMP_WORK[0] += 1
            nxt = self.growth_at(i) * lr
            lr = cap if nxt > cap else nxt
        memo = self._memo()
        if len(memo) > 64:  # one entry per group target: a handful in a run
            memo.clear()
        memo[target] = (k, lr)
        return lr

    def ratio(self, k: int) -> float:
        """A per-step ramp's factor after ``k`` optimizer steps, in closed form (O(1) at any step):
        start x growth^k, never past ceiling."""
        if k >= self.steps_to_ceiling():
            return self.ceiling
        return min(self.start * self.growth ** k, self.ceiling)

    def _memo(self) -> dict[float, tuple[int, float]]:
        """target -> (growths, lr) of the last ``lr`` call; not a field, so equality ignores it."""
        memo = self.__dict__.get("_lr_memo")
        if memo is None:
            memo = {}
            object.__setattr__(self, "_lr_memo", memo)
        return memo

    def steps_to_ceiling(self) -> int:
        """How many growths take the ramp from start to its ceiling (at most MAX_RAMP_STEPS)."""
        if isinstance(self.growth, tuple):  # grown one listed entry at a time
            lr, k = self.start, 0
            while lr < self.ceiling and k < MAX_RAMP_STEPS:
                k += 1
                lr *= self.growth_at(k)
            return k
        return math.ceil(math.log(self.ceiling / self.start) / math.log(self.growth))

    def to_dict(self) -> dict[str, Any]:
        growth = list(self.growth) if isinstance(self.growth, tuple) else self.growth
        return {"start": self.start, "growth": growth, "ceiling": self.ceiling, "per": self.per}
