"""One learning-rate model for every backend: each group's lr and weight decay at any step.

A trainable parameter's lr at optimizer step t is::

    base lr x lr_mult (layer decay included) x stage lr_factor x ramp x schedule factor(t)

The functions here compute those numbers from the stage runner's plain state (:class:`LRBook`);
a backend only reads where its optimizer stands (``lr_state``) and installs the table computed
here (``install_lrs``): torch as param groups plus one ``LambdaLR``, Gluon as ``lr_mult`` plus its
scheduler. Every function costs O(1) per step (a ramp's products are continued from the last
call, the onecycle position is summed in jumps), so a run's lr cost is linear in its length.

>>> from tunespec.recipe.ramps import Ramp
>>> group_lr(0.1, Ramp(start=0.5, growth=2.0), 1, factor=0.5)  # ramp grown once, schedule at half
0.05
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from tunespec.backend_api import LRGroup, LRState, LRTable
from tunespec.errors import SpecError
from tunespec.recipe.ramps import Ramp

Factor = Callable[[int], float]


@dataclass
class LRBook:
    """What a stage runner knows about lrs, as plain values (copied whole to roll back).

    ``schedule`` is the lr schedule counted in steps (None: factor 1) and ``offset`` the step it
    (re)started at; ``factors`` / ``ramp_of`` map ``id(parameter)`` to the stage factor it joined
    with and the stage whose ramp it follows; ``ramp_from`` maps a ramping stage to the epoch of
    the ``step()`` call that started it (per-epoch ramps; None: not known yet) or the optimizer
    step it started at (per-step ramps); ``last_epoch`` is the epoch of the last ``step()`` call;
    ``steps`` the (lr scheduler, optimizer) step counts seen at the last ``step()`` call.
    """

    schedule: Any = None
    offset: int = 0
    factors: dict[int, float] = field(default_factory=dict)
    ramp_of: dict[int, int] = field(default_factory=dict)
    ramp_from: dict[int, int | None] = field(default_factory=dict)
    last_epoch: int | None = None
    steps: tuple[int, int | None] | None = None

    def copy(self) -> "LRBook":
        return replace(self, factors=dict(self.factors), ramp_of=dict(self.ramp_of),
                       ramp_from=dict(self.ramp_from))

    def factor(self, t: int) -> float:
        """The lr schedule's factor at optimizer step t (1 without a schedule)."""
        if self.schedule is None:
            return 1.0
        return self.schedule.factor(max(t - self.offset, 0))


def group_lr(target: float, ramp: Ramp | None, k: int, factor: float) -> float:
    """One group's lr: ``target`` (base lr x lr_mult x lr_factor) under its ramp after ``k``
    growths (epochs or optimizer steps since the ramp started), times the schedule ``factor``.
    The products are taken in the order the installed lr schedulers take them, so a timeline
    equals what training sees, bit for bit."""
    if ramp is None:
        return target * factor
    if ramp.per == "epoch":
        return ramp.lr(target, k) * factor
    return target * (factor * ramp.ratio(k))


def ramp_growths(book: LRBook, index: int, epoch: int | None) -> int:
    """How many times stage ``index``'s per-epoch ramp has grown by now: once per epoch since the
    step(epoch) call that started it (``epoch`` None: the last epoch step() was given)."""
    start = book.ramp_from.get(index)
    if start is None:
        if epoch is None:
            return 0  # started by advance(), no step() since
        # started by advance() after the previous step(): it ran the epoch that just ended
        start = book.ramp_from[index] = epoch - 1
    now = epoch if epoch is not None else book.last_epoch
    return 0 if now is None else max(now - start, 0)


def schedule_function(get_book: Callable[[], LRBook]) -> Factor:
    """The schedule factor as a plain function of the step, reading the runner's current book
    when called: a torch LambdaLR stores nothing of it, and resuming replaces the book."""
    def factor(t: int) -> float:
        return get_book().factor(t)

    return factor


def step_ramp(get_book: Callable[[], LRBook], index: int, ramp: Ramp) -> Factor:
    """A per-step ramp's own factor at optimizer step t (where it started is read when called)."""
    def ratio(t: int) -> float:
        start = get_book().ramp_from.get(index) or 0
        return ramp.ratio(max(t - start, 0))

    return ratio


