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
``param_groups_layer_decay``): the top layer keeps the base lr. ``min_scale`` raises smaller
scales to it; ``freeze_below`` freezes the layers whose scale is below it. The scale multiplies the
parameter's ``lr_mult`` from the rules. Layer ids are counted over all parameters, frozen ones
too, so a stage that unfreezes layers does not move the lr of layers already training.
"""

from __future__ import annotations

import itertools
import operator
import re
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tunespec.recipe import validate as V
from tunespec.errors import SpecError, TuneSpecWarning
from tunespec.planning.matching import simple
from tunespec.recipe.layer_decay import Layer, LayerDecay, captured_numbers

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
    keys: list[tuple] = []  # each distinct key once, made when first given to a position
    for e, (entry_hits, entry_caps) in enumerate(zip(hits, captures, strict=True)):
        made: dict[tuple, tuple] = {}  # numbers -> (e, *numbers), one object per layer
        if not keys and len(entry_hits) == n:  # the first entry to match takes every position
            distinct = list(dict.fromkeys(entry_caps))
            made = dict(zip(distinct, map(operator.add, itertools.repeat((e,)), distinct)))
            key_of = list(map(made.__getitem__, entry_caps))
            keys += made.values()
            continue
        for i, numbers in zip(entry_hits, entry_caps, strict=True):
            if key_of[i] is None:
                key = made.get(numbers)
                if key is None:
                    key = made[numbers] = (e, *numbers)
                key_of[i] = key
        keys += made.values()
    keys.sort()
    # By id: the keys are shared objects, and hashing a tuple is not free.
    if not any(entry.with_previous for entry in entries):  # one layer per key
        layer_of = dict(zip(map(id, keys), range(len(keys))))
        lid = len(keys) - 1
    else:
        layer_of, lid = {}, -1
        for k in keys:
            if lid < 0 or not entries[k[0]].with_previous:
                lid += 1
            layer_of[id(k)] = lid
    unmatched = None in key_of
    count = lid + 1 + (1 if unmatched else 0)
    if not unmatched:
        return list(map(layer_of.__getitem__, map(id, key_of))), count
    top = count - 1
    return [top if k is None else layer_of[id(k)] for k in key_of], count


def scales(rate: float, ids: Sequence[int], count: int, min_scale: float = 0.0) -> list[float]:
    """``max(min_scale, rate ** (count - 1 - id))`` per parameter, computed as timm does."""
    top = count - 1
    per_layer = [max(min_scale, rate ** (top - i)) for i in range(count)]
    return [per_layer[i] for i in ids]


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
    captured: list[tuple[list[tuple], dict[tuple, tuple[int, ...]]]] = []  # per entry, see _captures
    for i, entry in enumerate(entries):
        origin = f"{where}[{i}]"
        found, matched = matcher.select_matches(entry.match, groups, origin)
        if not found and decay.layers is not None:  # a card's entry may be absent in a variant
            message = f"{origin}: {entry.match!r} matches no parameter of {listing.model_type}"
            if spec.strict:
                raise SpecError(message + "; fix the layer list, or set strict: false to allow it")
            warnings.warn(message + " and has no effect", TuneSpecWarning, stacklevel=5)
        hits.append(found)
        captured.append(_captures(entry.match, found, matched, listing, origin))
    if decay.layers is None and not any(hits):
        raise SpecError(f"layer_decay: {where} match no parameter of this {listing.model_type}; the "
                        f"card does not fit this model: list its layers in layer_decay.layers")
    if hits and len(hits[0]) == len(rows):  # the first entry takes every parameter (one numbered regex)
        ids, count = _numbered_ids(*captured[0])
    else:
        captures = [list(map(numbers.__getitem__, per_hit)) for per_hit, numbers in captured]
        ids, count = layer_ids(entries, hits, captures, len(rows))
    _check_effect(decay, count, spec.strict)
    return scales(decay.rate, ids, count, decay.min_scale)


def _check_effect(decay: "LayerDecay", count: int, strict: bool) -> None:
    """``min_scale`` that raises no layer and ``freeze_below`` that freezes none do nothing: an
    error (a warning under ``strict: false``) naming the smallest scale there is."""
    smallest = decay.rate ** (count - 1)
    for key, value, idle in (("min_scale", decay.min_scale, decay.min_scale and decay.min_scale <= smallest),
                             ("freeze_below", decay.freeze_below,
                              decay.freeze_below is not None and max(decay.min_scale, smallest) >= decay.freeze_below)):
        if idle:
            message = (f"layer_decay.{key}: {value} has no effect on this model: its {count} layers' "
                       f"smallest scale is {smallest!r}")
            if strict:
                raise SpecError(message + f"; raise it or remove {key}")
            warnings.warn(message, TuneSpecWarning, stacklevel=5)


def frozen_by_scale(decay: "LayerDecay | None", scale: Sequence[float] | None) -> list[int]:
    """Positions whose layer scale is below ``freeze_below`` (timm leaves them out of the optimizer)."""
    if decay is None or decay.freeze_below is None or scale is None:
        return []
    below = decay.freeze_below
    return [i for i, s in enumerate(scale) if s < below]



def _numbered_ids(per_hit: list[tuple], numbers: Mapping[tuple, tuple[int, ...]]) -> tuple[list[int], int]:
    """:func:`layer_ids` when one entry matched every parameter: one layer per distinct number
    tuple, in numeric order, computed per distinct capture and then looked up once per parameter."""
    order = {n: lid for lid, n in enumerate(sorted(set(numbers.values())))}
    lid_of = {captured: order[n] for captured, n in numbers.items()}
    return list(map(lid_of.__getitem__, per_hit)), len(order)


def _captures(match: str, found: Sequence[int], matched: Sequence[Any], listing: "Listing",
              origin: str) -> tuple[list[tuple], dict[tuple, tuple[int, ...]]]:
    """What a layer entry captured from each parameter it matched (positions in ``param_rows``),
    read from the match objects of the selecting pass (``matched``, one per position; None
    where only an alias matched): the captured strings per position, and the layer numbers of
    each distinct capture. A group is one layer: its regex was written to select, not to number.

    Layers repeat (every tensor of a block captures the same numbers), so strings become
    numbers once per distinct capture, in order of first appearance: the first bad capture is
    the one reported.
    """
    if match.startswith("@"):
        return [()] * len(found), {(): ()}
    pattern = re.compile(match) if simple(match) else V.compiled(match)  # re is the fast one
    if not pattern.groups:
        return [()] * len(found), {(): ()}
    if listing.aliases and None in matched:  # a tied parameter's other name matched: use that alias
        rows, aliases = listing.param_rows, listing.aliases
        matched = [m if m is not None else next(filter(None, map(pattern.fullmatch, aliases.get(rows[k], ()))))
                   for k, m in zip(found, matched, strict=True)]
    per_hit = list(map(_GROUPS, matched))
    distinct = list(dict.fromkeys(per_hit))
    flat = list(itertools.chain.from_iterable(distinct))
    try:
        digits = all(flat) and "".join(flat).isdecimal()  # a group that did not take part: TypeError
    except TypeError:
        digits = False
    if digits:  # only digits: convert at C speed
        return per_hit, dict(zip(distinct, map(tuple, map(map, itertools.repeat(int), distinct))))
    first = dict(zip(reversed(per_hit), reversed(matched)))  # each capture's first match object
    return per_hit, {g: captured_numbers(first[g], origin) for g in distinct}


_GROUPS = operator.methodcaller("groups")
