"""Layer-wise learning-rate decay: each parameter's scale from the ``layer_decay`` key
(:mod:`tunespec.recipe.layer_decay` reads the key).

```yaml
layer_decay: {rate: 0.75}                 # the model card's layers
layer_decay: {rate: 0.75, layers: ['embeddings\\..*', 'encoder\\.layer\\.(\\d+)\\..*', '@heads']}
```

Layers run from the input (first) to the output (last). Each entry is a regex on canonical
names or an ``@group``; a parameter belongs to the first entry that matches it. A regex with
capture groups is one layer per distinct tuple of captured numbers, in numeric order (a group
that did not take part counts as 0); an ``@group`` is one layer. ``{match: ...,
with_previous: true}`` joins the layer before it. This is timm's ``group_matcher`` grouping, so cards can reproduce timm's layer ids
exactly: ``blocks\\.(\\d+)\\..*`` is one layer per block, the final norm joins the last block.
Parameters in no entry form the top layer, as timm puts a model's unmatched head.

With L layers, layer i's lr is scaled by ``rate ** (L - 1 - i)`` (timm's
``param_groups_layer_decay``): the top layer keeps the base lr. The scale multiplies the
parameter's ``lr_mult`` from the rules. Layer ids are counted over all parameters, frozen ones
too, so a stage that unfreezes layers does not move the lr of layers already training.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Mapping, Sequence

from tunespec.recipe import validate as V
from tunespec.errors import SpecError, TuneSpecWarning
from tunespec.planning.matching import simple
from tunespec.recipe.layer_decay import Layer, captured_numbers

if TYPE_CHECKING:
    from tunespec.listing import Listing
    from tunespec.planning.cards import Card
    from tunespec.planning.matching import Matcher
    from tunespec.recipe.spec import Spec


def layer_ids(entries: Sequence[Layer], hits: Sequence[Sequence[int]], captures: Sequence[Sequence[tuple]],
              n: int) -> tuple[list[int], int]:
    """Each parameter's layer id (0 = the input's) and the number of layers.

    ``hits[e]`` are the positions entry ``e`` matched, ``captures[e][k]`` the numbers it
    captured for ``hits[e][k]``. A position takes the first entry matching it; positions in no
    entry take the top layer.
    """
    key_of: list[tuple | None] = [None] * n
    for e, (entry_hits, entry_caps) in enumerate(zip(hits, captures, strict=True)):
        for i, numbers in zip(entry_hits, entry_caps, strict=True):
            if key_of[i] is None:
                key_of[i] = (e, *numbers)
    keys = sorted({k for k in key_of if k is not None})
    joins = {k for k in keys if entries[k[0]].with_previous}
    layer_of: dict[tuple, int] = {}
    lid = -1
    for k in keys:
        if lid < 0 or k not in joins:
            lid += 1
        layer_of[k] = lid
    unmatched = any(k is None for k in key_of)
    count = lid + 1 + (1 if unmatched else 0)
    return [count - 1 if k is None else layer_of[k] for k in key_of], count


def scales(rate: float, ids: Sequence[int], count: int) -> list[float]:
    """``rate ** (count - 1 - id)`` per parameter, computed as timm does."""
    top = count - 1
    per_layer = [rate ** (top - i) for i in range(count)]
    return [per_layer[i] for i in ids]


# --- planning: each parameter's scale -------------------------------------------------------

def layer_scales(spec: "Spec", card: "Card | None", listing: "Listing", matcher: "Matcher",
                  groups: Mapping[str, str]) -> list[float] | None:
    """Each parameter's ``layer_decay`` scale (in ``param_rows`` order), or None without decay."""
    decay = spec.layer_decay
    if decay is None:
        return None
    entries, where = decay.layers, "layer_decay.layers"
    if entries is None:
        if card is None or card.layers is None:
            what = f"the {card.family} card has no ordered layers" if card else \
                f"no model card knows {listing.model_type}'s layers"
            raise SpecError(f"layer_decay: {what}; list them from input to output in "
                            f"layer_decay.layers (regexes or @groups), or register a card with layers")
        entries, where = card.layers, f"the {card.family} card's layers"
    rows = listing.param_rows
    hits: list[list[int]] = []
    captures: list[list[tuple[int, ...]]] = []
    for i, entry in enumerate(entries):
        origin = f"{where}[{i}]"
        found = matcher.select(entry.match, groups, origin)
        if not found and decay.layers is not None:  # a card's entry may be absent in a variant
            message = f"{origin}: {entry.match!r} matches no parameter of {listing.model_type}"
            if spec.strict:
                raise SpecError(message + "; fix the layer list, or set strict: false to allow it")
            warnings.warn(message + " and has no effect", TuneSpecWarning, stacklevel=5)
        hits.append(found)
        captures.append(_captures(entry.match, found, listing, origin))
    if decay.layers is None and not any(hits):
        raise SpecError(f"layer_decay: {where} match no parameter of this {listing.model_type}; the "
                        f"card does not fit this model: list its layers in layer_decay.layers")
    ids, count = layer_ids(entries, hits, captures, len(rows))
    return scales(decay.rate, ids, count)


def _captures(match: str, found: Sequence[int], listing: "Listing", origin: str) -> list[tuple[int, ...]]:
    """The layer numbers a layer entry captured from each parameter it matched (positions in
    ``param_rows``). A group is one layer: its regex was written to select, not to number."""
    if match.startswith("@"):
        return [()] * len(found)
    pattern = re.compile(match) if simple(match) else V.compiled(match)  # re is the fast one
    if not pattern.groups:
        return [()] * len(found)
    names, rows, aliases = listing.names, listing.param_rows, listing.aliases
    out = []
    for k in found:
        m = pattern.fullmatch(names[rows[k]])
        if m is None:  # it matched an alias (a tied parameter's other name)
            m = next(filter(None, map(pattern.fullmatch, aliases.get(rows[k], ()))))
        out.append(captured_numbers(m, origin))
    return out
