"""Model cards: named layer groups and presets for a model family, found from the model's class.

Groups are regexes on canonical names, so one card serves GluonCV and torchvision alike
where their names agree (ResNets) and says what corresponds where they don't (detectors).
Every detector card splits the parameters into ``backbone`` (``stem`` + ``stage2``..``stage5``
where the card knows the stages), ``neck`` (FPN, SSD extra layers, YOLO transitions), ``rpn``
and ``heads``. The presets follow Mask R-CNN's ``set_trainable``: ``heads`` trains everything
outside the backbone, ``N+`` adds backbone stages N and up, ``all`` trains everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import SpecError

STAGES = ("stage2", "stage3", "stage4", "stage5")
HEAD_GROUPS = ("neck", "rpn", "heads")  # what the 'heads' preset trains, in rule order


@dataclass(frozen=True)
class Card:
    """Groups (name -> regex on canonical names) and presets (name -> rule mappings).

    ``detect`` tells variants of one class apart (an SSD on VGG from one on MobileNet): the
    card applies when some parameter's canonical name fullmatches it. Presets left out are
    derived from the groups: ``heads``, ``N+`` for each ``stageN`` from 3 on, and ``all``.
    """

    family: str
    groups: Mapping[str, str] = field(default_factory=dict)
    presets: Mapping[str, tuple[Mapping[str, Any], ...]] | None = None
    detect: str | None = None

    def __post_init__(self) -> None:
        for name, regex in self.groups.items():
            try:
                re.compile(regex)
            except re.error as exc:
                raise SpecError(f"card {self.family!r}: group {name!r} has an invalid regex: {exc}") from None
        if self.presets is None:
            object.__setattr__(self, "presets", _derived_presets(self.groups))

    def applies_to(self, names: Iterable[str]) -> bool:
        if self.detect is None:
            return True
        pattern = re.compile(self.detect)
        return any(pattern.fullmatch(n) for n in names)


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


def preset_rules(card: Card | None, preset: str, model_type: str) -> tuple[Mapping[str, Any], ...]:
    if card is None:
        raise SpecError(f"preset {preset!r}: no model card for {model_type}; register one with "
                        f"tunespec.register_card({model_type.rpartition('.')[2]}, Card(...)) or write "
                        f"freeze/train rules instead")
    assert card.presets is not None
    if preset not in card.presets:
        raise SpecError(f"preset {preset!r} is not defined for {card.family}; presets: "
                        f"{', '.join(card.presets) or 'none'}")
    return card.presets[preset]


# --- the cards ------------------------------------------------------------------------------
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
# the stem, four stages (the paper's conv2_x..conv5_x) and the classifier.
RESNET = Card("ResNet", {**_backbone(_resnet_body("", r"(conv1|bn1)\..*", tuple(
    rf"layer{i}\..*" for i in range(1, 5)))), "heads": r"fc\..*"})
register_card("torchvision.models.resnet.ResNet", RESNET)
register_card("gluoncv.model_zoo.resnetv1b.ResNetV1b", RESNET)

# GluonCV's ResNet v1 classifiers: features = [conv, bn, relu, pool, stage1..4, pool], output.
register_card("gluoncv.model_zoo.resnet.ResNetV1", Card("ResNet v1", {**_backbone(_resnet_body(
    r"features\.", r"[01]\..*", tuple(rf"{i}\..*" for i in range(4, 8)))), "heads": r"output\..*"}))

# --- torchvision detectors: a ResNet body under backbone.body, an FPN, RPN / ROI heads.
_TV_RESNET_BODY = _backbone(_resnet_body(r"backbone\.body\.", r"(conv1|bn1)\..*",
                                         tuple(rf"layer{i}\..*" for i in range(1, 5))))
_TV_RCNN_HEADS = {"neck": r"backbone\.fpn\..*", "rpn": r"rpn\..*", "heads": r"roi_heads\..*"}
_FASTER_RCNN = "torchvision.models.detection.faster_rcnn.FasterRCNN"
register_card(_FASTER_RCNN, Card("Faster R-CNN (torchvision, unstaged backbone)",
                                 {"backbone": r"backbone\.body\..*", **_TV_RCNN_HEADS}))
register_card(_FASTER_RCNN, Card("Faster R-CNN (torchvision, ResNet-FPN)",
                                 {**_TV_RESNET_BODY, **_TV_RCNN_HEADS}, detect=r"backbone\.body\.layer1\..*"))
# MobileNetV3-Large by output stride: layers 0-1 /2, 2-3 /4, 4-6 /8, 7-12 /16, 13-16 /32.
register_card(_FASTER_RCNN, Card("Faster R-CNN (torchvision, MobileNetV3-FPN)", _backbone(_resnet_body(
    r"backbone\.body\.", r"[01]\..*", (r"[23]\..*", r"[4-6]\..*", r"([7-9]|1[0-2])\..*", r"1[3-6]\..*")))
    | _TV_RCNN_HEADS, detect=r"backbone\.body\.16\..*"))
register_card("torchvision.models.detection.retinanet.RetinaNet", Card(
    "RetinaNet (torchvision, ResNet-FPN)", {**_TV_RESNET_BODY, "neck": r"backbone\.fpn\..*",
                                            "heads": r"head\..*"}))
_TV_SSD = "torchvision.models.detection.ssd.SSD"
register_card(_TV_SSD, Card("SSD (torchvision, unstaged backbone)", {
    "backbone": r"backbone\.features\..*", "neck": r"backbone\.extra\..*", "heads": r"head\..*"}))
# SSDlite: features.0 = MobileNetV3 layers 0-12 plus layer 13's expansion, features.1 = the rest.
register_card(_TV_SSD, Card("SSDlite (torchvision, MobileNetV3)", _backbone(_resnet_body(
    r"backbone\.features\.", r"0\.[01]\..*", (r"0\.[23]\..*", r"0\.[4-6]\..*", r"0\.([7-9]|1[0-2])\..*",
                                            r"(0\.13|1)\..*"))) | {"neck": r"backbone\.extra\..*", "heads": r"head\..*"},
    detect=r"backbone\.features\.0\.13\..*"))
# ssd300_vgg16: features = VGG conv1_1..conv4_3 (+ the L2 norm's scale), extra.0 = conv5_x, fc6, fc7.
register_card(_TV_SSD, Card("SSD (torchvision, VGG16)", _backbone({
    "stem": r"backbone\.features\.[0-3]\..*", "stage2": r"backbone\.features\.[5-8]\..*",
    "stage3": r"backbone\.features\.1[0-5]\..*",
    "stage4": r"backbone\.(features\.(1[7-9]|2[0-2])\..*|scale_weight)",
    "stage5": r"backbone\.extra\.0\..*"}) | {"neck": r"backbone\.extra\.[1-9]\..*", "heads": r"head\..*"},
    detect=r"backbone\.scale_weight"))

# --- GluonCV detectors.
# SSD: `features` is a SymbolBlock holding the base network and the expansion layers (flat names).
_GCV_SSD = "gluoncv.model_zoo.ssd.ssd.SSD"
_SSD_HEADS = {"heads": r"(class|box)_predictors\..*"}
register_card(_GCV_SSD, Card("SSD (GluonCV, VGG16 atrous)", _backbone({
    "stem": r"features\.stages\.0\..*", "stage2": r"features\.stages\.1\..*",
    "stage3": r"features\.stages\.2\..*", "stage4": r"features\.(stages\.3\..*|norm4\..*)",
    "stage5": r"features\.stages\.[45]\..*"}) | {"neck": r"features\.extras\..*", **_SSD_HEADS},
    detect=r"features\.stages\.0\..*"))
register_card(_GCV_SSD, Card("SSD (GluonCV, ResNet v1)", _backbone(_resnet_body(
    r"features\.resnetv1\d*_", r"(conv|batchnorm)0_.*", tuple(rf"stage{i}_.*" for i in range(1, 5))))
    | {"neck": r"features\.expand_.*", **_SSD_HEADS}, detect=r"features\.resnetv1\d*_conv0_weight"))
# MobileNet v1 by output stride: conv0-2 /2, conv3-6 /4, conv7-10 /8, conv11-22 /16, conv23-26 /32.
_MOBILENET_STRIDES = (r"[0-2]", r"[3-6]", r"([7-9]|10)", r"(1[1-9]|2[0-2])", r"2[3-6]")
register_card(_GCV_SSD, Card("SSD (GluonCV, MobileNet)", _backbone(_resnet_body(
    r"features\.mobilenet\d*_(conv|batchnorm)", f"{_MOBILENET_STRIDES[0]}_.*",
    tuple(f"{s}_.*" for s in _MOBILENET_STRIDES[1:]))) | {"neck": r"features\.expand_.*", **_SSD_HEADS},
    detect=r"features\.mobilenet\d*_conv0_weight"))

# YOLOv3: stages.0/1/2 end at output strides 8/16/32; transitions and yolo_blocks form the neck.
_GCV_YOLO = "gluoncv.model_zoo.yolo.yolo3.YOLOV3"
_YOLO_REST = {"neck": r"(transitions|yolo_blocks)\..*", "heads": r"yolo_outputs\..*"}
_YOLO_TOP = (r"stages\.1\..*", r"stages\.2\..*")
register_card(_GCV_YOLO, Card("YOLOv3 (GluonCV, Darknet-53)", _backbone({
    "stem": r"stages\.0\.[0-2]\..*", "stage2": r"stages\.0\.[3-5]\..*",
    "stage3": r"stages\.0\.([6-9]|1[0-4])\..*", "stage4": _YOLO_TOP[0], "stage5": _YOLO_TOP[1]})
    | _YOLO_REST, detect=r"stages\.0\.2\.body\..*"))
# MobileNet features: layer i is at index 3i (conv, bn, relu), so the stride bands become ranges.
register_card(_GCV_YOLO, Card("YOLOv3 (GluonCV, MobileNet)", _backbone({
    "stem": r"stages\.0\.[0-8]\..*", "stage2": r"stages\.0\.(9|1\d|20)\..*",
    "stage3": r"stages\.0\.(2[1-9]|3[0-2])\..*", "stage4": _YOLO_TOP[0], "stage5": _YOLO_TOP[1]})
    | _YOLO_REST, detect=r"stages\.0\.31\..*"))

# Faster R-CNN (and Mask R-CNN, a subclass). Without FPN: features = conv1..layer3, top_features =
# layer4 (run per region, but pretrained as stage 5). With FPN: one SymbolBlock, flat names.
_GCV_RCNN = "gluoncv.model_zoo.rcnn.faster_rcnn.faster_rcnn.FasterRCNN"
register_card(_GCV_RCNN, Card("Faster R-CNN (GluonCV, ResNet v1b)", _backbone({
    "stem": r"features\.[01]\..*", "stage2": r"features\.4\..*", "stage3": r"features\.5\..*",
    "stage4": r"features\.6\..*", "stage5": r"top_features\..*"})
    | {"rpn": r"rpn\..*", "heads": r"(?!features\.|top_features\.|rpn\.).*"}, detect=r"top_features\..*"))
register_card(_GCV_RCNN, Card("Faster R-CNN (GluonCV, ResNet v1b FPN)", _backbone(_resnet_body(
    r"features\.resnetv1b_", r"(conv|batchnorm)0_.*", tuple(rf"(layers|down){i}_.*" for i in range(1, 5))))
    | {"neck": r"features\.P\d+_.*", "rpn": r"rpn\..*", "heads": r"(?!features\.|rpn\.).*"},
    detect=r"features\.resnetv1b_conv0_weight"))

# CenterNet: base_network = backbone + upsampling (deconv / DUC), then the heatmap/wh/offset heads.
_GCV_CENTERNET = "gluoncv.model_zoo.center_net.center_net.CenterNet"
_CENTERNET_REST = {"neck": r"base_network\.(deconv|upsampling)\..*", "heads": r"heads\..*"}
register_card(_GCV_CENTERNET, Card("CenterNet (GluonCV, unstaged backbone)", {
    "backbone": r"base_network\.(?!deconv\.|upsampling\.).*", **_CENTERNET_REST}))
register_card(_GCV_CENTERNET, Card("CenterNet (GluonCV, ResNet v1b)", _backbone(_resnet_body(
    r"base_network\.base_network\.", r"[01]\..*", tuple(rf"{i}\..*" for i in range(4, 8))))
    | _CENTERNET_REST, detect=r"base_network\.base_network\.4\..*"))
