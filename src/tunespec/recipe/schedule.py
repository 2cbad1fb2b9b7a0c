"""The ``schedule`` recipe section: the framework-neutral lr schedule, a factor per optimizer step.

```yaml
schedule: {type: multistep, milestones: [30, 45], gamma: 0.1, warmup_steps: 5}
```
Schedules count optimizer steps (``unit: epoch`` counts epochs; then pass ``steps_per_epoch``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields
from typing import Any, Mapping

from tunespec.errors import SpecError
from tunespec.recipe import validate as V
from tunespec.recipe.spec import check_keys

SCHEDULE_TYPES = ("constant", "step", "multistep", "cosine", "onecycle")
# The most a schedule may multiply the lr by (gamma above 1): checked when the recipe is read, so
# that base lr x multipliers x factor stays finite at every step.
MAX_SCHEDULE_FACTOR = 1e6


@dataclass(frozen=True)
class LRSchedule:
    """lr factor per optimizer step t (0 for the first step), the same in both frameworks.

    Example::

        sched = tunespec.LRSchedule.from_dict({"type": "cosine", "total_steps": 100, "min_factor": 0.1})
        sched.factor(0), sched.factor(99)   # 1.0 ... 0.1
    """

    type: str = "constant"
    step_size: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    total_steps: int = 0
    min_factor: float = 0.0
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0
    unit: str = "step"
    pct_start: float = 0.25  # onecycle: fastai's fit_one_cycle defaults
    div: float = 25.0
    div_final: float = 1e5
    epoch_steps: int = 0  # onecycle counted in epochs: optimizer steps per epoch (fastai's positions)

    KEYS = ("type", "step_size", "milestones", "gamma", "total_steps", "min_factor", "warmup_steps",
            "warmup_start_factor", "unit", "pct_start", "div", "div_final")
    NEEDS = {"step": "step_size", "multistep": "milestones", "cosine": "total_steps",
             "onecycle": "total_steps"}
    ONECYCLE = ("pct_start", "div", "div_final")

    @classmethod
    def from_dict(cls, data: Any) -> "LRSchedule":
        """Validate a whole schedule section; every count is a positive integer <= 10**12."""
        data = V.mapping(data, "schedule", "{type: step, step_size: 10}")
        V.tree(data, "schedule")
        check_keys(data, "schedule", cls.KEYS)
        kind = V.choice(data.get("type", "constant"), "schedule.type", SCHEDULE_TYPES)
        unit = V.choice(data.get("unit", "step"), "schedule.unit", ("step", "epoch"))
        need = cls.NEEDS.get(kind)
        if need and data.get(need) is None:
            raise SpecError(f"schedule: type {kind} needs {need}")
        for other, key in cls.NEEDS.items():  # an option that has no effect is an error
            if other != kind and key in data and key != cls.NEEDS.get(kind):
                raise SpecError(f"schedule.{key}: has no effect with type {kind}; remove it or use "
                                f"type {other}")
        step_size = 0 if kind != "step" else V.count(data["step_size"], "schedule.step_size")
        milestones = () if kind != "multistep" else cls._milestones(data["milestones"])
        total = 0 if kind not in ("cosine", "onecycle") else V.count(data["total_steps"],
                                                                     "schedule.total_steps")
        cycle = cls._onecycle(data, kind)
        gamma = V.number(data.get("gamma", 0.1), "schedule.gamma", minimum=0.0, maximum=V.MAX_FACTOR)
        if kind in ("constant", "cosine", "onecycle") and "gamma" in data:
            raise SpecError(f"schedule.gamma: has no effect with type {kind}; remove it")
        cls._check_growth(kind, gamma, len(milestones))
        min_factor = V.number(data.get("min_factor", 0.0), "schedule.min_factor", minimum=0.0,
                              maximum=1.0)
        if kind != "cosine" and "min_factor" in data:
            raise SpecError(f"schedule.min_factor: has no effect with type {kind}; remove it or use "
                            f"type cosine")
        warmup = V.count(data.get("warmup_steps", 0), "schedule.warmup_steps", minimum=0)
        start = V.number(data.get("warmup_start_factor", 0.0), "schedule.warmup_start_factor",
                         minimum=0.0, maximum=1.0)
        if not warmup and "warmup_start_factor" in data:
            raise SpecError("schedule.warmup_start_factor: has no effect without warmup_steps; give "
                            "warmup_steps or remove it")
        if kind == "onecycle" and "warmup_steps" in data:
            raise SpecError("schedule.warmup_steps: onecycle warms up by itself (pct_start, div); "
                            "remove warmup_steps")
        return cls(kind, step_size, milestones, gamma, total, min_factor, warmup, start, unit, *cycle)

    @classmethod
    def _onecycle(cls, data: Mapping[str, Any], kind: str) -> tuple[float, float, float]:
        """pct_start, div and div_final of fastai's fit_one_cycle; options of no other type."""
        if kind != "onecycle":
            for key in cls.ONECYCLE:
                if key in data:
                    raise SpecError(f"schedule.{key}: has no effect with type {kind}; remove it or "
                                    f"use type onecycle")
            return cls.pct_start, cls.div, cls.div_final
        pct = V.number(data.get("pct_start", cls.pct_start), "schedule.pct_start", minimum=0.0,
                       maximum=1.0, min_exclusive=True, max_exclusive=True)
        div = V.number(data.get("div", cls.div), "schedule.div", minimum=1.0, maximum=V.MAX_FACTOR)
        final = V.number(data.get("div_final", cls.div_final), "schedule.div_final", minimum=1.0,
                         maximum=1e12)
        return pct, div, final

    @staticmethod
    def _check_growth(kind: str, gamma: float, milestones: int) -> None:
        """A growing schedule (gamma above 1) must stay finite at every step: its largest factor
        is decided here, when the recipe is read, never found as an overflow in training."""
        if gamma <= 1.0:
            return
        if kind == "step":
            raise SpecError(f"schedule.gamma: {gamma!r} above 1 on a step schedule multiplies the lr "
                            f"without limit (it overflows in a long run); use type multistep with "
                            f"milestones (growth up to {MAX_SCHEDULE_FACTOR:g} in all), or gamma <= 1")
        digits = milestones * math.log10(gamma)  # compared as logarithms: the power may overflow
        if digits > math.log10(MAX_SCHEDULE_FACTOR) + 1e-12:
            raise SpecError(f"schedule.gamma: {gamma!r} over {milestones} milestones multiplies the lr "
                            f"by 10^{digits:.4g}, more than the limit {MAX_SCHEDULE_FACTOR:g}; use a "
                            f"smaller gamma or fewer milestones")

    @staticmethod
    def _milestones(raw: Any) -> tuple[int, ...]:
        """Strictly increasing step (or epoch) counts: a repeat or a decrease is a typo."""
        items = V.sequence(raw, "schedule.milestones", what="a list of increasing integers",
                           max_length=10_000, nonempty=True)
        out: list[int] = []
        for i, m in enumerate(items):
            m = V.count(m, f"schedule.milestones[{i}]")
            if out and m <= out[-1]:
                raise SpecError(f"schedule.milestones[{i}]: {m} is not after {out[-1]}; milestones "
                                f"must strictly increase")
            out.append(m)
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """Every field, onecycle's only on a onecycle schedule: what run checkpoints compare, so
        checkpoints of other schedules read the same as before onecycle existed."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.type != "onecycle":
            for key in (*self.ONECYCLE, "epoch_steps"):
                del out[key]
        return out

    def in_steps(self, steps_per_epoch: int | None) -> "LRSchedule":
        """The same schedule counted in optimizer steps."""
        if self.unit == "step":
            return self
        if not steps_per_epoch:
            raise SpecError("schedule.unit is 'epoch': give steps_per_epoch, the optimizer steps in one "
                          "epoch: tunespec.StageRunner(recipe, steps_per_epoch=len(loader)) or "
                          "tunespec.scheduler(opt, recipe, steps_per_epoch=len(loader))")
        k = steps_per_epoch
        return LRSchedule(self.type, self.step_size * k, tuple(m * k for m in self.milestones), self.gamma,
                          self.total_steps * k, self.min_factor, self.warmup_steps * k,
                          self.warmup_start_factor, "step", self.pct_start, self.div, self.div_final, k)

    def factor(self, t: int) -> float:
        if self.type == "onecycle":
            return self._onecycle_factor(t)
        if self.type == "step":
            f = self.gamma ** (t // self.step_size)
        elif self.type == "multistep":
            f = self.gamma ** sum(t >= m for m in self.milestones)
        elif self.type == "cosine":
            progress = min(t, self.total_steps) / self.total_steps
            f = self.min_factor + (1 - self.min_factor) * (1 + math.cos(math.pi * progress)) / 2
        else:
            f = 1.0
        if t < self.warmup_steps:
            f *= self.warmup_start_factor + (1 - self.warmup_start_factor) * t / self.warmup_steps
        return f


    def _phases(self) -> tuple[tuple[float, float, float], tuple[float, float]]:
        """onecycle's float32 phase boundaries and phase lengths (computed once per schedule)."""
        cached = self.__dict__.get("_phase_bounds")
        if cached is None:
            bounds = (0.0, _f32(self.pct_start), _f32(_f32(self.pct_start) + _f32(1 - self.pct_start)))
            cached = bounds, (_f32(bounds[1] - bounds[0]), _f32(bounds[2] - bounds[1]))
            object.__setattr__(self, "_phase_bounds", cached)
        return cached

    def _onecycle_factor(self, t: int) -> float:
        """fastai's ``combined_cos(pct_start, 1/div, 1, 1/div_final)`` at the training position
        fastai's Learner reaches before step t, bit for bit.

        fastai's position is ``epoch / n_epoch`` plus ``1 / (n_iter * n_epoch)`` added once per
        batch, and its phase boundaries and in-phase position are float32 tensors
        (``combine_scheds``); both are reproduced, so the factors equal fastai's exactly.
        """
        t = min(t, self.total_steps)
        per_epoch = self.epoch_steps or self.total_steps
        epochs = self.total_steps // per_epoch
        epoch, batch = divmod(t, per_epoch)
        step = 1.0 / (per_epoch * epochs)
        # fastai adds `step` once per batch; the sum is continued from the last call of this epoch
        # (an lr scheduler asks for t, t+1, ...), else taken in O(log) jumps (see accumulate).
        memo = self.__dict__.get("_position")
        if memo is not None and memo[0] == epoch and memo[1] <= batch:
            pos = accumulate(memo[2], step, batch - memo[1])
        else:
            pos = accumulate(epoch / epochs, step, batch)
        object.__setattr__(self, "_position", (epoch, batch, pos))
        bounds, spans = self._phases()
        here = _f32(pos)
        phase = 0 if here < bounds[1] else 1
        where = _f32(_f32(here - bounds[phase]) / spans[phase])
        low, high = 1.0 / self.div, 1.0 / self.div_final
        start, end = (low, 1.0) if phase == 0 else (1.0, high)
        return start + (1 + math.cos(math.pi * (1 - where))) * (end - start) / 2


