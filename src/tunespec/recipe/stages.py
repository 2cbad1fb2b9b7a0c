"""The ``stages`` recipe section: later specs switched to at an epoch, a step or a plateau
(:class:`tunespec.lifecycle.stages.StageRunner` runs them live).

```yaml
preset: heads                      # stage 0: the recipe's own spec
optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
stages:
  mode: min                        # the metric given to step() improves downwards (a loss)
  then:
    - {at_epoch: 3, preset: '4+', lr_factor: 0.1, restore_best: true}
    - {on_plateau: 2, preset: all, restore_best: true}
```
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from tunespec.errors import SpecError
from tunespec.recipe import validate as V
from tunespec.recipe.ramps import Ramp
from tunespec.recipe.schedule import LRSchedule
from tunespec.recipe.spec import SPEC_KEYS, Spec, check_keys

TRIGGERS = ("at_epoch", "at_step", "on_plateau")
STAGE_KEYS = ("name", *TRIGGERS, "min_delta", "restore_best", "lr_factor", "ramp", "restart", "schedule")
# Spec keys a stage takes from the recipe unless it gives its own: what trains changes between
# stages, how multipliers, groups and BatchNorm are set up usually does not.
INHERITED = ("lr_mult", "wd_mult", "groups", "bn", "strict", "layer_decay")


@dataclass(frozen=True)
class Stage:
    """One stage: its spec, when it starts, and what happens when it does."""

    name: str
    spec: Spec
    trigger: str | None = None  # None for stage 0; else one of TRIGGERS
    at: int = 0  # the epoch, step or patience (epochs without improvement)
    min_delta: float = 0.0
    restore_best: bool = False
    lr_factor: float = 1.0
    ramp: Ramp | None = None  # how the lr of the parameters it newly unfreezes grows
    restart: bool = False  # the lr schedule starts again at the stage's first step
    schedule: LRSchedule | None = None  # the stage's own lr schedule, from its first step

    def to_dict(self) -> dict[str, Any]:
        """Every field, the lr options only where set: what run checkpoints compare, so a run
        without them reads the same as before they existed."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, default in (("ramp", None), ("restart", False), ("schedule", None)):
            if out[key] == default:
                del out[key]
        return out

    @property
    def resets_schedule(self) -> bool:
        return self.restart or self.schedule is not None

    @classmethod
    def from_dict(cls, data: Any, origin: str, base: Mapping[str, Any]) -> "Stage":
        """One stage entry. ``at_epoch: N`` starts the stage at the beginning of epoch N
        (epochs count from 0), so N >= 1: what trains from the start is the recipe's own spec."""
        data = V.mapping(data, origin, "{at_epoch: 5, preset: '4+'}")
        known = STAGE_KEYS + SPEC_KEYS
        V.keys(data, origin, known, "stage key")
        triggers = [k for k in TRIGGERS if k in data]
        if len(triggers) != 1:
            raise SpecError(f"{origin}: give exactly one of {', '.join(TRIGGERS)} (when the stage starts), "
                            f"got {triggers or 'none'}")
        trigger = triggers[0]
        if trigger == "at_epoch" and data[trigger] == 0 and not isinstance(data[trigger], bool):
            raise SpecError(f"{origin}.at_epoch: 0 would start the stage before training; put its "
                            f"spec in the recipe's own keys (stage 0), or start it at epoch 1 or later")
        at = V.count(data[trigger], f"{origin}.{trigger}")
        spec_part = {k: v for k, v in data.items() if k in SPEC_KEYS}
        if not set(spec_part) - set(INHERITED):
            raise SpecError(f"{origin}: the stage sets no spec; give preset, freeze, train or rules")
        for key in INHERITED:
            if key not in spec_part and key in base:
                spec_part[key] = base[key]
        try:
            spec = Spec.from_dict(spec_part)
        except SpecError as exc:
            raise SpecError(f"{origin}: {exc}") from None
        factor = V.number(data.get("lr_factor", 1.0), f"{origin}.lr_factor", minimum=0.0,
                          min_exclusive=True, maximum=V.MAX_FACTOR)
        restore = V.boolean(data.get("restore_best", False), f"{origin}.restore_best")
        if "min_delta" in data and trigger != "on_plateau" and not restore:
            raise SpecError(f"{origin}.min_delta: has no effect on an {trigger} stage that does not "
                            f"restore_best; remove it")
        delta = V.number(data.get("min_delta", 0.0), f"{origin}.min_delta", minimum=0.0,
                         maximum=V.MAX_FACTOR)
        raw_name = data.get("name")
        if isinstance(raw_name, int) and not isinstance(raw_name, bool) and abs(raw_name) < 10**18:
            raw_name = str(raw_name)  # YAML reads `name: 2` as an int
        name = spec.preset_name or origin if raw_name is None else V.string(
            raw_name, f"{origin}.name", max_length=200)
        ramp = None if data.get("ramp") is None else Ramp.from_dict(data["ramp"], f"{origin}.ramp")
        restart = V.boolean(data.get("restart", False), f"{origin}.restart")
        schedule = None
        if data.get("schedule") is not None:
            if "restart" in data:
                raise SpecError(f"{origin}.restart: a stage's own schedule always starts at the stage's "
                                f"first step; remove restart")
            try:
                schedule = LRSchedule.from_dict(data["schedule"])
            except SpecError as exc:
                raise SpecError(f"{origin}.{exc}") from None
        return cls(name, spec, trigger, at, delta, restore, factor, ramp, restart, schedule)


