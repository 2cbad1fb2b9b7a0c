"""What a spec can name on one model: its groups, presets and layer kinds, with tensor counts.

A new user learns the names a recipe may use here instead of by provoking errors:
``tunespec.groups(model)`` in Python, ``tunespec groups --model ZOO:NAME`` on the command line.
Every count comes from planning the model (one listing, one plan per group or preset), so it is
exactly what a rule naming that group or preset would select.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunespec.dispatch import backend_for
from tunespec.planning.cards import model_card
from tunespec.planning.plan import Plan
from tunespec.recipe.spec import Spec

BUILTIN_GROUPS = ("bias", "norm", "1d")  # tunespec.matching's kinds a regex cannot express


@dataclass(frozen=True)
class GroupInfo:
    """One name a rule can match with ``@name``: its tensors, parameters and top-level modules."""

    name: str
    source: str  # 'card', 'built-in' or 'layer kind'
    tensors: int
    parameters: int | None  # None while Gluon shapes are unknown
    modules: tuple[str, ...]


@dataclass(frozen=True)
class PresetInfo:
    """What ``preset: NAME`` trains: whole card groups, groups it trains in part, and counts."""

    name: str
    trains: tuple[str, ...]
    partly: tuple[str, ...]
    tensors: int
    parameters: int | None


@dataclass(frozen=True)
class ModelGroups:
    """Everything a spec can name on one model (see :func:`groups`); ``str()`` is the CLI's view.

    Example::

        info = tunespec.groups(model)
        info.group("stage4").modules, info.preset("4+").trains
    """

    model_type: str
    backend: str
    card: str | None
    tensors: int
    groups: tuple[GroupInfo, ...]
    presets: tuple[PresetInfo, ...]
    last_k: int | None = None  # 'last-K' presets exist for K = 1..last_k
    notes: tuple[str, ...] = field(default=())

    def group(self, name: str) -> GroupInfo:
        """The group called ``name`` (``"stage4"``, ``"bias"``, ``"layer:conv"``)."""
        for g in self.groups:
            if g.name == name.lstrip("@"):
                return g
        raise KeyError(f"{name!r}: this model has the groups {', '.join(g.name for g in self.groups)}")

    def preset(self, name: str) -> PresetInfo:
        """What ``preset: name`` trains on this model."""
        for p in self.presets:
            if p.name == name:
                return p
        raise KeyError(f"{name!r}: this model has the presets {', '.join(p.name for p in self.presets)}")

    def __str__(self) -> str:
        head = (f"{self.model_type} ({self.backend}): {self.tensors} parameter tensors; "
                f"model card: {self.card or 'none (no groups or presets beyond the built-in ones)'}")
        out = [head, "", "groups (match them as '@NAME'):"]
        rows = [[f"@{g.name}", g.source, str(g.tensors), _count(g.parameters), ", ".join(g.modules[:4])
                 + (" ..." if len(g.modules) > 4 else "")] for g in self.groups]
        out += _columns(["group", "from", "tensors", "parameters", "modules"], rows)
        if self.presets:
            out += ["", "presets (preset: NAME), what each trains; everything else is frozen:"]
            where = {g.name: g.modules for g in self.groups}

            def named(group: str) -> str:
                mods = where.get(group, ())
                if not mods or " .. " in mods[0]:  # a tensor range says little here
                    return group
                return f"{group} ({', '.join(mods[:3])}{' ...' if len(mods) > 3 else ''})"

            rows = [[p.name, str(p.tensors), _count(p.parameters),
                     ", ".join(map(named, p.trains)) + (f"; part of {', '.join(p.partly)}" if p.partly else "")]
                    for p in self.presets]
            out += _columns(["preset", "tensors", "parameters", "trains groups"], rows)
        if self.last_k:
            out.append(f"also last-K for K = 1..{self.last_k}: the last K blocks and the heads")
        out += ["", *self.notes] if self.notes else []
        return "\n".join(out)


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
            for cells in [header, ["-" * w for w in widths], *rows]]


def _selected(model: Any, backend: Any, listing: Any, spec: dict[str, Any]) -> list[Any]:
    """The decisions a spec makes trainable (``rules`` freeze everything else first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a group matching nothing is shown as 0 tensors
        plan = Plan.make(model, Spec.from_dict({"strict": False, **spec}), backend, listing)
    return plan.trainable


def _where(names: list[str], tops: Counter) -> tuple[str, ...]:
    """The top-level modules holding ``names``; when that is one module the group shares with
    others (a detector's ``features``), the first and last tensor instead, which tell them apart."""
    modules = tuple(dict.fromkeys(n.split(".")[0] for n in names))
    if len(modules) == 1 and len(names) > 1 and tops[modules[0]] > len(names):
        return (f"{names[0]} .. {names[-1]}",)
    return modules


def _info(name: str, source: str, decisions: list[Any], tops: Counter) -> GroupInfo:
    sizes = [d.tensor.numel for d in decisions]
    return GroupInfo(name, source, len(decisions), None if None in sizes else sum(sizes),
                     _where([d.name for d in decisions], tops))


def groups(model: Any, backend: str | None = None) -> ModelGroups:
    """The groups, presets and layer kinds a spec can name on ``model``, with what each selects.

    Lists the model card's groups (``backbone``, ``stage4``, ``heads``, ...), the built-in ones
    (``@bias``, ``@norm``, ``@1d``), the layer kinds present (``@layer:conv``, ...), and for each
    preset exactly which groups it trains, so ``preset: 4+`` holds no surprise (on a ResNet it
    trains ``stage4`` (layer3), ``stage5`` (layer4) and the head). Nothing about the model changes::

        import torchvision, tunespec
        print(tunespec.groups(torchvision.models.resnet18(weights=None)))
        tunespec.groups(model).preset("4+").trains   # ('stage4', 'stage5', 'heads')
    """
    be = backend_for(model, backend)
    listing = be.listing(model)
    card = model_card(listing)
    every = {"freeze": [".*"]}

    def members(match: str) -> list[Any]:
        return _selected(model, be, listing, {**every, "rules": [{"match": match, "trainable": True}]})

    tops = Counter(n.split(".")[0] for n in listing.param_names())
    infos = [_info(g, "card", members("@" + g), tops) for g in (card.groups if card else {})]
    infos += [_info(g, "built-in", members("@" + g), tops) for g in BUILTIN_GROUPS]
    kinds = Counter(listing.layer_kinds[listing.layers[row]] for row in listing.param_rows)
    infos += [_info(f"layer:{k}", "layer kind", members(f"@layer:{k}"), tops) for k in kinds]
    card_sets = {g.name: set(d.name for d in members("@" + g.name)) for g in infos if g.source == "card"}
    presets = []
    for name in (card.presets or {}) if card else ():
        trained = _selected(model, be, listing, {"preset": name})
        names = {d.name for d in trained}
        full = tuple(g for g, s in card_sets.items() if s and s <= names)
        part = tuple(g for g, s in card_sets.items() if s & names and not s <= names)
        # a group inside another fully trained one says nothing new ('backbone' covers 'stage2')
        full = tuple(g for g in full if not any(g != o and card_sets[g] < card_sets[o] for o in full))
        sizes = [d.tensor.numel for d in trained]
        presets.append(PresetInfo(name, full, part, len(trained), None if None in sizes else sum(sizes)))
    last_k = None
    if card is not None and card.blocks:
        blocks = set()
        pattern = re.compile(card.blocks.replace("{n}", r"(\d+)"))
        for n in listing.param_names():
            m = pattern.fullmatch(n)
            if m:
                blocks.add(int(m.group(1)))
        last_k = len(blocks) or None
    notes = ("a rule's match may also be any regex on the canonical names (tunespec plan --full lists them)",)
    return ModelGroups(listing.model_type, be.name, card.family if card else None, len(listing.param_rows),
                       tuple(infos), tuple(presets), last_k, notes)
