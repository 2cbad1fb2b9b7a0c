"""Model cards: named layer groups and presets for a model family, found from the model's class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import SpecError


@dataclass(frozen=True)
class Card:
    """Groups (name -> regex on canonical names) and presets (name -> rule mappings)."""

    family: str
    groups: Mapping[str, str] = field(default_factory=dict)
    presets: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)


_CARDS: dict[str, Card] = {}


def _type_name(model_type: Any) -> str:
    if isinstance(model_type, str):
        return model_type
    return f"{model_type.__module__}.{model_type.__qualname__}"


def register_card(model_type: Any, card: Card) -> None:
    """Give a model class (or its 'module.Class' name) a card; later registrations win."""
    _CARDS[_type_name(model_type)] = card


def card_for(model_type: str) -> Card | None:
    return _CARDS.get(model_type)


def _staged_presets(stages: list[str]) -> dict[str, tuple[dict[str, Any], ...]]:
    """Mask R-CNN's set_trainable presets: 'heads', 'N+' (stage N and up, plus heads), 'all'."""
    presets: dict[str, tuple[dict[str, Any], ...]] = {
        "heads": ({"match": ".*", "trainable": False}, {"match": "@heads", "trainable": True}),
        "all": ({"match": ".*", "trainable": True},),
    }
    for i in range(len(stages)):
        number = stages[i].removeprefix("stage")
        presets[f"{number}+"] = ({"match": ".*", "trainable": False},
                                 *({"match": f"@{s}", "trainable": True} for s in stages[i:]),
                                 {"match": "@heads", "trainable": True})
    return presets


# ResNets whose structure matches torchvision's (GluonCV's v1b family ports exactly): the stem,
# four stages named after the paper's conv2_x..conv5_x, and the classifier.
RESNET = Card(
    family="ResNet",
    groups={"stem": r"(conv1|bn1)\..*", "stage2": r"layer1\..*", "stage3": r"layer2\..*",
            "stage4": r"layer3\..*", "stage5": r"layer4\..*", "heads": r"fc\..*",
            "backbone": r"(conv1|bn1|layer\d)\..*"},
    presets=_staged_presets(["stage3", "stage4", "stage5"]),
)
register_card("torchvision.models.resnet.ResNet", RESNET)
register_card("gluoncv.model_zoo.resnetv1b.ResNetV1b", RESNET)


def preset_rules(card: Card | None, preset: str, model_type: str) -> tuple[Mapping[str, Any], ...]:
    if card is None:
        raise SpecError(f"preset {preset!r}: no model card for {model_type}; register one with "
                        f"tunespec.register_card({model_type.rpartition('.')[2]}, Card(...)) or write "
                        f"freeze/train rules instead")
    if preset not in card.presets:
        raise SpecError(f"preset {preset!r} is not defined for {card.family}; presets: "
                        f"{', '.join(card.presets) or 'none'}")
    return card.presets[preset]
