"""GluonCV beside torch >= 2, and GluonCV models for the CLI, built offline."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import warnings
from typing import Any

import mxnet as mx
from mxnet import gluon

from tunespec.errors import SpecError

def import_gluoncv() -> Any:
    """Import GluonCV beside torch >= 2.

    GluonCV 0.10.5's ``check.py`` raises when it finds torch >= 2.0 (and imports torch
    to find out). Only its optional torch half needs that check, so tunespec loads
    ``gluoncv.check`` first with the torch check turned into "torch absent", then
    imports GluonCV normally. Its MXNet model zoo is untouched.
    """
    if "gluoncv" in sys.modules:
        return sys.modules["gluoncv"]
    spec = importlib.util.find_spec("gluoncv")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("GluonCV is not installed; pip install 'tunespec[mxnet]'")
    path = os.path.join(spec.submodule_search_locations[0], "check.py")
    check_spec = importlib.util.spec_from_file_location("gluoncv.check", path)
    check = importlib.util.module_from_spec(check_spec)
    check_spec.loader.exec_module(check)

    def torch_half_disabled(*args: Any, **kwargs: Any) -> None:
        raise ImportError("gluoncv's torch half is not used by tunespec")

    check._require_pytorch_version = torch_half_disabled
    sys.modules["gluoncv.check"] = check
    try:
        import gluoncv
    except BaseException:
        sys.modules.pop("gluoncv.check", None)
        raise
    return gluoncv


def build_model(zoo: str, name: str, input_size: int | None = None) -> gluon.Block:
    """A GluonCV model built offline, initialised, with shapes inferred by one small forward."""
    gcv = import_gluoncv()
    factories = gcv.model_zoo.model_zoo._models
    if name.lower() not in factories:
        close = [n for n in factories if name.lower().split("_")[0] in n][:5]
        raise SpecError(f"GluonCV has no model {name!r}; similar: "
                        f"{', '.join(close) or 'see gluoncv.model_zoo'}")
    factory = factories[name.lower()]
    kwargs: dict[str, Any] = {"pretrained": False}
    params = inspect.signature(factory).parameters
    if "pretrained_base" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs["pretrained_base"] = False
    with warnings.catch_warnings():  # GluonCV's SymbolBlocks warn about untyped inputs
        warnings.simplefilter("ignore")
        try:
            net = factory(**kwargs)
        except TypeError:
            kwargs.pop("pretrained_base", None)
            net = factory(**kwargs)
    net.initialize()
    size = input_size or int((re.findall(r"_(\d{3})_", f"_{name}_") or ["224"])[0])
    with mx.autograd.pause():
        try:
            net(mx.nd.zeros((1, 3, size, size)))
        except mx.MXNetError:
            pass  # shapes stay deferred; the plan shows them as '?'
    return net

