"""Layer kinds as a recipe names them: one framework-neutral vocabulary for "what sort of layer owns this tensor".

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

from dataclasses import dataclass
from typing import Any

from tunespec.recipe import validate as V

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

def check_selector(value: Any, where: str) -> str:
    """A layer-kind selector name, or a SpecError naming the close ones."""
    return V.choice(value, where, tuple(SELECTORS))


def parse_token(match: str) -> str | None:
    """The kind of an ``@layer:KIND`` match (None for any other match)."""
    return match[len(TOKEN):] if match.startswith(TOKEN) else None


@dataclass(frozen=True)
class Selection:
    """One part of a group: parameters fullmatching ``match`` (None: all) in layers of kind
    ``layer`` (None: any)."""

    match: str | None
    layer: str | None

    def to_dict(self) -> Any:
        if self.layer is None:
            return self.match
        return TOKEN + self.layer if self.match is None else {"layer": self.layer, "match": self.match}
