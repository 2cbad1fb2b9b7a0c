"""Deciding: each parameter's trainability and multipliers, and each norm layer's statistics, from
a spec's rules (model-card presets first) over a listing. Pure: nothing on the model changes.

The results are columns (:class:`Decided`) with a per-tensor view (:class:`Decision`) built when
someone reads it; :class:`tunespec.planning.plan.Plan` holds them.
"""

from __future__ import annotations

import warnings
from array import array
from dataclasses import dataclass
from typing import Any, Sequence

from tunespec.errors import SpecError, TuneSpecWarning
from tunespec.listing import Listing, NormInfo, TensorInfo, module_of
from tunespec.planning.cards import Card, card_for, preset_rules
from tunespec.planning.decay import layer_scales
from tunespec.planning.matching import Matcher
from tunespec.recipe.spec import Rule, Spec


@dataclass(slots=True)
class Decision:
    """The planned setting of one parameter, and which rules produced it."""

    tensor: TensorInfo
    trainable: bool
    lr_mult: float
    wd_mult: float
    rules: list[str]  # every rule that matched, in order
    set_by: dict[str, str]  # field -> the rule that last set it

    @property
    def deciding_rules(self) -> list[str]:
        """The rules behind the effective setting (a frozen tensor's lr/wd rules have no effect)."""
        keys = ("trainable",) if not self.trainable else ("trainable", "lr_mult", "wd_mult")
        return list(dict.fromkeys(self.set_by[k] for k in keys if k in self.set_by))

    @property
    def name(self) -> str:
        return self.tensor.canonical

    @property
    def changed(self) -> bool:
        t = self.tensor
        return (t.trainable, t.lr_mult, t.wd_mult) != (self.trainable, self.lr_mult, self.wd_mult)


_SETTINGS = ("trainable", "lr_mult", "wd_mult")


@dataclass
class Decided:
    """What the rules decided, one entry per parameter in ``listing.param_rows`` order.

    Columns rather than a :class:`Decision` per tensor: planning a 100,000-tensor model must
    stay well under a second; the per-tensor view is built when someone reads it.
    """

    rules: list[Rule]
    hits: list[list[int]]  # per rule, the positions it matched
    trainable: Sequence[int]  # 0/1; arrays, which the cyclic GC never traverses
    lr_mult: Sequence[float]
    wd_mult: Sequence[float]

    def decisions(self, params: Sequence[TensorInfo]) -> list[Decision]:
        matched: list[list[str]] = [[] for _ in params]
        set_by: list[dict[str, str]] = [{} for _ in params]
        for rule, hits in zip(self.rules, self.hits, strict=True):
            keys = [k for k in _SETTINGS if getattr(rule, k) is not None]
            for i in hits:
                matched[i].append(rule.origin)
                for key in keys:
                    set_by[i][key] = rule.origin
        return [Decision(t, bool(trainable), lr, wd, rules, by)
                for t, trainable, lr, wd, rules, by in zip(params, self.trainable, self.lr_mult, self.wd_mult,
                                                           matched, set_by, strict=True)]


@dataclass
class NormDecision:
    norm: NormInfo
    frozen: bool
    reason: str

    @property
    def changed(self) -> bool:
        return self.norm.stats_frozen != self.frozen


def _expand_rules(spec: Spec, listing: Listing) -> tuple[list[Rule], dict[str, str], Card | None]:
    """Preset rules first (from the model card), then the spec's own, with all groups."""
    card = card_for((listing.model_type, *listing.base_types), listing.param_names())
    groups = dict(card.groups) if card else {}
    groups.update(spec.groups)
    rules: list[Rule] = []
    if spec.preset_name is not None:
        names = list(listing.param_names()) if card is not None and card.blocks else ()
        for i, raw in enumerate(preset_rules(card, spec.preset_name, listing.model_type, names)):
            rules.append(Rule.from_dict(raw, f"preset {spec.preset_name!r}[{i}]", user=False))
    return rules + list(spec.rules), groups, card


