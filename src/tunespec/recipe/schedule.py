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


@dataclass(frozen=True)
class LRSchedule:
    """lr factor per optimizer step t (0 for the first step), the same in both frameworks."""

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
        if kind in ("constant", "cosine") and "gamma" in data:
            raise SpecError(f"schedule.gamma: has no effect with type {kind}; remove it")
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
            raise SpecError("schedule.unit is 'epoch': pass steps_per_epoch to tunespec.scheduler")
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
        pos = epoch / epochs
        step = 1.0 / (per_epoch * epochs)
        for _ in range(batch):
            pos += step
        bounds = (0.0, _f32(self.pct_start), _f32(_f32(self.pct_start) + _f32(1 - self.pct_start)))
        phase = 0 if _f32(pos) < bounds[1] else 1
        where = _f32(_f32(_f32(pos) - bounds[phase]) / _f32(bounds[phase + 1] - bounds[phase]))
        low, high = 1.0 / self.div, 1.0 / self.div_final
        start, end = (low, 1.0) if phase == 0 else (1.0, high)
        return start + (1 + math.cos(math.pi * (1 - where))) * (end - start) / 2


def _f32(x: float) -> float:
    """``x`` rounded to float32, as a float32 tensor holds it."""
    return struct.unpack("f", struct.pack("f", x))[0]
