r"""Making a plan: ``tunespec.plan(model, spec)`` and the spec-like inputs it accepts.

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
    """What ``spec`` would do to ``model``, computed without changing anything.

    ``spec`` is a :class:`Spec`, a mapping, a :class:`Recipe` or a recipe file's path. The plan
    holds one decision per parameter (trainable, lr and weight-decay multipliers, the deciding
    rules) and the BatchNorm policy; print it to read it, then :meth:`Plan.apply` it or build the
    optimizer with :meth:`Plan.optimizer`. The backend is chosen from the model's type
    (``backend`` checks it); ``strict`` overrides the spec's own strictness. A spec that does not
    fit the model is a :class:`SpecError` naming the fix.

    Example::

        plan = tunespec.plan(model, {"freeze": [".*"], "train": [r"fc\\..*"]})
        print(plan)          # what would happen; the model is untouched
        plan.apply()
    """
    check_call(backend, strict)
    be = backend_for(model, backend)
    return Plan.make(model, as_spec(spec).with_strict(strict), be)