def multiplier(book: LRBook, stages: Sequence[Any], key: int, lr_mult: float, epoch: int | None) -> float:
    """A trainable parameter's constant multiplier of the base lr (Gluon's ``lr_mult``): lr_mult x
    lr_factor, ramped where it ramps (a per-step ramp starts at its ``start``)."""
    ramp_index = book.ramp_of.get(key)
    mult = lr_mult * book.factors[key]
    if ramp_index is None:
        return mult
    ramp = stages[ramp_index].ramp
    if ramp.per == "step":
        return ramp.lr(mult, 0)
    return ramp.lr(mult, ramp_growths(book, ramp_index, epoch))


def stage_table(book: LRBook, get_book: Callable[[], LRBook], stages: Sequence[Any], state: LRState,
                trainable: Sequence[tuple[Any, str, float, float]], epoch: int | None, restarted: bool,
                scheduled: bool, added: Sequence[Any] = (), removed: Sequence[Any] = ()) -> LRTable:
    """The table to install after a stage change or as ramps grow.

    ``trainable``: (handle, canonical name, lr_mult, wd_mult) of every trainable parameter.
    Every parameter's group: installed groups keep their place, new keys follow. A group's lr and
    initial lr (the lr scheduler's base lr) are computed where they change: new groups, ramped
    groups, and every group when the lr schedule restarts; the others are left as installed.
    The lr is the initial lr x the schedule's factor now; a restart keeps a group's own base lr.
    """
    keys = [(g.lr_mult, g.wd_mult, g.lr_factor, g.ramp) for g in state.groups]
    where = {key: i for i, key in reversed(list(enumerate(keys)))}
    members: list[tuple[list[Any], list[str]]] = [([], []) for _ in keys]
    for handle, name, lr_mult, wd_mult in trainable:
        key = (lr_mult, wd_mult, book.factors[id(handle)], book.ramp_of.get(id(handle)))
        if key not in where:
            where[key] = len(keys)
            keys.append(key)
            members.append(([], []))
        params, names = members[where[key]]
        params.append(handle)
        names.append(name)
    base, wd, now = state.lr, state.weight_decay, state.step
    current = state.groups
    scale = 1.0
    if scheduled and current and current[0].initial_lr:
        scale = current[0].lr / current[0].initial_lr
    if restarted:
        scale = book.factor(now)
    groups = []
    for i, (key, (params, names)) in enumerate(zip(keys, members, strict=True)):
        old = current[i] if i < len(current) else None
        values: dict[str, Any] = {}
        if base is not None and (old is None or key[3] is not None or restarted):
            values = _group_values(book, get_book, stages, key, base, old, scale, now, epoch)
            if old is None and wd is not None:
                values["weight_decay"] = wd * key[1]
        groups.append(LRGroup(tuple(params), tuple(names), key[0], key[1], key[2], key[3], **values))
    return LRTable(tuple(groups), None, tuple(added), tuple(removed))


def _group_values(book: LRBook, get_book: Callable[[], LRBook], stages: Sequence[Any], key: tuple,
                  base: float, old: LRGroup | None, scale: float, now: int, epoch: int | None) -> dict:
    """One group's lr, initial lr and (per-step ramp) factor functions."""
    target = base * key[0] * key[2]
    initial, ramp_index = target, key[3]
    if ramp_index is not None and stages[ramp_index].ramp.per == "epoch":
        initial = stages[ramp_index].ramp.lr(target, ramp_growths(book, ramp_index, epoch))
    if old is not None and ramp_index is None and old.initial_lr is not None:
        initial = old.initial_lr
    if ramp_index is None or stages[ramp_index].ramp.per == "epoch":
        return {"lr": initial * scale, "initial_lr": initial}
    ratio, clock, mult = step_ramp(get_book, ramp_index, stages[ramp_index].ramp), get_book, key[0] * key[2]

    def factor(t: int) -> float:  # torch's LambdaLR and Gluon's adapter grow it
        return clock().factor(t) * ratio(t)

    return {"lr": initial * factor(now), "initial_lr": initial, "factor": factor,
            "mult_at": lambda t: mult * ratio(t)}


