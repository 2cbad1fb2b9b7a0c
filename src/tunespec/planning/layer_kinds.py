"""Layer kinds at planning time: which layers a selector covers, and weight layouts for fans
(the vocabulary itself, which a recipe may name, is :mod:`tunespec.recipe.selectors`)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from tunespec.errors import SpecError
from tunespec.recipe.selectors import DEFERRED_CONV, KINDS, NEEDS_CHANNELS, SELECTORS, TOKEN

# Weight layouts name each dimension: 'out' and 'in' channels, 'spatial' for every remaining one.
# A backend declares its layouts per kind (key 'default' for the rest) for fan-based init.
LAYOUT_DIMS = ("out", "in", "spatial")


def layer_mask(selector: str, kinds: Sequence[str], norms: Sequence[bool], where: str) -> list[bool]:
    """Per layer (a listing's ``layer_kinds`` / ``layer_norms``), whether ``selector`` covers it.

    ``norm`` also covers layers the backend flags as norm layers without a finer kind (a Gluon
    class named ``...Norm``), so ``@layer:norm`` and ``@norm`` select the same tensors.
    """
    covered = set(SELECTORS[selector])
    if selector in NEEDS_CHANNELS and DEFERRED_CONV in kinds:
        raise SpecError(f"{where}: {TOKEN}{selector} needs each grouped convolution's input channels, "
                        f"which are not known yet (deferred initialisation); run one forward pass "
                        f"before planning")
    if selector == "norm":
        return [k in covered or n for k, n in zip(kinds, norms, strict=True)]
    return [k in covered for k in kinds]


def check_layouts(layouts: Mapping[str, Sequence[str]], backend: str) -> None:
    """A backend's weight layouts use only :data:`LAYOUT_DIMS`, with 'spatial' last if at all."""
    for kind, layout in layouts.items():
        if kind != "default" and kind not in KINDS:
            raise SpecError(f"backend {backend}: weight layout for unknown layer kind {kind!r}")
        if not set(layout) <= set(LAYOUT_DIMS) or "spatial" in layout[:-1] or \
                layout.count("out") != 1 or layout.count("in") != 1:
            raise SpecError(f"backend {backend}: weight layout {tuple(layout)} of {kind!r} must name "
                            f"'out' and 'in' once each and may end with 'spatial'")


def fans(shape: Sequence[int], layout: Sequence[str]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape`` laid out as ``layout``: each channel count times
    the product of the spatial dimensions (the convention of Glorot/He initialisation)."""
    positions = {name: i for i, name in enumerate(layout) if name != "spatial"}
    spatial_from = len([d for d in layout if d != "spatial"])
    receptive = math.prod(shape[spatial_from:])
    return shape[positions["in"]] * receptive, shape[positions["out"]] * receptive
