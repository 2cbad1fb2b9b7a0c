"""The top-level calls: plan, apply, optimizer."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Mapping

from .dispatch import backend_for, backend_for_optimizer
from .errors import SpecError
from .listing import gc_paused
from .plan import Plan
from .recipe import LRSchedule, Recipe, load_recipe
from .spec import Spec

SpecLike = Spec | Recipe | Mapping[str, Any] | str | Path

# The plan most recently applied to each model, so optimizer() does not re-apply needlessly.
_APPLIED: "weakref.WeakKeyDictionary[Any, Plan]" = weakref.WeakKeyDictionary()


def as_spec(spec: SpecLike) -> Spec:
    return load_recipe(spec).spec


def plan(model: Any, spec: SpecLike, backend: str | None = None, strict: bool | None = None) -> Plan:
    """What ``spec`` would do to ``model``; no side effects. ``strict`` overrides the spec's."""
    be = backend_for(model, backend)
    s = as_spec(spec).with_strict(strict)
    with gc_paused():  # see gc_paused: a burst of small objects, none in cycles
        return Plan(model, s, be, be.listing(model))


def apply(model: Any, spec: SpecLike, backend: str | None = None, strict: bool | None = None) -> Plan:
    """Plan and apply; returns the applied plan (``plan.restore()`` undoes it)."""
    p = plan(model, spec, backend, strict).apply()
    try:
        _APPLIED[model] = p
    except TypeError:  # a model that cannot be weakly referenced is simply not remembered
        pass
    return p


def optimizer(model: Any, spec: SpecLike, name: Any = None, lr: float | None = None,
              weight_decay: float | None = None, backend: str | None = None,
              semantics: str | None = None, **options: Any) -> Any:
    """A torch optimizer or a Gluon Trainer for ``spec``, applying it first unless it already is.

    Arguments left out come from the recipe's ``optimizer`` section. ``semantics='torch'``
    (default) makes Gluon follow torch's update rules; ``'native'`` keeps MXNet's own.
    """
    recipe = load_recipe(spec)
    o = recipe.optimizer
    name = name if name is not None else (o.name if o else "sgd")
    lr = lr if lr is not None else (o.lr if o else None)
    weight_decay = weight_decay if weight_decay is not None else (o.weight_decay if o else 0.0)
    semantics = semantics or (o.semantics if o else "torch")  # checked by Plan.optimizer
    options = {**(dict(o.options) if o else {}), **options}
    try:
        current = _APPLIED.get(model)
    except TypeError:
        current = None
    if current is None or not current.applied or current.spec != recipe.spec or (
            backend is not None and backend != current.backend.name):
        current = apply(model, recipe.spec, backend)
    return current.optimizer(name, lr=lr, weight_decay=weight_decay, semantics=semantics, **options)


def scheduler(optimizer: Any, schedule: "SpecLike | LRSchedule | Mapping[str, Any]",
              steps_per_epoch: int | None = None) -> Any:
    """An lr scheduler for a torch optimizer (step it once per optimizer step) or, for a Gluon
    Trainer, the MXNet scheduler it now uses; both give the same lr at every step."""
    if isinstance(schedule, LRSchedule):
        sched = schedule
    elif isinstance(schedule, Mapping) and "type" in schedule:
        sched = LRSchedule.from_dict(schedule)
    else:
        sched = load_recipe(schedule).schedule
        if sched is None:
            raise SpecError("scheduler: the recipe has no schedule section")
    sched = sched.in_steps(steps_per_epoch)
    return backend_for_optimizer(optimizer).attach_schedule(optimizer, sched.factor)
