"""The mxnet backend package. Importing it imports only its facts: the backend itself (and mxnet)
load on first use of ``BACKEND`` or any other name below, so the registry can read the facts first."""

from __future__ import annotations

import importlib
from typing import Any

from .facts import FACTS

_LAZY = {"BACKEND": ".backend", "MXNetBackend": ".backend", "SymbolNorm": ".listing", "ScheduleAdapter": ".update_rules",
         "TorchSGD": ".update_rules", "TorchAdam": ".update_rules", "TorchAdamW": ".update_rules",
         "FusedTorchSGD": ".fused_rules", "FusedTorchAdam": ".fused_rules", "FusedTorchAdamW": ".fused_rules",
         "build_model": ".zoo", "import_gluoncv": ".zoo"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FACTS", *_LAZY]
