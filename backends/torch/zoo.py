"""Models for the CLI, built offline: no weights, no backbone weights."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from tunespec.errors import SpecError


def build_model(zoo: str, name: str) -> nn.Module:
    """A torchvision model built offline: no weights, no backbone weights."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise SpecError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    return builder(**kwargs)
