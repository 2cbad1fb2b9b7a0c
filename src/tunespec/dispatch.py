"""Pick a backend per call from the model's type, looking only at frameworks already imported.

Nothing here imports a framework the user did not ask for: a model can only be a
``torch.nn.Module`` if torch is already in ``sys.modules``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .backend_api import Backend
from .errors import MissingFrameworkError, SpecError

# backend name -> (framework's top-level module, backend module, pip extra)
BACKENDS = {
    "torch": ("torch", "tunespec.backends.torch", "torch"),
    "mxnet": ("mxnet", "tunespec.backends.mxnet", "mxnet"),
}


def load_backend(name: str) -> Backend:
    """The backend called ``name``; a missing framework is a one-line error naming the extra."""
    if name not in BACKENDS:
        raise SpecError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)} (or None to infer)")
    framework, module, extra = BACKENDS[name]
    try:
        importlib.import_module(framework)
    except ImportError as exc:
        raise MissingFrameworkError(
            f"backend {name!r} needs {framework}, which is not installed ({exc}); "
            f"pip install 'tunespec[{extra}]'") from None
    return importlib.import_module(module).BACKEND


def backend_for(model: Any, backend: str | None = None) -> Backend:
    """The backend owning ``model``; with ``backend`` given, check that it really does."""
    if backend is not None:
        chosen = load_backend(backend)
        if not chosen.owns(model):
            actual = [n for n, (fw, _, _) in BACKENDS.items()
                      if fw in sys.modules and n != backend and load_backend(n).owns(model)]
            hint = f"; it is a {actual[0]} model: use backend={actual[0]!r}" if actual else ""
            raise SpecError(f"backend={backend!r}, but {type(model).__module__}."
                            f"{type(model).__qualname__} is not a {backend} model{hint}")
        return chosen
    for name, (framework, _, _) in BACKENDS.items():
        if framework in sys.modules and load_backend(name).owns(model):
            return load_backend(name)
    raise SpecError(f"cannot tell which framework {type(model).__module__}.{type(model).__qualname__} "
                    f"belongs to: pass a torch.nn.Module or an mxnet.gluon.Block "
                    f"(or name it with backend='torch' / 'mxnet')")


def backend_for_optimizer(optimizer: Any) -> Backend:
    """The backend whose optimizer (torch) or Trainer (Gluon) this is."""
    for name, (framework, _, _) in BACKENDS.items():
        if framework in sys.modules and load_backend(name).owns_optimizer(optimizer):
            return load_backend(name)
    raise SpecError(f"{type(optimizer).__qualname__} is neither a torch optimizer nor a gluon.Trainer")
