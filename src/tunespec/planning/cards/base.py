"""The card type, the registry of cards by model class, and presets derived from groups.

Groups are regexes on canonical names, so one card serves GluonCV and torchvision alike
where their names agree (ResNets) and says what corresponds where they don't (detectors).
Every detector card splits the parameters into ``backbone`` (``stem`` + ``stage2``..``stage5``
where the card knows the stages), ``neck`` (FPN, SSD extra layers, YOLO transitions), ``rpn``
and ``heads``. The presets follow Mask R-CNN's ``set_trainable``: ``heads`` trains everything
outside the backbone, ``N+`` adds backbone stages N and up, ``all`` trains everything.

Cards of classifiers and encoders may also give ``layers``, the model's depth order from input
to output, which ``layer_decay`` scales by (see :mod:`tunespec.planning.decay`), and ``blocks``, a regex
with ``{n}`` where the block number goes, which gives the ``last-K`` presets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from tunespec.recipe.layer_decay import Layer
from tunespec.errors import SpecError

STAGES = ("stage2", "stage3", "stage4", "stage5")
HEAD_GROUPS = ("neck", "rpn", "heads")  # what the 'heads' preset trains, in rule order
ABOVE_BLOCKS = ("final_norm", "pooler")  # between the blocks and the heads: 'last-K' trains them
LAST_K = re.compile(r"last-([1-9]\d{0,3})")  # the 'last-K' presets of cards with blocks


@dataclass(frozen=True)
class Card:
    """Groups (name -> regex on canonical names) and presets (name -> rule mappings).

    ``detect`` tells variants of one class apart (an SSD on VGG from one on MobileNet): the
    card applies when some parameter's canonical name fullmatches it. Presets left out are
    derived from the groups: ``heads``, ``N+`` for each ``stageN`` from 3 on, and ``all``.
    ``layers`` (None: unknown) orders the parameters by depth for ``layer_decay``; ``blocks``
    (a regex with ``{n}`` standing for the block number, e.g. ``blocks\.{n}\..*``) adds
    ``last-K``: the last K blocks and the heads train.
    """

    family: str
    groups: Mapping[str, str] = field(default_factory=dict)
    presets: Mapping[str, tuple[Mapping[str, Any], ...]] | None = None
    detect: str | None = None
    layers: tuple[Layer, ...] | None = None
    blocks: str | None = None

    def __post_init__(self) -> None:
        if self.blocks is not None and self.blocks.count("{n}") != 1:
            raise SpecError(f"card {self.family!r}: blocks needs '{{n}}' once, where the block number goes")
        for name, regex in {**self.groups, **({"blocks": self._numbered()} if self.blocks else {})}.items():
            try:
                re.compile(regex)
            except re.error as exc:
                raise SpecError(f"card {self.family!r}: group {name!r} has an invalid regex: {exc}") from None
        if self.layers is not None:
            object.__setattr__(self, "layers", self._checked_layers())
        if self.presets is None:
            object.__setattr__(self, "presets", _derived_presets(self.groups))

    def _checked_layers(self) -> tuple[Layer, ...]:
        """The layers as :class:`Layer` entries, each regex compiled (with ``re``, as groups are:
        cards are code, and importing them must not load the engine user patterns run on)."""
        assert self.layers is not None
        entries = tuple(e if isinstance(e, Layer) else Layer(e) for e in self.layers)
        for i, entry in enumerate(entries):
            if not entry.match.startswith("@"):
                try:
                    re.compile(entry.match)
                except re.error as exc:
                    raise SpecError(f"card {self.family!r}: layers[{i}] has an invalid regex: {exc}") from None
        if not entries or entries[0].with_previous:
            raise SpecError(f"card {self.family!r}: layers must be non-empty and the first cannot join a "
                            f"previous one")
        return entries

    def applies_to(self, names: Iterable[str]) -> bool:
        if self.detect is None:
            return True
        pattern = re.compile(self.detect)
        return any(pattern.fullmatch(n) for n in names)

    def _numbered(self, numbers: str = r"(\d+)") -> str:
        assert self.blocks is not None
        return self.blocks.replace("{n}", numbers)

    def preset_names(self) -> list[str]:
        assert self.presets is not None
        return [*self.presets, *(["last-K"] if self.blocks else [])]


def _derived_presets(groups: Mapping[str, str]) -> dict[str, tuple[dict[str, Any], ...]]:
    heads = [{"match": f"@{g}", "trainable": True} for g in HEAD_GROUPS if g in groups]
    stages = [s for s in STAGES if s in groups]
    freeze_all = {"match": ".*", "trainable": False}
    presets: dict[str, tuple[dict[str, Any], ...]] = {}
    if heads:
        presets["heads"] = (freeze_all, *heads)
    for i, stage in enumerate(stages):
        if stage != "stage2":  # '2+' would leave only the stem frozen; Mask R-CNN stops at 3+
            presets[f"{stage[-1]}+"] = (freeze_all, *({"match": f"@{s}", "trainable": True}
                                                    for s in stages[i:]), *heads)
    presets["all"] = ({"match": ".*", "trainable": True},)
    return presets


_CARDS: dict[str, list[Card]] = {}


def _type_name(model_type: Any) -> str:
    if isinstance(model_type, str):
        return model_type
    return f"{model_type.__module__}.{model_type.__qualname__}"


def register_card(model_type: Any, card: Card) -> None:
    """Give a model class (or its 'module.Class' name) a card; later registrations are tried first.

    Subclasses without a card of their own use their base class's card.
    """
    _CARDS.setdefault(_type_name(model_type), []).append(card)


def card_for(model_types: Iterable[str], names: Iterable[str]) -> Card | None:
    """The card of the nearest class that has one applying to these canonical names."""
    listed: list[str] | None = None  # read the names only when a card has variants to tell apart
    for model_type in model_types:
        for card in reversed(_CARDS.get(model_type, [])):
            if card.detect is not None and listed is None:
                listed = list(names)
            if card.applies_to(listed or ()):
                return card
    return None


def preset_rules(card: Card | None, preset: str, model_type: str,
                 names: Sequence[str] = ()) -> tuple[Mapping[str, Any], ...]:
    """The rules of ``preset``; ``names`` (the model's canonical names) resolve ``last-K``."""
    if card is None:
        raise SpecError(f"preset {preset!r}: no model card for {model_type}; register one with "
                        f"tunespec.register_card({model_type.rpartition('.')[2]}, Card(...)) or write "
                        f"freeze/train rules instead")
    assert card.presets is not None
    if preset in card.presets:
        return card.presets[preset]
    last = LAST_K.fullmatch(preset)
    if last and card.blocks:
        return _last_k(card, int(last.group(1)), names, preset)
    raise SpecError(f"preset {preset!r} is not defined for {card.family}; presets: "
                    f"{', '.join(card.preset_names()) or 'none'}")


def _last_k(card: Card, k: int, names: Sequence[str], preset: str) -> tuple[Mapping[str, Any], ...]:
    """Freeze everything, then train the last ``k`` blocks (by block number), what sits above the
    blocks (a final norm, a pooler) and the heads."""
    assert card.blocks is not None
    pattern = re.compile(card._numbered())
    numbers = sorted({int(m.group(1)) for m in map(pattern.fullmatch, names) if m})
    if k > len(numbers):
        raise SpecError(f"preset {preset!r}: this {card.family} has {len(numbers)} blocks; use "
                        f"last-1 .. last-{len(numbers)}, or 'all'")
    narrowed = card._numbered("(?:" + "|".join(str(n) for n in numbers[-k:]) + ")")
    above = [{"match": f"@{g}", "trainable": True} for g in ABOVE_BLOCKS + HEAD_GROUPS if g in card.groups]
    return ({"match": ".*", "trainable": False}, {"match": narrowed, "trainable": True}, *above)


# --- helpers the zoo modules build their cards with --------------------------------------------
def _resnet_body(prefix: str, stem: str, stages: tuple[str, str, str, str]) -> dict[str, str]:
    """stem + stage2..stage5 under ``prefix`` (regex fragments for each part)."""
    groups = {"stem": f"{prefix}{stem}"}
    groups.update({f"stage{i + 2}": f"{prefix}{s}" for i, s in enumerate(stages)})
    return groups


def _backbone(groups: dict[str, str]) -> dict[str, str]:
    """Add ``backbone`` as the union of the stem and the stages."""
    parts = [groups["stem"], *(groups[s] for s in STAGES if s in groups)]
    return {**groups, "backbone": "|".join(f"(?:{p})" for p in parts)}


# ResNet classifiers whose structure matches torchvision's (GluonCV's v1b family ports exactly):
# the stem, four stages (the paper's conv2_x..conv5_x) and the classifier. Layers for decay
# follow timm's ResNet: the stem, then each residual block in order, then the classifier.
RESNET = Card("ResNet", {**_backbone(_resnet_body("", r"(conv1|bn1)\..*", tuple(
    rf"layer{i}\..*" for i in range(1, 5)))), "heads": r"fc\..*"},
    layers=(r"(?:conv1|bn1)\..*", r"layer(\d+)\.(\d+)\..*", r"fc\..*"))
