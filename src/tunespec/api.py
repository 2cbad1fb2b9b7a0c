"""The top-level calls: plan, apply, optimizer."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Mapping

from .dispatch import backend_for
from .errors import SpecError
from .plan import Plan
from .spec import Spec, load_spec

SpecLike = Spec | Mapping[str, Any] | str | Path

# The plan most recently applied to each model, so optimizer() does not re-apply needlessly.
_APPLIED: "weakref.WeakKeyDictionary[Any, Plan]" = weakref.WeakKeyDictionary()


def as_spec(spec: SpecLike) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, (str, Path)):
        return load_spec(spec)
    if isinstance(spec, Mapping):
        return Spec.from_dict(spec)
    raise SpecError(f"expected a Spec, a mapping or a recipe path, got {type(spec).__name__}")


def plan(model: Any, spec: SpecLike, backend: str | None = None, strict: bool | None = None) -> Plan:
    """What ``spec`` would do to ``model``; no side effects. ``strict`` overrides the spec's."""
    be = backend_for(model, backend)
    s = as_spec(spec).with_strict(strict)
    return Plan(model, s, be, be.listing(model))


def apply(model: Any, spec: SpecLike, backend: str | None = None, strict: bool | None = None) -> Plan:
    """Plan and apply; returns the applied plan (``plan.restore()`` undoes it)."""
    p = plan(model, spec, backend, strict).apply()
    try:
        _APPLIED[model] = p
    except TypeError:  # a model that cannot be weakly referenced is simply not remembered
        pass
    return p


def optimizer(model: Any, spec: SpecLike, name: Any = "sgd", lr: float | None = None,
              weight_decay: float = 0.0, backend: str | None = None, **options: Any) -> Any:
    """A torch optimizer or a Gluon Trainer for ``spec``, applying it first unless it already is."""
    s = as_spec(spec)
    try:
        current = _APPLIED.get(model)
    except TypeError:
        current = None
    if current is None or not current.applied or current.spec != s or (
            backend is not None and backend != current.backend.name):
        current = apply(model, s, backend)
    return current.optimizer(name, lr=lr, weight_decay=weight_decay, **options)