def accumulate(pos: float, step: float, n: int) -> float:
    """``pos`` after ``n`` float additions of ``step`` (``for _ in range(n): pos += step``), bit for
    bit, in O(log(pos / step)) additions instead of n.

    Why it is exact: while the operand and the sum stay within one binade [2^e, 2^(e+1)), both are
    multiples of that binade's ulp u, and round-to-nearest adds the same number of ulps every time
    (on an exact tie, half-to-even settles after the first addition). So once two additions in a
    row inside one binade added the same amount k, every further one inside it adds k too, and the
    run up to the binade's top is one integer multiplication. A sum crosses at most ~60 binades.

    >>> accumulate(0.0, 0.1, 10) == sum([0.1] * 10)
    True
    """
    previous = None
    while n > 0:
        nxt = pos + step
        n -= 1
        ACCUMULATE_WORK[0] += 1
        added = nxt - pos  # exact: both lie in one binade when it is used (Sterbenz)
        same = pos > 0 and math.frexp(nxt)[1] == math.frexp(pos)[1]
        if same and added == previous and n > 0:
            ulp, exponent = math.ulp(nxt), math.frexp(nxt)[1]
            units, k, top = round(nxt / ulp), round(added / ulp), 1 << 53  # top: 2^e in ulps
            jump = min(n, (top - 1 - units) // k)
            nxt = math.ldexp(float(units + jump * k), exponent - 53)
            n -= jump
        previous = added if same else None
        pos = nxt
    return pos


# Additions made by accumulate since the process started: tests count work with it (n and 4n steps).
ACCUMULATE_WORK = [0]


_FLOAT32 = struct.Struct("f")


def _f32(x: float) -> float:
    """``x`` rounded to float32, as a float32 tensor holds it."""
    return _FLOAT32.unpack(_FLOAT32.pack(x))[0]
