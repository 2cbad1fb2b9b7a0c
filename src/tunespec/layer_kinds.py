"""Layer kinds: one framework-neutral vocabulary for "what sort of layer owns this tensor".

Backends map their own classes onto :data:`KINDS` (each layer gets exactly one); the core decides
what each selector name covers. Peers disagree on what "norm" means (MMEngine's set has no
RMSNorm, fastai's no GroupNorm), so every norm kind can be spelt on its own, and ``norm`` is the
union. ``conv`` is every convolution, depthwise ones included; ``depthwise_conv`` is the subset
whose groups equal the input channels (more than one): MMEngine's ``dwconv_decay_mult`` targets it.

A grouped convolution whose input channels are still unknown (Gluon deferred initialisation,
torch lazy modules) is reported as :data:`DEFERRED_CONV`: whether it is depthwise is not known
yet, so selecting convolutions on such a model is an error asking for a forward pass first.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from . import validate as V
from .errors import SpecError

NORM_KINDS = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm")
DEFERRED_CONV = "deferred_conv"
# What a backend reports per layer (exactly one each).
KINDS = ("conv", "depthwise_conv", DEFERRED_CONV, "linear", "embedding", *NORM_KINDS, "other")
# What a selector names -> the reported kinds it covers.
SELECTORS: dict[str, tuple[str, ...]] = {
    "conv": ("conv", "depthwise_conv"),
    "depthwise_conv": ("depthwise_conv",),
    "linear": ("linear",),
    "embedding": ("embedding",),
    "norm": NORM_KINDS,
    **{k: (k,) for k in NORM_KINDS},
    "other": ("other",),
}
# Selectors whose answer depends on knowing each grouped convolution's input channels.
NEEDS_CHANNELS = frozenset({"conv", "depthwise_conv"})
TOKEN = "@layer:"  # the spelling inside a rule's match, a shorthand key or a group: '@layer:conv'
# Weight layouts name each dimension: 'out' and 'in' channels, 'spatial' for every remaining one.
# A backend declares its layouts per kind (key 'default' for the rest) for fan-based init.
LAYOUT_DIMS = ("out", "in", "spatial")


def check_selector(value: Any, where: str) -> str:
    """A layer-kind selector name, or a SpecError naming the close ones."""
    return V.choice(value, where, tuple(SELECTORS))


def parse_token(match: str) -> str | None:
    """The kind of an ``@layer:KIND`` match (None for any other match)."""
    return match[len(TOKEN):] if match.startswith(TOKEN) else None


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
