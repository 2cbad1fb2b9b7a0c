"""Detector cards: groups partition each model's parameters, and presets mean the same layers in
GluonCV and torchvision where both have the model kind (Faster R-CNN with FPN, SSD on VGG16)."""

from __future__ import annotations

import re
import warnings

import pytest

from frameworks import needs

torch = needs("torch")
needs("mxnet")

import torchvision  # noqa: E402

import tunespec  # noqa: E402
from tunespec.backends.mxnet import import_gluoncv  # noqa: E402
from tunespec.planning.cards import HEAD_GROUPS, STAGES, card_for  # noqa: E402

GLUONCV = {  # model -> (card family, has stages)
    "ssd_300_vgg16_atrous_voc": ("SSD (GluonCV, VGG16 atrous)", True),
    "ssd_512_resnet50_v1_voc": ("SSD (GluonCV, ResNet v1)", True),
    "ssd_300_mobilenet0.25_voc": ("SSD (GluonCV, MobileNet)", True),
    "yolo3_darknet53_voc": ("YOLOv3 (GluonCV, Darknet-53)", True),
    "yolo3_mobilenet0.25_voc": ("YOLOv3 (GluonCV, MobileNet)", True),
    "faster_rcnn_resnet50_v1b_voc": ("Faster R-CNN (GluonCV, ResNet v1b)", True),
    "faster_rcnn_fpn_resnet50_v1b_coco": ("Faster R-CNN (GluonCV, ResNet v1b FPN)", True),
    "mask_rcnn_resnet50_v1b_coco": ("Faster R-CNN (GluonCV, ResNet v1b)", True),
    "center_net_resnet18_v1b_voc": ("CenterNet (GluonCV, ResNet v1b)", True),
    "center_net_mobilenetv3_small_duc_voc": ("CenterNet (GluonCV, unstaged backbone)", False),
    "resnet18_v1": ("ResNet v1", True),
    "resnet50_v1b": ("ResNet", True),
}
TORCHVISION = {
    "fasterrcnn_resnet50_fpn": ("Faster R-CNN (torchvision, ResNet-FPN)", True),
    "maskrcnn_resnet50_fpn": ("Faster R-CNN (torchvision, ResNet-FPN)", True),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("Faster R-CNN (torchvision, MobileNetV3-FPN)", True),
    "retinanet_resnet50_fpn": ("RetinaNet (torchvision, ResNet-FPN)", True),
    "ssd300_vgg16": ("SSD (torchvision, VGG16)", True),
    "ssdlite320_mobilenet_v3_large": ("SSDlite (torchvision, MobileNetV3)", True),
}


def gluoncv_model(name: str):
    gcv = import_gluoncv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net = gcv.model_zoo.get_model(name, pretrained=False, pretrained_base=False)
        except TypeError:  # classifiers take no pretrained_base
            net = gcv.model_zoo.get_model(name, pretrained=False)
        net.initialize()
    return net


def torchvision_model(name: str):
    if name.startswith("resnet"):
        return getattr(torchvision.models, name)(weights=None)
    return getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, num_classes=5)


def members(plan, regex: str) -> set[str]:
    pattern = re.compile(regex)
    return {d.name for d in plan.decisions if pattern.fullmatch(d.name)}


def check_card(model, family: str, staged: bool) -> None:
    plan = tunespec.plan(model, {})
    listing = plan.listing
    card = card_for((listing.model_type, *listing.base_types), (t.canonical for t in listing.params))
    assert card is not None and card.family == family
    names = {d.name for d in plan.decisions}
    parts = {g: members(plan, card.groups[g]) for g in card.groups}
    assert all(parts.values()), f"groups matching nothing: {[g for g, m in parts.items() if not m]}"
    top = [g for g in ("backbone", *HEAD_GROUPS) if g in parts]
    assert sum(len(parts[g]) for g in top) == len(names) and set().union(*(parts[g] for g in top)) == names
    stages = [g for g in ("stem", *STAGES) if g in parts]
    assert bool(stages) == staged
    if staged:
        assert sum(len(parts[g]) for g in stages) == len(parts["backbone"])
        assert set().union(*(parts[g] for g in stages)) == parts["backbone"]
    for preset in card.presets:
        trained = {d.name for d in tunespec.plan(model, tunespec.Spec.preset(preset)).trainable}
        expected = names if preset == "all" else set().union(*(parts[g] for g in HEAD_GROUPS if g in parts))
        if preset.endswith("+"):
            expected |= set().union(*(parts[s] for s in STAGES[STAGES.index(f"stage{preset[0]}"):]))
        assert trained == expected, preset


@pytest.mark.parametrize("name", list(GLUONCV))
def test_gluoncv_cards_partition_the_parameters(name):
    check_card(gluoncv_model(name), *GLUONCV[name])


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_cards_partition_the_parameters(name):
    check_card(torchvision_model(name), *TORCHVISION[name])


def trained_groups(model, preset: str) -> dict[str, int]:
    """Per card group, how many of its tensors the preset trains."""
    plan = tunespec.plan(model, tunespec.Spec.preset(preset))
    card = card_for((plan.listing.model_type, *plan.listing.base_types), (d.name for d in plan.decisions))
    trained = {d.name for d in plan.trainable}
    return {g: len(members(plan, r) & trained) for g, r in card.groups.items()
            if g in ("stem", *STAGES, "backbone")}


@pytest.mark.parametrize("gluon_name,torch_name", [
    ("faster_rcnn_fpn_resnet50_v1b_coco", "fasterrcnn_resnet50_fpn"),
    ("ssd_300_vgg16_atrous_voc", "ssd300_vgg16"),
    ("resnet50_v1b", "resnet50"),
])
@pytest.mark.parametrize("preset", ["heads", "3+", "4+", "5+", "all"])
def test_a_preset_trains_the_same_backbone_layers_in_both_frameworks(gluon_name, torch_name, preset):
    g, t = gluoncv_model(gluon_name), torchvision_model(torch_name)
    assert trained_groups(g, preset) == trained_groups(t, preset)


def test_a_card_that_does_not_fit_the_model_is_a_clear_error():
    net = gluoncv_model("center_net_mobilenetv3_small_duc_voc")  # a backbone its card does not stage
    with pytest.raises(tunespec.SpecError, match=r"preset '4\+' is not defined for CenterNet .*heads, all"):
        tunespec.plan(net, tunespec.Spec.preset("4+"))
    tunespec.register_card(type(net), tunespec.Card("broken", {"heads": r"no_such_layer\..*"}))
    try:
        with pytest.raises(tunespec.SpecError, match="the broken card's '@heads' matches no parameter"):
            tunespec.plan(net, tunespec.Spec.preset("heads"))
    finally:
        from tunespec.planning import cards
        cards._CARDS["gluoncv.model_zoo.center_net.center_net.CenterNet"].pop()


def test_users_register_cards_for_their_own_models_and_subclasses_inherit_them():
    class Net(torch.nn.Sequential):
        pass

    class Child(Net):
        pass

    tunespec.register_card(Net, tunespec.Card("mine", {"backbone": r"0\..*", "heads": r"1\..*"}))
    model = Child(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert {d.name for d in tunespec.plan(model, tunespec.Spec.preset("heads")).trainable} == {"1.weight", "1.bias"}