def ramps_growing(book: LRBook, stages: Sequence[Any], epoch: int) -> bool:
    """Whether a per-epoch ramp may still be below its ceiling (so this step() call grows it);
    one growth past the count that reaches it, so rounding never stops a ramp short."""
    for i in set(book.ramp_of.values()):
        ramp = stages[i].ramp
        if ramp.per == "epoch" and ramp_growths(book, i, epoch) <= ramp.steps_to_ceiling() + 1:
            return True
    return False


def book_state(book: LRBook) -> dict[str, Any]:
    """The part of a run checkpoint's runner state the lrs need (empty when nothing ramped or
    restarted, so such checkpoints read as before)."""
    if not book.ramp_from and not book.offset:
        return {}
    return {"ramps": {str(k): v for k, v in book.ramp_from.items()}, "lr_offset": book.offset,
            "last_epoch": book.last_epoch}


def book_from_state(book: LRBook, state: Mapping[str, Any], stages: int) -> LRBook:
    """A copy of ``book`` with where ramps started and where the schedule last restarted, read
    from a checkpoint: every field validated (ints only, stage indices in range)."""
    ramps = state.get("ramps", {})
    offset = state.get("lr_offset", 0)
    if not isinstance(ramps, Mapping) or not _count(offset):
        raise SpecError("resume: the checkpoint's ramp / lr schedule state is not valid")
    try:
        ramp_from = {int(k): v for k, v in ramps.items()}
    except (TypeError, ValueError):
        raise SpecError("resume: the checkpoint's ramp state is not valid") from None
    if any(not 0 < k < stages or not (v is None or _count(v)) for k, v in ramp_from.items()):
        raise SpecError("resume: the checkpoint's ramp state is not valid")
    last = state.get("last_epoch")
    out = book.copy()
    out.ramp_from, out.offset = ramp_from, offset
    out.last_epoch = last if _count(last) else None
    return out


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**15


def check_stepped(book: LRBook, state: LRState, strict: bool) -> tuple[int, int | None]:
    """Catch the silent no-op of a training loop that never steps the runner's lr scheduler: the
    optimizer stepped since the last epoch, the lr schedule did not. Returns the counts to keep."""
    counts = (state.step, state.optimizer_steps)
    if book.steps is None or state.optimizer_steps is None or book.steps[1] is None:
        return counts
    if state.optimizer_steps > book.steps[1] and state.step == book.steps[0]:
        message = (f"the lr scheduler did not advance during the last epoch ({state.optimizer_steps - book.steps[1]} "
                   f"optimizer steps), so the recipe's lr schedule is not running: call "
                   f"runner.lr_scheduler.step() after every optimizer.step()")
        if strict:
            raise SpecError(message)
        warnings.warn(message, stacklevel=3)
    return counts


def check_stage_starts(stages: Sequence[Any], schedule: Any, steps_per_epoch: int | None) -> None:
    """A stage that starts at or after the end of the lr schedule in effect (a cosine or onecycle
    of N steps or epochs) would train at the schedule's final factor: refused unless it restarts
    the schedule or brings its own. Checked where both count the same unit (or ``steps_per_epoch``
    converts); a plateau stage ends the check (its start is not known)."""
    current, since = schedule, (0, "step")  # the schedule in effect and where it started
    for stage in stages[1:]:
        if stage.trigger == "on_plateau":
            return
        unit = "epoch" if stage.trigger == "at_epoch" else "step"
        start = _position(stage.at, unit, steps_per_epoch)
        if current is not None and current.total_steps and not stage.resets_schedule:
            end = _position(current.total_steps, current.unit, steps_per_epoch)
            origin = since if since[0] else (0, end[1])
            if start[1] == end[1] == origin[1] and start[0] >= origin[0] + end[0]:
                raise SpecError(f"stage {stage.name!r}: starts at {unit} {stage.at}, when the {current.type} "
                                f"lr schedule has ended ({current.total_steps} {current.unit}s), so it "
                                f"would train at the schedule's final lr; lengthen the schedule, or give "
                                f"the stage restart: true or its own schedule")
        if stage.resets_schedule:
            current, since = (stage.schedule or current), start


def _position(n: int, unit: str, steps_per_epoch: int | None) -> tuple[int, str]:
    """``n`` epochs or steps as (count, unit), in steps where ``steps_per_epoch`` is known."""
    if steps_per_epoch and unit == "epoch":
        return n * steps_per_epoch, "step"
    return n, unit
