"""Every tensor group's effective lr over a staged run, computed without a framework.

``lr_timeline`` replays what :class:`tunespec.StageRunner` decides (stage starts, lr factors of
newly unfrozen tensors, ramps, schedule restarts and per-stage schedules) step by step, with the
same arithmetic, so that ``tunespec lr-plot`` can show a recipe before anything trains. Plateau
stages depend on metrics; the timeline stops before the first one and says so.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Mapping

from tunespec.errors import SpecError
from tunespec.lifecycle import lrs
from tunespec.lifecycle.lrs import LRBook
from tunespec.lifecycle.stages import StageRunner
from tunespec.recipe import validate as V
from tunespec.recipe.recipe import Recipe, load_recipe

MAX_TIMELINE_STEPS = 10**6


# The table shows at most this many rows and the picture this many points per group: a
# timeline's memory is groups x shown points, whatever the run's length.
MAX_ROWS = 2000
MAX_POINTS = 2000


class Series(Sequence):
    """One group's lr at every step (None: frozen), computed when read, O(1) per step: nothing
    of the run's length is stored. Compares equal to the list of its values."""

    def __init__(self, steps: int, starts: list[int], stages: Sequence[Any], clocks: list[LRBook],
                 entries: tuple[tuple[float, int | None] | None, ...], steps_per_epoch: int):
        self._steps, self._starts, self._stages, self._clocks = steps, starts, stages, clocks
        self._entries, self._per_epoch = entries, steps_per_epoch

    def __len__(self) -> int:
        return self._steps

    def __getitem__(self, t: Any) -> Any:
        if isinstance(t, slice):
            return [self[i] for i in range(*t.indices(self._steps))]
        if not -self._steps <= t < self._steps:
            raise IndexError(t)
        t %= self._steps
        i = bisect.bisect_right(self._starts, t) - 1
        entry = self._entries[i]
        if entry is None:
            return None
        target, j = entry
        factor = self._clocks[i].factor(t)
        if j is None:
            return lrs.group_lr(target, None, 0, factor)
        ramp = self._stages[j].ramp
        k = t // self._per_epoch - self._starts[j] // self._per_epoch if ramp.per == "epoch" else t - self._starts[j]
        return lrs.group_lr(target, ramp, k, factor)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Series, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass
class Timeline:
    steps: int
    steps_per_epoch: int
    starts: list[tuple[int, str]]  # (first step, stage name) of each stage that starts in the run
    series: dict[str, Series]  # group label -> lr at every step (None: frozen), computed when read
    members: dict[str, list[str]] = field(default_factory=dict)  # group label -> tensor names
    notes: list[str] = field(default_factory=list)

    def stage_at(self, t: int) -> str:
        return self.starts[bisect.bisect_right([s for s, _ in self.starts], t) - 1][1]

    def points(self, limit: int = MAX_POINTS) -> list[int]:
        """At most ``limit`` evenly spread steps, plus each stage's first step and the one before
        it, so that a picture of any length shows every change."""
        stride = max(1, -(-self.steps // limit))
        chosen = set(range(0, self.steps, stride)) | {self.steps - 1}
        chosen |= {t for s, _ in self.starts for t in (s - 1, s) if 0 <= t < self.steps}
        return sorted(chosen)

    def table(self, every: int | None = None) -> str:
        """One row per epoch (or every ``every`` steps) and at each stage change; at most MAX_ROWS
        rows (a longer run shows every n-th, and says so)."""
        every = every or self.steps_per_epoch
        notes = list(self.notes)
        count = -(-self.steps // every)
        if count > MAX_ROWS:
            thin = -(-count // MAX_ROWS)
            notes.append(f"(every {thin * every} steps shown: the run has {count} rows of {every} steps)")
            every *= thin
        rows = sorted(set(range(0, self.steps, every)) | {s for s, _ in self.starts if s < self.steps})
        labels = list(self.series)
        head = ["step", "epoch", "stage", *labels]
        body = []
        changes = {s: n for s, n in self.starts}
        for t in rows:
            stage = ("> " + changes[t]) if t in changes and t > 0 else self.stage_at(t)
            cells = [str(t), str(t // self.steps_per_epoch), stage]
            values = [self.series[k][t] for k in labels]
            cells += ["-" if v is None else f"{v:.4g}" for v in values]
            body.append(cells)
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
        legend = [f"{k}: {', '.join(self.members[k][:4])}{' ...' if len(self.members[k]) > 4 else ''} "
                  f"({len(self.members[k])} tensors)" for k in labels if k in self.members]
        return "\n".join(lines + legend + notes)


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
    series, members = _groups(runner, stages, starts, trainable, base, steps, steps_per_epoch)
    return Timeline(steps, steps_per_epoch, [(s, st.name) for s, st in zip(starts, stages, strict=True)],
                    series, members, notes)


def _groups(runner: Any, stages: Sequence[Any], starts: list[int], trainable: Sequence[Mapping[str, float]],
            base: float, steps: int, steps_per_epoch: int) -> tuple[dict[str, Series], dict[str, list[str]]]:
    """Tensors with the same lr at every step form one group, labelled by what they share.

    A tensor's lrs follow from, per stage, its target lr (base x lr_mult x the factor it joined
    with) and the stage whose ramp it follows (the runner's arithmetic, see tunespec.lifecycle.lrs), so
    tensors with the same targets and ramps share one Series; nothing is computed per step here.
    """
    book = lrs.LRBook(None if runner.recipe.schedule is None else runner.recipe.schedule.in_steps(steps_per_epoch))
    clocks = []
    names = list(dict.fromkeys(n for stage in trainable[:len(stages)] for n in stage))
    entries: dict[str, list] = {n: [] for n in names}
    factor_of: dict[str, float] = {}
    ramp_of: dict[str, int] = {}
    for i, stage in enumerate(stages):
        now = trainable[i]
        factor_of = {n: f for n, f in factor_of.items() if n in now}
        ramp_of = {n: j for n, j in ramp_of.items() if n in now}
        for n in now:
            if n not in factor_of:
                factor_of[n] = 1.0 if i == 0 else stage.lr_factor
                if i > 0 and stage.ramp is not None:
                    ramp_of[n] = i
        if i > 0 and stage.resets_schedule:
            book = lrs.LRBook(book.schedule if stage.schedule is None else stage.schedule.in_steps(steps_per_epoch),
                              starts[i])
        clocks.append(book)
        for n in names:
            entries[n].append((base * now[n] * factor_of[n], ramp_of.get(n)) if n in now else None)
    by_entries: dict[tuple, list[str]] = {}
    for name in names:
        by_entries.setdefault(tuple(entries[name]), []).append(name)
    series, members = {}, {}
    for i, (key, group) in enumerate(by_entries.items()):
        label = _label(group, i)
        series[label] = Series(steps, starts, stages, clocks, key, steps_per_epoch)
        members[label] = group
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
