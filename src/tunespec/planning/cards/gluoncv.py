"""Cards for GluonCV models: ResNet v1b / v1 and MobileNet classifiers (with ordered layers for
``layer_decay``, so a recipe means the same in Gluon as in torch), and the detectors."""

from __future__ import annotations

from tunespec.recipe.layer_decay import Layer
from tunespec.planning.cards.base import RESNET, Card, _backbone, _resnet_body, register_card

register_card("gluoncv.model_zoo.resnetv1b.ResNetV1b", RESNET)

# GluonCV's ResNet v1 classifiers: features = [conv, bn, relu, pool, stage1..4, pool], output.
register_card("gluoncv.model_zoo.resnet.ResNetV1", Card("ResNet v1", {**_backbone(_resnet_body(
    r"features\.", r"[01]\..*", tuple(rf"{i}\..*" for i in range(4, 8)))), "heads": r"output\..*"},
    layers=(r"features\.[01]\..*", r"features\.([4-7])\.(\d+)\..*", r"output\..*")))

# --- detectors.
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

# --- MobileNet classifiers. v1: unit i (conv, bn, relu) at features.3i, 27 units; the stride
# bands follow the detector cards' (units 0-2 /2, 3-6 /4, 7-10 /8, 11-22 /16, 23-26 /32).
register_card("gluoncv.model_zoo.mobilenet.MobileNet", Card("MobileNet (GluonCV)", _backbone({
    "stem": r"features\.[0-8]\..*", "stage2": r"features\.(9|1\d|20)\..*",
    "stage3": r"features\.(2[1-9]|3[0-2])\..*", "stage4": r"features\.(3[3-9]|[45]\d|6[0-8])\..*",
    "stage5": r"features\.(69|7\d)\..*"}) | {"heads": r"output\..*"},
    layers=(*(rf"features\.(?:{3 * i}|{3 * i + 1})\..*" for i in range(27)), r"output\..*")))
# v2: conv+bn stem (features.0-1), 17 bottlenecks (features.3-19), a last conv+bn (20-21) kept
# with the last block, as timm keeps its conv_head; strides by the paper's table.
register_card("gluoncv.model_zoo.mobilenet.MobileNetV2", Card("MobileNetV2 (GluonCV)", _backbone({
    "stem": r"features\.[0-3]\..*", "stage2": r"features\.[45]\..*", "stage3": r"features\.[6-8]\..*",
    "stage4": r"features\.(9|1[0-5])\..*", "stage5": r"features\.(1[6-9]|2[01])\..*"})
    | {"heads": r"output\..*"},
    layers=(r"features\.[01]\..*", r"features\.([3-9]|1\d)\..*", Layer(r"features\.2[01]\..*", with_previous=True),
            r"output\..*")))
