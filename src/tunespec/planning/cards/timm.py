"""Cards for timm models: ViT, ConvNeXt, ResNet and EfficientNet.

Layers reproduce timm's own ``group_matcher(coarse=False)`` grouping, which its
``param_groups_layer_decay`` numbers layers by: the regexes below are timm's, written as
fullmatches, in the same order; ``with_previous`` is timm's ``MATCH_PREV_GROUP``; parameters
none of them match (the head) form the top layer, as in timm.
"""

from __future__ import annotations

from tunespec.recipe.layer_decay import Layer
from tunespec.planning.cards.base import RESNET, Card, _backbone, register_card

# timm's ResNet names its parameters as torchvision's does (conv1, bn1, layer1..4, fc), and its
# group_matcher gives the stem, then one layer per residual block: the shared ResNet card.
register_card("timm.models.resnet.ResNet", RESNET)

_VIT_STEM = r"(?:cls_token|pos_embed|patch_embed).*"  # timm: '^cls_token|pos_embed|patch_embed'
register_card("timm.models.vision_transformer.VisionTransformer", Card("ViT (timm)", {
    "stem": _VIT_STEM, "blocks": r"blocks\.\d+\..*", "final_norm": r"norm\..*",
    "backbone": rf"{_VIT_STEM}|blocks\..*|norm\..*|reg_token", "heads": r"(?:head|fc_norm|attn_pool)\..*"},
    layers=(_VIT_STEM, r"blocks\.(\d+)\..*", Layer(r"norm\..*", with_previous=True)),
    blocks=r"blocks\.{n}\..*"))

# ConvNeXt: stages.S.downsample is numbered 0 in its stage, so it shares block 0's layer.
register_card("timm.models.convnext.ConvNeXt", Card("ConvNeXt (timm)", _backbone({
    "stem": r"stem\..*", "stage2": r"stages\.0\..*", "stage3": r"stages\.1\..*",
    "stage4": r"stages\.2\..*", "stage5": r"stages\.3\..*|norm_pre\..*"}) | {"heads": r"head\..*"},
    layers=(r"stem\..*", r"stages\.(\d+)\.(?:downsample\.|blocks\.(\d+)\.).*",
            Layer(r"norm_pre\..*", with_previous=True))))

# EfficientNet: blocks.S.B by stage (strides /2, /4, /8, /16, /16, /32, /32); conv_head + bn2
# join the last block.
register_card("timm.models.efficientnet.EfficientNet", Card("EfficientNet (timm)", _backbone({
    "stem": r"(?:conv_stem|bn1)\..*|blocks\.0\..*", "stage2": r"blocks\.1\..*", "stage3": r"blocks\.2\..*",
    "stage4": r"blocks\.[34]\..*", "stage5": r"blocks\.[56]\..*|(?:conv_head|bn2)\..*"})
    | {"heads": r"classifier\..*"},
    layers=(r"(?:conv_stem|bn1)\..*", r"blocks\.(\d+)\.(\d+)\..*", Layer(r"(?:conv_head|bn2)\..*", with_previous=True))))