def decide(listing: Listing, spec: Spec) -> tuple[Decided, list[NormDecision]]:
    """Run the rules in order over the parameters; each matching rule overrides what it sets.
    ``layer_decay`` then multiplies each trainable parameter's lr_mult by its layer's scale."""
    rules, groups, card = _expand_rules(spec, listing)
    family = card.family if card else ""
    matcher = Matcher(listing)
    layer_scale = layer_scales(spec, card, listing, matcher, groups)
    matches = [matcher.select_rule(r, groups) for r in rules]
    for r, hits in zip(rules, matches, strict=True):
        if not hits and not r.user:  # a card that does not fit this model: never a silent no-op
            raise SpecError(f"{r.origin}: the {family} card's {r.selection} matches no parameter of this "
                            f"{listing.model_type}; the card does not fit this model. Register a card "
                            f"for it (tunespec.register_card) or write freeze/train rules")
    missed = [r for r, hits in zip(rules, matches, strict=True) if not hits and r.user]
    if missed:
        # Suggestions cost a scan each: a few are enough to show the pattern of a mistake.
        first = [f"{r.origin}: {r.selection} matches no parameter of {listing.model_type}; "
                 f"{matcher.suggest(r.match or r.native, r.layer, r.native is not None)}" for r in missed[:3]]
        if spec.strict:
            raise SpecError(first[0] + ". Fix the rule, or set strict: false to allow it")
        more = f" (and {len(missed) - 3} more rules matching nothing)" if len(missed) > 3 else ""
        warnings.warn("; ".join(first) + more, TuneSpecWarning, stacklevel=4)
    n = len(listing.param_rows)
    columns: dict[str, Any] = {"trainable": array("b", [1]) * n, "lr_mult": array("d", [1.0]) * n,
                               "wd_mult": array("d", [1.0]) * n}
    for rule, hits in zip(rules, matches, strict=True):
        for key, column in columns.items():
            value = getattr(rule, key)
            if value is not None:
                for i in hits:
                    column[i] = value
    trainable, lr_mult, wd_mult = columns["trainable"], columns["lr_mult"], columns["wd_mult"]
    for i in range(n):
        if not trainable[i]:  # a frozen tensor has no lr; keep its multipliers neutral
            lr_mult[i] = wd_mult[i] = 1.0
        elif layer_scale is not None:
            lr_mult[i] *= layer_scale[i]
    for rule, hits in zip(rules, matches, strict=True):
        sets_mult = rule.lr_mult is not None or rule.wd_mult is not None
        if sets_mult and hits and not any(trainable[i] for i in hits):
            warnings.warn(f"{rule.origin}: the multiplier of {rule.selection} lands only on frozen "
                          f"parameters and has no effect", TuneSpecWarning, stacklevel=4)
    decided = Decided(rules, matches, trainable, lr_mult, wd_mult)
    handles = listing.handles
    by_id = {id(handles[row]): trainable[i] for i, row in enumerate(listing.param_rows)} \
        if listing.norms and spec.bn == "freeze_frozen" else {}
    return decided, [_norm_decision(norm, spec.bn, listing, trainable, by_id) for norm in listing.norms]


def _norm_decision(norm: NormInfo, policy: str, listing: Listing, trainable: Sequence[int],
                   by_id: dict[int, bool]) -> NormDecision:
    if policy == "train":
        return NormDecision(norm, False, "bn: train")
    if policy == "freeze":
        return NormDecision(norm, True, "bn: freeze")
    affine = [by_id[id(h)] for h in norm.affine if id(h) in by_id]
    if affine:
        frozen = not any(affine)
        return NormDecision(norm, frozen, "affine frozen" if frozen else "affine trains")
    # No affine parameters: follow the parameters of the enclosing module.
    parent = module_of(norm.name)
    names = listing.names
    around = [trainable[i] for i, row in enumerate(listing.param_rows)
              if parent == "" or names[row].startswith(parent + ".")]
    frozen = bool(around) and not any(around)
    return NormDecision(norm, frozen, f"no affine; {parent or 'model'} {'frozen' if frozen else 'trains'}")
