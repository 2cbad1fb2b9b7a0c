"""A recipe file: the spec plus the optimizer and lr schedule, in framework-neutral terms.

```yaml
freeze: ['.*']
train: ['layer4\\..*', 'fc\\..*']
optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 5.0e-4, semantics: torch}
schedule: {type: multistep, milestones: [30, 45], gamma: 0.1, warmup_steps: 5}
```
Schedules count optimizer steps (``unit: epoch`` counts epochs; then pass ``steps_per_epoch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import SpecError
from .spec import RECIPE_SECTIONS, Spec, _close, check_keys, read_recipe

SEMANTICS = ("torch", "native")
SCHEDULE_TYPES = ("constant", "step", "multistep", "cosine")
RECIPE_SECTIONS["optimizer"] = "optimizer name, lr, weight_decay, semantics and options"
RECIPE_SECTIONS["schedule"] = "lr schedule: constant, step, multistep, cosine, with linear warmup"


def check_semantics(value: Any) -> str:
    if value not in SEMANTICS:
        raise SpecError(f"semantics: {value!r} is not one of {', '.join(SEMANTICS)}; 'torch' makes "
                        f"Gluon follow torch's update rules, 'native' keeps each framework's own")
    return value


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float | None = None
    weight_decay: float = 0.0
    semantics: str = "torch"
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> "OptimizerSpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"optimizer: expected a mapping like {{name: sgd, lr: 0.01}}, got {data!r}")
        data = dict(data)
        name = data.pop("name", "sgd")
        lr = data.pop("lr", None)
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise SpecError(f"optimizer.lr: expected a positive number, got {lr!r}")
        wd = data.pop("weight_decay", 0.0)
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0 or not math.isfinite(wd):
            raise SpecError(f"optimizer.weight_decay: expected a number >= 0, got {wd!r}")
        semantics = check_semantics(data.pop("semantics", "torch"))
        return cls(str(name), None if lr is None else float(lr), float(wd), semantics, data)


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

    KEYS = ("type", "step_size", "milestones", "gamma", "total_steps", "min_factor", "warmup_steps",
            "warmup_start_factor", "unit")

    @classmethod
    def from_dict(cls, data: Any) -> "LRSchedule":
        if not isinstance(data, Mapping):
            raise SpecError(f"schedule: expected a mapping like {{type: step, step_size: 10}}, got {data!r}")
        check_keys(data, "schedule", cls.KEYS)
        kind = data.get("type", "constant")
        if kind not in SCHEDULE_TYPES:
            raise SpecError(f"schedule.type: {kind!r}{_close(str(kind), SCHEDULE_TYPES)}; "
                            f"use one of {', '.join(SCHEDULE_TYPES)}")
        if data.get("unit", "step") not in ("step", "epoch"):
            raise SpecError(f"schedule.unit: {data['unit']!r}; use 'step' or 'epoch'")
        need = {"step": "step_size", "multistep": "milestones", "cosine": "total_steps"}.get(kind)
        if need and not data.get(need):
            raise SpecError(f"schedule: type {kind} needs {need}")
        return cls(kind, int(data.get("step_size", 0)), tuple(sorted(int(m) for m in data.get("milestones", ()))),
                   float(data.get("gamma", 0.1)), int(data.get("total_steps", 0)),
                   float(data.get("min_factor", 0.0)), int(data.get("warmup_steps", 0)),
                   float(data.get("warmup_start_factor", 0.0)), data.get("unit", "step"))

    def in_steps(self, steps_per_epoch: int | None) -> "LRSchedule":
        """The same schedule counted in optimizer steps."""
        if self.unit == "step":
            return self
        if not steps_per_epoch:
            raise SpecError("schedule.unit is 'epoch': pass steps_per_epoch to tunespec.scheduler")
        k = steps_per_epoch
        return LRSchedule(self.type, self.step_size * k, tuple(m * k for m in self.milestones), self.gamma,
                        self.total_steps * k, self.min_factor, self.warmup_steps * k,
                        self.warmup_start_factor, "step")

    def factor(self, t: int) -> float:
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


# Parsers of the sections other modules own (``init``, ``stages``): name -> parse(value, data).
SECTION_PARSERS: dict[str, Callable[[Any, Mapping[str, Any]], Any]] = {}


@dataclass(frozen=True)
class Recipe:
    spec: Spec
    optimizer: OptimizerSpec | None = None
    schedule: LRSchedule | None = None
    sections: Mapping[str, Any] = field(default_factory=dict)  # parsed by SECTION_PARSERS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        spec = Spec.from_dict(data)
        opt = data.get("optimizer")
        sched = data.get("schedule")
        sections = {k: parse(data[k], data) for k, parse in SECTION_PARSERS.items()
                    if data.get(k) is not None}
        return cls(spec, None if opt is None else OptimizerSpec.from_dict(opt),
                   None if sched is None else LRSchedule.from_dict(sched), sections)


def load_recipe(source: "str | Path | Mapping[str, Any] | Recipe | Spec") -> Recipe:
    """A recipe from a file, a mapping, or a bare spec."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Spec):
        return Recipe(source)
    if isinstance(source, (str, Path)):
        try:
            return Recipe.from_dict(read_recipe(source))
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None
    if isinstance(source, Mapping):
        return Recipe.from_dict(source)
    raise SpecError(f"expected a recipe path, a mapping or a Spec, got {type(source).__name__}")


def load_spec(path: str | Path) -> Spec:
    """The spec of a recipe file; every section is validated, unknown top-level keys are errors."""
    return load_recipe(path).spec
