"""Making a plan: ``tunespec.plan(model, spec)`` and the spec-like inputs it accepts.

```python
from tunespec.planning.make import as_spec
spec = as_spec({"freeze": [".*"], "train": [r"fc\..*"]})
assert spec.rules[0].trainable is False
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tunespec.dispatch import backend_for, check_backend_name
from tunespec.errors import SpecError
from tunespec.planning.plan import Plan
from tunespec.recipe.recipe import Recipe, load_recipe
from tunespec.recipe.spec import Spec
from tunespec.recipe.validate import excerpt

SpecLike = Spec | Recipe | Mapping[str, Any] | str | Path


def as_spec(spec: SpecLike) -> Spec:
    """The spec of a spec, recipe, mapping or recipe file."""
    return load_recipe(spec).spec


def check_call(backend: Any, strict: Any) -> None:
    """Wrong-type arguments are SpecErrors, never an AttributeError or TypeError from deep inside."""
    check_backend_name(backend, "backend")
    if strict is not None and not isinstance(strict, bool):
        raise SpecError(f"strict: expected True, False or None (the spec's own), got {excerpt(strict)}")


def plan(model: Any, spec: SpecLike, backend: str | None = None, strict: bool | None = None) -> Plan:
    """What ``spec`` would do to ``model``; no side effects. ``strict`` overrides the spec's."""
    check_call(backend, strict)
    be = backend_for(model, backend)
    return Plan.make(model, as_spec(spec).with_strict(strict), be)