@dataclass(frozen=True)
class StagesSpec:
    stages: tuple[Stage, ...]  # the later stages, in order
    mode: str = "min"

    @classmethod
    def from_dict(cls, data: Any, recipe: Mapping[str, Any] | None = None) -> "StagesSpec":
        if isinstance(data, (list, tuple)):
            data = {"then": data}
        data = V.mapping(data, "stages", "{mode: min, then: [...]} or a list of stages")
        V.tree(data, "stages")
        check_keys(data, "stages", ("mode", "then"))
        mode = V.choice(data.get("mode", "min"), "stages.mode", ("min", "max"),
                        "use min (a loss) or max (an accuracy)")
        then = V.sequence(data.get("then"), "stages.then", what="a list of stages", max_length=1000,
                          nonempty=True)
        stages = tuple(Stage.from_dict(s, f"stages.then[{i}]", recipe or {}) for i, s in enumerate(then))
        cls._check_order(stages, [f"stages.then[{i}]" for i in range(len(stages))])
        cls._check_restarts(stages, (recipe or {}).get("schedule") is not None)
        return cls(stages, mode)

    @staticmethod
    def _check_restarts(stages: tuple[Stage, ...], recipe_schedule: bool) -> None:
        """``restart`` needs an lr schedule to restart: the recipe's or an earlier stage's."""
        have = recipe_schedule
        for i, stage in enumerate(stages):
            if stage.restart and not have:
                raise SpecError(f"stages.then[{i}].restart: there is no lr schedule to restart (the "
                                f"recipe has no schedule section and no earlier stage gives one); add "
                                f"one, or give the stage its own schedule")
            have = have or stage.schedule is not None

    @staticmethod
    def _check_order(stages: tuple[Stage, ...], origins: list[str]) -> None:
        """Epoch and step triggers strictly increase along the list: stages start in list order,
        so a repeated or earlier trigger would start a stage later than it says."""
        last: dict[str, tuple[int, str]] = {}
        for stage, origin in zip(stages, origins, strict=True):
            if stage.trigger in ("at_epoch", "at_step"):
                prev = last.get(stage.trigger)
                if prev is not None and stage.at <= prev[0]:
                    raise SpecError(f"{origin}.{stage.trigger}: {stage.at} is not after {prev[1]}'s "
                                    f"{prev[0]}; stages run in list order, so their {stage.trigger} "
                                    f"must strictly increase")
                last[stage.trigger] = (stage.at, origin)
