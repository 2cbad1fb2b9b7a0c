"""The registry of backends: built-in ones and third-party ones join the same way.

A backend is registered by its :class:`~tunespec.backend_api.FrameworkFacts`, either with
:func:`register_backend` or through an entry point in the ``tunespec.backends`` group whose value
is the facts object (``mypkg.facts:FACTS``). tunespec's own backends are entry points of this
package. Facts live in modules that do not import their framework; the backend object named by
``facts.backend`` is imported only when a model of that framework is met.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any
from importlib.metadata import entry_points
import warnings

from tunespec.backend_api import Backend, FrameworkFacts
from tunespec.errors import MissingFrameworkError, SpecError
from tunespec.recipe.validate import excerpt

ENTRY_POINT_GROUP = "tunespec.backends"

_lock = threading.RLock()
_facts: dict[str, FrameworkFacts] = {}
_loaded: dict[str, Backend] = {}
_scanned = False
_version = 0  # bumped on every change, so derived facts know when to recompute


def version() -> int:
    """A number that changes whenever the set of registered backends does (read on every derived
    fact, per checkpoint key: lock-free once the entry points are scanned)."""
    if _scanned:
        return _version
    with _lock:
        _scan_entry_points()
        return _version


def register_backend(facts: FrameworkFacts) -> None:
    """Make a backend available to every tunespec call. Registering the same facts again is a
    no-op; another backend under a taken name is an error (unregister it first)."""
    if not isinstance(facts, FrameworkFacts):
        raise SpecError(f"register_backend: expected tunespec.FrameworkFacts, got {excerpt(facts)}")
    if not facts.name or not facts.framework or ":" not in facts.backend:
        raise SpecError(f"register_backend: facts need a name, a framework module and backend='module:attr', "
                        f"got {excerpt(facts)}")
    with _lock:
        _scan_entry_points()
        old = _facts.get(facts.name)
        if old is not None and old != facts:
            raise SpecError(f"register_backend: a backend named {facts.name!r} is already registered "
                            f"({old.backend}); unregister_backend({facts.name!r}) first")
        if old is None:
            global _version
            _facts[facts.name] = facts
            _version += 1


def unregister_backend(name: str) -> None:
    """Forget a registered backend (tests, or replacing one)."""
    with _lock:
        _scan_entry_points()
        global _version
        if _facts.pop(name, None) is not None:
            _version += 1
        _loaded.pop(name, None)


def registered() -> dict[str, FrameworkFacts]:
    """Every registered backend's facts, by name, in registration order (entry points first)."""
    with _lock:
        _scan_entry_points()
        return dict(_facts)


def load_backend(name: str) -> Backend:
    """The backend called ``name``; a missing framework is a one-line error naming the extra."""
    facts = registered().get(name) if isinstance(name, str) else None
    if facts is None:
        raise SpecError(f"unknown backend {excerpt(name)}; use one of {', '.join(registered())} "
                        f"(or None to infer)")
    with _lock:
        if name in _loaded:
            return _loaded[name]
        try:
            importlib.import_module(facts.framework)
        except ImportError as exc:
            extra = f"; pip install 'tunespec[{facts.extra}]'" if facts.extra else ""
            raise MissingFrameworkError(f"backend {name!r} needs {facts.framework}, which is not installed "
                                        f"({exc}){extra}") from None
        module, _, attr = facts.backend.partition(":")
        backend = getattr(importlib.import_module(module), attr)
        _loaded[name] = backend
        return backend


def _scan_entry_points() -> None:
    """Register the entry points' facts once (importing only their light facts modules)."""
    global _scanned, _version
    if _scanned:
        return
    _scanned = True
    _version += 1
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            facts: Any = ep.load()
        except Exception as exc:  # a broken third-party package must not break tunespec
            warnings.warn(f"tunespec: entry point {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=3)
            continue
        if isinstance(facts, FrameworkFacts) and facts.name not in _facts:
            _facts[facts.name] = facts
    _version += 1  # again once complete: facts derived while the scan ran are recomputed
