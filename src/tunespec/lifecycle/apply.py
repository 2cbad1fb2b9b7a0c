"""Applying a spec and building its optimizer and lr scheduler: ``tunespec.apply``,
``tunespec.optimizer``, ``tunespec.scheduler``."""

from __future__ import annotations

from typing import Any, Mapping

from tunespec.dispatch import backend_for, backend_for_optimizer
from tunespec.errors import SpecError
from tunespec.planning.make import SpecLike, check_call, plan
from tunespec.planning.optimizers import check_optimizer
from tunespec.planning.plan import APPLIED, Plan, model_lock, remember_applied
from tunespec.recipe import validate
from tunespec.recipe.schedule import LRSchedule
from tunespec.recipe.recipe import load_recipe


def apply(model: Any, spec: SpecLike, backend: str | None = None, strict: bool | None = None) -> Plan:
    """Plan and apply; returns the applied plan (``plan.restore()`` undoes it)."""
    p = plan(model, spec, backend, strict).apply()
    remember_applied(model, p)
    return p


def optimizer(model: Any, spec: SpecLike, name: Any = None, lr: float | None = None,
              weight_decay: float | None = None, backend: str | None = None,
              semantics: str | None = None, lr_scale: bool = False, **options: Any) -> Any:
    """A torch optimizer or a Gluon Trainer for ``spec``, applying it first unless it already is.

    Arguments left out come from the recipe's ``optimizer`` section. ``semantics='torch'``
    (default) makes Gluon follow torch's update rules on fused operators, ``'torch-exact'`` in full
    precision; ``'native'`` keeps MXNet's own.
    Everything is checked before the model changes; if building still fails, an apply made here
    is undone. The spec is (re-)applied unless the model has exactly its settings now: another
    plan applied since, or a hand-made change, never leaves a stale optimizer. ``lr_scale`` gives
    torch groups the keys a timm scheduler reads (:meth:`tunespec.Plan.param_groups`).
    """
    check_call(backend, None)
    recipe = load_recipe(spec)
    o = recipe.optimizer
    name = name if name is not None else (o.name if o else "sgd")
    lr = lr if lr is not None else (o.lr if o else None)
    weight_decay = weight_decay if weight_decay is not None else (o.weight_decay if o else 0.0)
    semantics = semantics or (o.semantics if o else None)
    options = {**(dict(o.options) if o else {}), **options}
    be = backend_for(model, backend)
    semantics = check_optimizer(be, name, lr, weight_decay, semantics, options)
    with model_lock(model):
        try:
            current = APPLIED.get(model)
        except TypeError:
            current = None
        if current is not None and current.spec == recipe.spec and current.backend.name == be.name \
                and current.is_live():
            return current.optimizer(name, lr=lr, weight_decay=weight_decay, semantics=semantics,
                                     lr_scale=lr_scale, **options)
        fresh = plan(model, recipe.spec, be.name)  # planning changes nothing
        fresh.apply()
        try:
            opt = fresh.optimizer(name, lr=lr, weight_decay=weight_decay, semantics=semantics,
                                  lr_scale=lr_scale, **options)
        except BaseException:
            fresh.rollback()
            raise
        remember_applied(model, fresh)
        return opt


def scheduler(optimizer: Any, schedule: "SpecLike | LRSchedule | Mapping[str, Any]",
              steps_per_epoch: int | None = None) -> Any:
    """An lr scheduler for a torch optimizer (step it once per optimizer step) or, for a Gluon
    Trainer, the MXNet scheduler it now uses; both give the same lr at every step.
    The optimizer and the schedule are checked before the optimizer is touched."""
    be = backend_for_optimizer(optimizer)
    if steps_per_epoch is not None:
        validate.count(steps_per_epoch, "scheduler: steps_per_epoch")
    if isinstance(schedule, LRSchedule):
        sched = schedule
    elif isinstance(schedule, Mapping) and "type" in schedule:
        sched = LRSchedule.from_dict(schedule)
    else:
        sched = load_recipe(schedule).schedule
        if sched is None:
            raise SpecError("scheduler: the recipe has no schedule section")
    sched = sched.in_steps(steps_per_epoch)
    return be.attach_schedule(optimizer, sched.factor)
