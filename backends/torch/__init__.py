"""The torch backend package. Importing it imports only its facts: the backend itself (and torch)
load on first use of ``BACKEND`` or any other name below, so the registry can read the facts first."""

from __future__ import annotations

import importlib
from typing import Any

from .facts import FACTS

_LAZY = {"BACKEND": ".backend", "TorchBackend": ".backend", "FrozenStats": ".execute", "build_model": ".zoo"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FACTS", *_LAZY]
