"""Every tensor group's effective lr over a staged run, computed without a framework.

``lr_timeline`` replays what :class:`tunespec.StageRunner` decides (stage starts, lr factors of
newly unfrozen tensors, ramps, schedule restarts and per-stage schedules) step by step, with the
same arithmetic, so that ``tunespec lr-plot`` can show a recipe before anything trains. Plateau
stages depend on metrics; the timeline stops before the first one and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tunespec.recipe import validate as V
from tunespec.errors import SpecError
from tunespec.lifecycle.ramps import LRClock
from tunespec.recipe.recipe import Recipe, load_recipe
from tunespec.lifecycle.stages import StageRunner

MAX_TIMELINE_STEPS = 10**6


@dataclass
class Timeline:
    steps: int
    steps_per_epoch: int
    starts: list[tuple[int, str]]  # (first step, stage name) of each stage that starts in the run
    series: dict[str, list[float | None]]  # group label -> lr at every step (None: frozen)
    members: dict[str, list[str]] = field(default_factory=dict)  # group label -> tensor names
    notes: list[str] = field(default_factory=list)

    def stage_at(self, t: int) -> str:
        name = self.starts[0][1]
        for start, stage in self.starts:
            if start <= t:
                name = stage
        return name

    def table(self, every: int | None = None) -> str:
        """One row per epoch (or every ``every`` steps) and at each stage change."""
        every = every or self.steps_per_epoch
        rows = sorted({t for t in range(0, self.steps, every)} | {s for s, _ in self.starts if s < self.steps})
        labels = list(self.series)
        head = ["step", "epoch", "stage", *labels]
        body = []
        changes = {s: n for s, n in self.starts}
        for t in rows:
            stage = ("> " + changes[t]) if t in changes and t > 0 else self.stage_at(t)
            cells = [str(t), str(t // self.steps_per_epoch), stage]
            cells += ["-" if self.series[k][t] is None else f"{self.series[k][t]:.4g}" for k in labels]
            body.append(cells)
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
        legend = [f"{k}: {', '.join(self.members[k][:4])}{' ...' if len(self.members[k]) > 4 else ''} "
                  f"({len(self.members[k])} tensors)" for k in labels if k in self.members]
        return "\n".join(lines + legend + self.notes)


def _stage_starts(recipe: Recipe, steps_per_epoch: int, steps: int) -> tuple[list[int], list[str]]:
    """The first step of each stage that starts within ``steps`` (stage 0 at step 0)."""
    section = recipe.sections.get("stages")
    starts, notes = [0], []
    for stage in section.stages if section else ():
        if stage.trigger == "on_plateau":
            notes.append(f"stage {stage.name!r} starts on a plateau of the metric: not shown, nor any after it")
            break
        at = stage.at * steps_per_epoch if stage.trigger == "at_epoch" else stage.at
        at = max(at, starts[-1])
        if at >= steps:
            break
        starts.append(at)
    return starts, notes


def lr_timeline(recipe: Any, epochs: int, steps_per_epoch: int = 1,
                trainable: Sequence[Mapping[str, float]] | None = None, lr: float | None = None) -> Timeline:
    """Each group's lr at every optimizer step of ``epochs`` epochs.

    ``trainable`` gives, per stage (0 first), the trainable tensors' names and lr multipliers, as a
    plan of that stage's spec on a model has them; without it each stage stands for one
    pseudo-group of the tensors it newly unfreezes (multiplier 1). ``lr`` overrides the recipe's.
    """
    epochs = V.count(epochs, "lr_timeline: epochs")
    steps_per_epoch = V.count(steps_per_epoch, "lr_timeline: steps_per_epoch")
    steps = epochs * steps_per_epoch
    if steps > MAX_TIMELINE_STEPS:
        raise SpecError(f"lr_timeline: {steps} steps is more than {MAX_TIMELINE_STEPS}; use fewer "
                        f"epochs or steps per epoch")
    runner = StageRunner(load_recipe(recipe), steps_per_epoch)
    base = lr if lr is not None else (runner.recipe.optimizer.lr if runner.recipe.optimizer else None)
    if base is None:
        raise SpecError("lr_timeline: the recipe has no optimizer lr; add optimizer: {lr: ...} or pass lr")
    base = V.number(base, "lr_timeline: lr", minimum=0.0, min_exclusive=True, maximum=V.MAX_FACTOR)
    starts, notes = _stage_starts(runner.recipe, steps_per_epoch, steps)
    stages = runner.stages[:len(starts)]
    if trainable is None:
        trainable = [{f"stage{j}:{s.name}": 1.0 for j, s in enumerate(stages[:i + 1])}
                     for i in range(len(stages))]
    if len(trainable) < len(stages):
        raise SpecError(f"lr_timeline: trainable lists {len(trainable)} stages, the run reaches {len(stages)}")
    per_tensor = _replay(runner, stages, starts, trainable, base, steps, steps_per_epoch)
    series, members = _groups(per_tensor)
    return Timeline(steps, steps_per_epoch, [(s, st.name) for s, st in zip(starts, stages, strict=True)],
                    series, members, notes)


def _replay(runner: Any, stages: Sequence[Any], starts: list[int], trainable: Sequence[Mapping[str, float]],
            base: float, steps: int, steps_per_epoch: int) -> dict[str, list[float | None]]:
    """Every tensor's lr per step, with the runner's arithmetic (see StageRunner._group_lrs)."""
    clock = LRClock(None if runner.recipe.schedule is None else runner.recipe.schedule.in_steps(steps_per_epoch))
    names = list(dict.fromkeys(n for stage in trainable[:len(stages)] for n in stage))
    out: dict[str, list[float | None]] = {n: [None] * steps for n in names}
    factor_of: dict[str, float] = {}
    ramp_of: dict[str, int] = {}
    for i, stage in enumerate(stages):
        begin, end = starts[i], starts[i + 1] if i + 1 < len(starts) else steps
        now = trainable[i]
        for table in (factor_of, ramp_of):
            for n in [n for n in table if n not in now]:
                del table[n]
        for n in now:
            if n not in factor_of:
                factor_of[n] = 1.0 if i == 0 else stage.lr_factor
                if i > 0 and stage.ramp is not None:
                    ramp_of[n] = i
        if i > 0 and stage.resets_schedule:
            clock.offset = begin
            if stage.schedule is not None:
                clock.schedule = stage.schedule.in_steps(steps_per_epoch)
        for t in range(begin, end):
            f = clock.factor(t)
            for n, mult in now.items():
                target = base * mult * factor_of[n]
                j = ramp_of.get(n)
                if j is None:
                    out[n][t] = target * f
                    continue
                ramp = stages[j].ramp
                if ramp.per == "epoch":
                    k = t // steps_per_epoch - starts[j] // steps_per_epoch
                    out[n][t] = ramp.lr(target, k) * f
                else:
                    out[n][t] = target * (f * ramp.lr(1.0, t - starts[j]))
    return out


def _groups(per_tensor: Mapping[str, list[float | None]]) -> tuple[dict[str, list], dict[str, list[str]]]:
    """Tensors with the same lr at every step form one group, labelled by what they share."""
    by_series: dict[tuple, list[str]] = {}
    for name, values in per_tensor.items():
        by_series.setdefault(tuple(values), []).append(name)
    series, members = {}, {}
    for i, (values, names) in enumerate(by_series.items()):
        label = _label(names, i)
        series[label], members[label] = list(values), names
    return series, members


def _label(names: list[str], index: int) -> str:
    """A group's name: the one tensor, the dotted prefix all share, or their top-level modules."""
    if len(names) == 1:
        return names[0]
    parts = [n.split(".") for n in names]
    common = []
    for bits in zip(*parts, strict=False):
        if len(set(bits)) != 1:
            break
        common.append(bits[0])
    if common:
        return f"G{index}:{'.'.join(common)}.*"
    tops = list(dict.fromkeys(p[0] for p in parts))
    return f"G{index}:{'+'.join(tops[:3])}{'+...' if len(tops) > 3 else ''}"
