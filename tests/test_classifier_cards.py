"""Cards of the classifier and encoder families people fine-tune now: groups partition every
parameter, each preset trains exactly its groups, and the ordered layers put the stem at the
bottom and the classifier on top. Models are built without weights, in their smallest sizes."""

from __future__ import annotations

import math
import re
import warnings

import pytest

from frameworks import needs
import tunespec
from tunespec.planning.cards import ABOVE_BLOCKS, HEAD_GROUPS, STAGES, card_for


def _tv(builder):
    needs("torch")
    tv = needs("torchvision")
    return lambda: builder(tv)


def _tv_vit(tv):
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32)


def _tv_convnext(tv):
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 2), CNBlockConfig(24, 32, 1),
                     CNBlockConfig(32, None, 1)])


def _tv_swin(tv):
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer([4, 4], 8, [1, 2, 1, 1], [1, 1, 1, 1], [4, 4])


def _timm(name, **kwargs):
    def build():
        timm = pytest.importorskip("timm", reason="needs timm: pip install 'tunespec[test]'")
        return timm.create_model(name, pretrained=False, **kwargs)
    return build


def _gluon(name):
    def build():
        needs("mxnet")
        from tunespec.backends.mxnet import import_gluoncv
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = import_gluoncv().model_zoo.get_model(name, pretrained=False)
            net.initialize()
        return net
    return build


def _bert(cls_name):
    def build():
        needs("torch")
        transformers = pytest.importorskip("transformers", reason="needs transformers: pip install 'tunespec[huggingface]'")
        config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=32, num_labels=3)
        return getattr(transformers, cls_name)(config)
    return build


# model -> (card family, number of layers for layer_decay)
MODELS = {
    "tv_vit": (_tv(_tv_vit), "ViT (torchvision)", 5),  # stem, 3 blocks (+ final norm), heads
    "tv_convnext": (_tv(_tv_convnext), "ConvNeXt (torchvision)", 7),  # stem, 5 blocks, classifier
    "tv_swin": (_tv(_tv_swin), "Swin (torchvision)", 7),
    "tv_efficientnet_b0": (_tv(lambda tv: tv.models.efficientnet_b0(weights=None)), "EfficientNet (torchvision)", 18),
    "tv_mobilenet_v3_small": (_tv(lambda tv: tv.models.mobilenet_v3_small(weights=None)),
                              "MobileNetV3-Small (torchvision)", 13),
    "tv_mobilenet_v3_large": (_tv(lambda tv: tv.models.mobilenet_v3_large(weights=None)),
                              "MobileNetV3-Large (torchvision)", 17),
    "tv_resnet18": (_tv(lambda tv: tv.models.resnet18(weights=None)), "ResNet", 10),
    "timm_vit_tiny": (_timm("vit_tiny_patch16_224", img_size=32), "ViT (timm)", 14),
    "timm_convnext_atto": (_timm("convnext_atto"), "ConvNeXt (timm)", 14),
    "timm_resnet18": (_timm("resnet18"), "ResNet", 10),
    "timm_efficientnet_b0": (_timm("efficientnet_b0"), "EfficientNet (timm)", 18),
    "gluon_resnet18_v1b": (_gluon("resnet18_v1b"), "ResNet", 10),
    "gluon_resnet18_v1": (_gluon("resnet18_v1"), "ResNet v1", 10),
    "gluon_mobilenet0.25": (_gluon("mobilenet0.25"), "MobileNet (GluonCV)", 28),
    "gluon_mobilenetv2_0.25": (_gluon("mobilenetv2_0.25"), "MobileNetV2 (GluonCV)", 19),
    "bert": (_bert("BertModel"), "BERT encoder (transformers)", 5),  # embeddings, 3 layers, pooler
    "bert_sequence": (_bert("BertForSequenceClassification"), "BERT sequence classifier (transformers)", 5),
    "bert_token": (_bert("BertForTokenClassification"), "BERT token classifier (transformers)", 5),
}


def members(plan, regex: str) -> set[str]:
    pattern = re.compile(regex)
    return {d.name for d in plan.decisions if pattern.fullmatch(d.name)}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    build, family, layers = MODELS[request.param]
    model = build()
    plan = tunespec.plan(model, {})
    listing = plan.listing
    card = card_for((listing.model_type, *listing.base_types), (t.canonical for t in listing.params))
    assert card is not None and card.family == family
    return model, plan, card, layers


def test_groups_partition_the_parameters(case):
    _, plan, card, _ = case
    names = {d.name for d in plan.decisions}
    parts = {g: members(plan, card.groups[g]) for g in card.groups}
    assert all(parts.values()), f"groups matching nothing: {[g for g, m in parts.items() if not m]}"
    top = [g for g in ("backbone", *HEAD_GROUPS) if g in parts]
    assert sum(len(parts[g]) for g in top) == len(names) and set().union(*(parts[g] for g in top)) == names
    inner = [g for g in ("stem", "embeddings", *STAGES, "blocks", *ABOVE_BLOCKS) if g in parts]
    assert sum(len(parts[g]) for g in inner) == len(parts["backbone"])
    assert set().union(*(parts[g] for g in inner)) == parts["backbone"]


def test_presets_train_exactly_their_groups(case):
    model, plan, card, _ = case
    parts = {g: members(plan, card.groups[g]) for g in card.groups}
    heads = set().union(*(parts[g] for g in HEAD_GROUPS if g in parts))
    for preset in card.presets:
        trained = {d.name for d in tunespec.plan(model, {"preset": preset}).trainable}
        if preset == "all":
            expected = {d.name for d in plan.decisions}
        elif preset == "heads":
            expected = heads
        else:
            stages = STAGES[STAGES.index(f"stage{preset[0]}"):]
            expected = heads.union(*(parts[s] for s in stages if s in parts))
        assert trained == expected, preset
    if card.blocks:
        numbers = sorted({int(m.group(1)) for m in map(re.compile(card.blocks.replace("{n}", r"(\d+)")).fullmatch,
                                                         (d.name for d in plan.decisions)) if m})
        above = set().union(*(parts[g] for g in ABOVE_BLOCKS if g in parts))
        for k in (1, len(numbers)):
            trained = {d.name for d in tunespec.plan(model, {"preset": f"last-{k}"}).trainable}
            blocks = members(plan, card.blocks.replace("{n}", "(?:" + "|".join(map(str, numbers[-k:])) + ")"))
            assert blocks and trained == blocks | above | heads, k
        with pytest.raises(tunespec.SpecError, match=f"has {len(numbers)} blocks"):
            tunespec.plan(model, {"preset": f"last-{len(numbers) + 1}"})


def test_layers_order_every_parameter_from_stem_to_head(case):
    model, plan, card, layers = case
    decayed = tunespec.plan(model, {"layer_decay": {"rate": 0.5}})
    depth = {d.name: layers - 1 - round(math.log2(1 / d.lr_mult)) for d in decayed.decisions}
    assert sorted(set(depth.values())) == list(range(layers))
    first, last = decayed.decisions[0].name, decayed.decisions[-1].name
    assert depth[first] == 0 or depth[first] == min(depth.values())
    assert depth[last] == layers - 1  # the classifier (or pooler) trains at the base lr
    if "heads" in card.groups:
        assert {depth[n] for n in members(plan, card.groups["heads"])} == {layers - 1}
