"""A stage's ``ramp``: newly unfrozen parameters start at a small lr that grows to their full one,
as Lightning's ``BackboneFinetuning`` does for a backbone::

    ramp: {start: 0.1, growth: 2.0, ceiling: 1.0, per: epoch}

The group starts at ``start`` x the lr it would otherwise have (its *target*: base lr x lr_mult x
lr_factor) and each epoch (or optimizer step) its lr is multiplied by ``growth``, never past
``ceiling`` x target. The products are taken on the lr itself, one growth after the other, in the
order Lightning takes them, so the per-epoch lrs are Lightning's bit for bit.
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


@dataclass(frozen=True)
class Ramp:
    """How the lr of parameters a stage newly unfreezes grows: see the module docstring."""

    start: float
    growth: float
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

    def lr(self, target: float, k: int) -> float:
        """The lr after ``k`` growths of a group whose full lr is ``target``.

        Lightning's ``BackboneFinetuning``: ``lr_0 = current_lr * ratio``, then
        ``lr = lambda(epoch + 1) * previous``, set to ``current_lr`` once it would pass it. The loop
        stops at the ceiling, so it runs at most MAX_RAMP_STEPS times.
        """
        cap = target * self.ceiling
        lr = target * self.start
        for _ in range(k):
            if lr >= cap:
                break
            nxt = self.growth * lr
            lr = cap if nxt > cap else nxt
        return lr

    def steps_to_ceiling(self) -> int:
        """How many growths take the ramp from start to its ceiling (at most MAX_RAMP_STEPS)."""
        return math.ceil(math.log(self.ceiling / self.start) / math.log(self.growth))

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "growth": self.growth, "ceiling": self.ceiling, "per": self.per}
