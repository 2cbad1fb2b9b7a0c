"""What can be checked about an optimizer before the model is touched, once a backend is chosen:
its semantics and options against what the registered backends offer, lr and weight decay.

Recipes are read without asking any backend (:mod:`tunespec.recipe`), so an option a framework
adds, or a semantics name, is checked here, when a plan builds an optimizer.

```python
from tunespec.planning.optimizers import check_number
assert check_number(0.1, "optimizer.lr", positive=True) == 0.1
```
"""

from __future__ import annotations

from typing import Any, Mapping

from tunespec.backend_api import Backend
from tunespec.errors import SpecError
from tunespec.framework_facts import default_semantics, framework_options, semantics_names
from tunespec.recipe import validate
from tunespec.recipe.validate import excerpt


def check_number(value: Any, where: str, positive: bool = False) -> float:
    """A finite number (> 0 with ``positive``, else >= 0), or a SpecError naming ``where``."""
    return validate.number(value, where, minimum=0.0, min_exclusive=positive, maximum=validate.MAX_FACTOR)


def check_semantics(value: Any) -> str | None:
    """One of the optimizer semantics the registered backends offer (their facts say which);
    None gives the one every backend offering semantics shares."""
    if value is None:
        return default_semantics()
    names = semantics_names()
    if value not in names:
        raise SpecError(f"semantics: {excerpt(value)} is not one of {', '.join(names)} (the update-rule "
                        f"semantics the backends offer; see docs/frameworks.md)")
    return value


def check_optimizer(backend: Backend, name: Any, lr: Any, weight_decay: Any, semantics: Any,
                    options: Mapping[str, Any]) -> str | None:
    """Everything about an optimizer that can be checked before the model is touched: the name,
    lr and weight decay, the semantics, and each option against what the optimizer takes.
    Returns the semantics to build with (None in: the shared default)."""
    semantics = check_semantics(semantics)
    if lr is None:
        raise SpecError("optimizer: give lr (the base learning rate that lr_mult scales)")
    check_number(lr, "optimizer.lr", positive=True)
    check_number(weight_decay, "optimizer.weight_decay")
    validate.check_optimizer(name, options, extra=framework_options())  # the values frameworks share
    accepted = backend.optimizer_options(name, semantics)  # raises for an unknown name
    if accepted is None:
        return semantics
    label = name if isinstance(name, str) else getattr(name, "__name__", type(name).__name__)
    for key in options:
        if not isinstance(key, str) or key not in accepted:
            raise SpecError(f"optimizer: unknown option {excerpt(key, 40)} for {label}"
                            f"{validate.suggestion(str(key), sorted(accepted))}; it takes {', '.join(sorted(accepted))}")
    if weight_decay and "weight_decay" not in accepted:
        raise SpecError(f"optimizer: {label} takes no weight_decay; pass weight_decay=0 or pick an "
                        f"optimizer that has it")
    return semantics
