"""The ``layer_decay`` recipe key: a rate and an ordered list of layers (see
:mod:`tunespec.planning.decay` for how each parameter's scale is computed from it).

```python
from tunespec.recipe.layer_decay import LayerDecay
decay = LayerDecay.from_dict({"rate": 0.75, "layers": ["stem\\..*", r"blocks\.(\d+)\..*"]})
assert decay.to_dict()["rate"] == 0.75
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from tunespec.errors import SpecError
from tunespec.recipe import validate as V

KEYS = ("rate", "layers")
LAYER_KEYS = ("match", "with_previous")
MAX_LAYERS = 10_000


@dataclass(frozen=True)
class Layer:
    """One entry of an ordered layer list: a regex or ``@group``; ``with_previous`` joins the
    layer(s) it matches to the layer before it (timm's ``MATCH_PREV_GROUP``)."""

    match: str
    with_previous: bool = False


def _check_match(value: Any, path: str) -> str:
    if isinstance(value, str) and value.startswith("@"):
        return V.group_reference(value, path)
    return V.regex(value, path)


def layer_entries(raw: Any, path: str) -> tuple[Layer, ...]:
    """An ordered, non-empty list of layers: regexes, ``@group`` names or ``{match, with_previous}``."""
    items = V.sequence(raw, path, what="a non-empty list of regexes or @groups, first = the input's",
                       max_length=MAX_LAYERS, nonempty=True)
    out: list[Layer] = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        if isinstance(item, Layer):
            out.append(Layer(_check_match(item.match, where), V.boolean(item.with_previous, where)))
        elif isinstance(item, Mapping):
            V.keys(item, where, LAYER_KEYS, "layer key")
            if "match" not in item:
                raise SpecError(f"{where}: a layer mapping needs 'match' (a regex or '@group')")
            joined = V.boolean(item.get("with_previous", False), f"{where}.with_previous")
            out.append(Layer(_check_match(item["match"], f"{where}.match"), joined))
        else:
            out.append(Layer(_check_match(item, where)))
    if out[0].with_previous:
        raise SpecError(f"{path}[0]: the first layer has no layer before it to join; remove "
                        f"with_previous")
    return tuple(out)


@dataclass(frozen=True)
class LayerDecay:
    """``rate`` in (0, 1]; ``layers`` None uses the model card's ordered layers."""

    rate: float
    layers: tuple[Layer, ...] | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str = "layer_decay") -> "LayerDecay":
        if isinstance(data, LayerDecay):
            return data
        data = V.mapping(data, path, "{rate: 0.75}")
        V.keys(data, path, KEYS)
        if "rate" not in data:
            raise SpecError(f"{path}: give rate (each layer's lr is rate times the next one's), e.g. "
                            f"{{rate: 0.75}}")
        rate = V.number(data["rate"], f"{path}.rate", minimum=0.0, min_exclusive=True, maximum=1.0)
        layers = None if data.get("layers") is None else layer_entries(data["layers"], f"{path}.layers")
        return cls(rate, layers)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rate": self.rate}
        if self.layers is not None:
            out["layers"] = [e.match if not e.with_previous else {"match": e.match, "with_previous": True}
                             for e in self.layers]
        return out


def captured_numbers(match: Any, where: str) -> tuple[int, ...]:
    """The numbers a layer regex captured; a group that did not take part counts as 0."""
    groups = match.groups()
    if None not in groups and all(groups) and "".join(groups).isdecimal():  # the usual case, fast
        return tuple(map(int, groups))
    out = []
    for value in groups:
        if value is None:
            out.append(0)
        elif value.isdecimal():
            out.append(int(value))
        else:
            raise SpecError(f"{where}: captured {V.excerpt(value)}, not a layer number; capture only "
                            f"the digits that number layers (write other groups as (?:...))")
    return tuple(out)
