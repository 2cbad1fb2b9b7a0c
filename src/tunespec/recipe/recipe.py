"""A recipe: the spec plus its sections (optimizer, lr schedule, stages, init), in framework-neutral
terms, read from a file or a mapping.

```yaml
freeze: ['.*']
train: ['layer4\\..*', 'fc\\..*']
optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 5.0e-4, semantics: torch}
schedule: {type: multistep, milestones: [30, 45], gamma: 0.1, warmup_steps: 5}
```
Schedules count optimizer steps (``unit: epoch`` counts epochs; then pass ``steps_per_epoch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from tunespec.errors import SpecError
from tunespec.recipe.init import InitSpec
from tunespec.recipe.optimizer import OptimizerSpec
from tunespec.recipe.read import read_recipe
from tunespec.recipe.schedule import LRSchedule
from tunespec.recipe.spec import Spec
from tunespec.recipe.stages import StagesSpec

# Sections with their own parser -> parse(value, whole recipe); optimizer and schedule are fields.
SECTION_PARSERS: Mapping[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "stages": StagesSpec.from_dict,
    "init": InitSpec.from_dict,
}



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
            raise SpecError(f"{str(source)[:200]}: {exc}") from None
    if isinstance(source, Mapping):
        return Recipe.from_dict(source)
    raise SpecError(f"expected a recipe path, a mapping or a Spec, got {type(source).__name__}")


def load_spec(path: str | Path) -> Spec:
    """The spec of a recipe file; every section is validated, unknown top-level keys are errors."""
    return load_recipe(path).spec
