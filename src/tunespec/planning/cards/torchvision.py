"""Cards for torchvision models: ResNet, ViT, ConvNeXt, Swin, EfficientNet and MobileNetV3
classifiers (with ordered layers for ``layer_decay``), and the detectors.

Layers follow timm's ordering of the same architectures: the stem first, then every block in
order (a downsampling layer with the block after it), the final norm or head convolution with
the last block, the classifier on top.
"""

from __future__ import annotations

from tunespec.recipe.layer_decay import Layer
from tunespec.planning.cards.base import RESNET, Card, _backbone, _resnet_body, register_card

register_card("torchvision.models.resnet.ResNet", RESNET)

# --- classifiers.
register_card("torchvision.models.vision_transformer.VisionTransformer", Card("ViT (torchvision)", {
    "stem": r"class_token|conv_proj\..*|encoder\.pos_embedding",
    "blocks": r"encoder\.layers\.encoder_layer_\d+\..*", "final_norm": r"encoder\.ln\..*",
    "backbone": r"class_token|conv_proj\..*|encoder\..*", "heads": r"heads\..*"},
    layers=(r"class_token|conv_proj\..*|encoder\.pos_embedding", r"encoder\.layers\.encoder_layer_(\d+)\..*",
            Layer(r"encoder\.ln\..*", with_previous=True), r"heads\..*"),
    blocks=r"encoder\.layers\.encoder_layer_{n}\..*"))

# ConvNeXt and Swin: features.0 = stem, odd entries = the four stages, even ones = downsampling.
_STAGED_FEATURES = {"stem": r"features\.0\..*", "stage2": r"features\.1\..*",
                    "stage3": r"features\.[23]\..*", "stage4": r"features\.[45]\..*"}
# timm puts each downsampling layer with the first block after it; so do these layers.
def _stage_layers(downsample: str) -> tuple[str, ...]:
    """One entry per stage (features.1, 3, 5, 7): its blocks by number, the downsampling before it
    (features.2, 4, 6) numbered 0, so it joins block 0 of the stage it leads into."""
    return tuple(rf"features\.(?:{f - 1}\.{downsample}|{f}\.(\d+)\.).*" if f > 1 else r"features\.1\.(\d+)\..*"
                 for f in (1, 3, 5, 7))


register_card("torchvision.models.convnext.ConvNeXt", Card("ConvNeXt (torchvision)", _backbone(
    {**_STAGED_FEATURES, "stage5": r"features\.[67]\..*"}) | {"heads": r"classifier\..*"},
    layers=(r"features\.0\..*", *_stage_layers(r"[01]\."), r"classifier\..*")))
register_card("torchvision.models.swin_transformer.SwinTransformer", Card("Swin (torchvision)", _backbone(
    {**_STAGED_FEATURES, "stage5": r"features\.[67]\..*|norm\..*"}) | {"heads": r"head\..*"},
    layers=(r"features\.0\..*", *_stage_layers(r"(?:reduction|norm)\."), Layer(r"norm\..*", with_previous=True),
            r"head\..*")))

# EfficientNet: features.0 = stem, 1..7 = MBConv stages (strides /2, /4, /8, /16, /16, /32, /32),
# features.8 = the 1x1 head convolution (timm's conv_head + bn2, kept with the last block).
register_card("torchvision.models.efficientnet.EfficientNet", Card("EfficientNet (torchvision)", _backbone({
    "stem": r"features\.[01]\..*", "stage2": r"features\.2\..*", "stage3": r"features\.3\..*",
    "stage4": r"features\.[45]\..*", "stage5": r"features\.[6-8]\..*"}) | {"heads": r"classifier\..*"},
    layers=(r"features\.0\..*", r"features\.([1-7])\.(\d+)\..*", Layer(r"features\.8\..*", with_previous=True),
            r"classifier\..*")))

# MobileNetV3: features.0 = stem, then one inverted-residual block per entry, then the last conv.
_MBV3 = "torchvision.models.mobilenetv3.MobileNetV3"
_MBV3_LAYERS = (r"features\.0\..*", r"features\.(\d+)\.block\..*",
                Layer(r"features\.\d+\.[01]\..*", with_previous=True), r"classifier\..*")
register_card(_MBV3, Card("MobileNetV3-Small (torchvision)", _backbone(_resnet_body(
    r"features\.", r"0\..*", (r"1\..*", r"[23]\..*", r"[4-8]\..*", r"(9|1[0-2])\..*")))
    | {"heads": r"classifier\..*"}, detect=r"features\.12\.0\..*", layers=_MBV3_LAYERS))
register_card(_MBV3, Card("MobileNetV3-Large (torchvision)", _backbone(_resnet_body(
    r"features\.", r"[01]\..*", (r"[23]\..*", r"[4-6]\..*", r"([7-9]|1[0-2])\..*", r"1[3-6]\..*")))
    | {"heads": r"classifier\..*"}, detect=r"features\.16\..*", layers=_MBV3_LAYERS))

# --- detectors: a ResNet body under backbone.body, an FPN, RPN / ROI heads.
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

