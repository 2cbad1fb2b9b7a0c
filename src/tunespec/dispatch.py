"""Pick a backend per call from the model's type, looking only at frameworks already imported.

Nothing here imports a framework the user did not ask for: a model can only be of a framework's
type if that framework is already in ``sys.modules``. The backends come from the registry.
"""

from __future__ import annotations

import sys
from typing import Any

from tunespec.backend_api import Backend
from tunespec.errors import SpecError
from tunespec.registry import load_backend, registered
from tunespec.recipe.validate import excerpt

__all__ = ["backend_for", "backend_for_optimizer", "check_backend_name", "load_backend"]


def _imported() -> list[str]:
    return [name for name, facts in registered().items() if facts.framework in sys.modules]


def _kind(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def check_backend_name(backend: Any, where: str) -> None:
    """``backend`` is None or a string (a registered name is checked when it is loaded)."""
    if backend is not None and not isinstance(backend, str):
        names = ", ".join(map(repr, registered()))
        raise SpecError(f"{where}: expected a backend name ({names}) or None, got {excerpt(backend)}")


def backend_for(model: Any, backend: str | None = None) -> Backend:
    """The backend owning ``model``; with ``backend`` given, check that it really does."""
    if backend is not None:
        chosen = load_backend(backend)
        if not chosen.owns(model):
            actual = [n for n in _imported() if n != backend and load_backend(n).owns(model)]
            hint = f"; it is a {actual[0]} model: use backend={actual[0]!r}" if actual else ""
            raise SpecError(f"backend={backend!r}, but {_kind(model)} is not a {backend} model{hint}")
        return chosen
    for name in _imported():
        if load_backend(name).owns(model):
            return load_backend(name)
    facts = registered().values()
    kinds = " or ".join(f.model_type for f in facts if f.model_type) or "a model of a registered framework"
    names = " / ".join(repr(f.name) for f in facts)
    raise SpecError(f"cannot tell which framework {_kind(model)} belongs to: pass {kinds} "
                    f"(or name it with backend={names})")


def backend_for_optimizer(optimizer: Any) -> Backend:
    """The backend whose optimizer this is."""
    for name in _imported():
        if load_backend(name).owns_optimizer(optimizer):
            return load_backend(name)
    kinds = [f.optimizer_type for f in registered().values() if f.optimizer_type]
    what = f"neither {' nor '.join(kinds)}" if len(kinds) > 1 else f"not {kinds[0] if kinds else 'an optimizer'}"
    raise SpecError(f"{type(optimizer).__qualname__} is {what}")
