"""timm models' cards come from the models themselves (``group_matcher``, ``get_classifier``), and
``from_timm`` equals timm's own ``create_optimizer_v2`` on every family: a sweep over timm
architectures (built once each, without weights, in small sizes), per parameter, float ==."""

from __future__ import annotations

import re
import warnings

import pytest

from frameworks import needs
import tunespec
from tunespec.planning.cards import model_card
from tunespec.planning.cards.timm import group_keys, layer_numbers, name_regexes

timm = pytest.importorskip("timm", reason="needs timm: pip install 'tunespec[test]'")

# (architecture, kwargs that shrink it without changing its class or its parameter names' shape)
SWEEP = [
    ("vit_tiny_patch16_224", dict(img_size=32, depth=3)),
    ("vit_tiny_patch16_224", dict(img_size=32, depth=2, reg_tokens=4)),  # ViT with registers
    ("vit_base_patch32_clip_224", dict(img_size=64, depth=2, embed_dim=64, num_heads=2)),  # norm_pre
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2)),
    ("beit_base_patch16_224", dict(img_size=32, depth=2, embed_dim=64, num_heads=2)),
    ("cait_xxs24_224", dict(img_size=32, depth=2)),  # group_matcher is a function
    ("eva02_tiny_patch14_224", dict(img_size=28, depth=2, num_classes=10)),  # its default has no head
    ("test_vit_relpos", {}),
    ("xcit_nano_12_p16_224", dict(img_size=32, depth=2)),
    ("pit_ti_224", {}),  # no group_matcher: timm's auto_group_layers
    ("levit_128s", {}),
    ("swin_tiny_patch4_window7_224", dict(img_size=56, depths=(1, 1, 2, 1), embed_dim=32, num_heads=(1, 1, 1, 1))),
    ("swinv2_tiny_window8_256", dict(img_size=64, depths=(1, 1, 2, 1), embed_dim=32, num_heads=(1, 1, 1, 1),
                                     window_size=4)),
    ("test_maxvit", {}),
    ("test_coatnet", {}),
    ("coat_lite_tiny", {}),
    ("efficientformerv2_s0", {}),
    ("efficientvit_b0", {}),
    ("efficientvit_m0", {}),
    ("edgenext_xx_small", {}),
    ("hgnetv2_b0", {}),
    ("test_mambaout", {}),
    ("regnetx_002", {}),
    ("mobilevit_xxs", {}),  # ByobNet
    ("test_byobnet", {}),
    ("mobilenetv3_small_050", {}),
    ("lcnet_050", {}),
    ("convnext_atto", {}),
    ("test_convnext", {}),
    ("efficientnet_b0", {}),
    ("tf_efficientnetv2_b0", {}),
    ("mobilenetv2_050", {}),
    ("resnet18", {}),
    ("resnet10t", {}),
    ("resnest14d", {}),
    ("ghostnet_050", {}),
    ("dla46_c", {}),
    ("test_nfnet", {}),
    ("rexnet_100", {}),
    ("dpn48b", {}),
    ("ese_vovnet19b_slim_dw", {}),
    ("visformer_tiny", {}),
    ("csatv2", {}),  # no group_matcher: timm's auto_group_layers
    ("poolformer_s12", {}),  # MetaFormer: no group_matcher either
]
IDS = [n + ("_reg4" if "reg_tokens" in k else "") for n, k in SWEEP]


@pytest.fixture(scope="module", params=SWEEP, ids=IDS)
def built(request):
    name, kwargs = request.param
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False, **kwargs)


def _per_param(model, opt):
    """(lr, weight decay, lr_scale) per parameter name once timm's scheduler has set the lrs."""
    from timm.scheduler import CosineLRScheduler

    CosineLRScheduler(opt, t_initial=10)  # at t=0 each group's lr becomes lr * lr_scale
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"], g["lr_scale"]) for g in opt.param_groups for p in g["params"]}


def timm_groups(model, **kwargs):
    """timm's own optimizer's per-parameter settings; requires_grad restored afterwards (its
    layer_decay_no_opt_scale switches it off)."""
    from timm.optim import create_optimizer_v2

    try:
        return _per_param(model, create_optimizer_v2(model, "adamw", lr=1e-3, **kwargs))
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def tunespec_groups(model, recipe):
    return _per_param(model, tunespec.optimizer(model, recipe, name="adamw", lr=1e-3, lr_scale=True))


def test_from_timm_layer_decay_equals_timm_on_every_family(built):
    """Trainable set (the optimizer's parameters), lr, lr_scale and weight decay, float ==."""
    ref = timm_groups(built, weight_decay=0.05, layer_decay=0.75)
    recipe = tunespec.from_timm(built, weight_decay=0.05, layer_decay=0.75)
    got = tunespec_groups(built, recipe)
    assert got.keys() == ref.keys()
    assert {n: v for n, v in got.items() if v != ref[n]} == {}
    if len({v[2] for v in ref.values()}) > 1:  # the decay reaches the stem
        assert max(got.values(), key=lambda v: v[2])[2] == 1.0 and min(v[2] for v in got.values()) < 1.0


def test_the_card_follows_timms_own_layer_map(built):
    from timm.models import group_parameters
    from timm.optim._param_groups import auto_group_layers

    layer_map = group_parameters(built, built.group_matcher(coarse=False), reverse=True) \
        if hasattr(built, "group_matcher") else auto_group_layers(built)
    plan = tunespec.plan(built, {"layer_decay": {"rate": 0.5}})
    top = max(layer_map.values())
    assert {d.name: d.lr_mult for d in plan.decisions} == {n: 0.5 ** (top - layer_map.get(n, top))
                                                          for n, _ in built.named_parameters()}


def test_heads_preset_trains_the_classifier_timm_names(built):
    card = model_card(tunespec.plan(built, {}).listing)
    classifier = built.get_classifier()
    modules = classifier if isinstance(classifier, tuple) else (classifier,)
    own = {id(p) for m in modules for p in m.parameters()}
    trained = {id(d.tensor.handle) for d in tunespec.plan(built, {"preset": "heads"}).trainable}
    assert own and own <= trained, card.family
    assert len(trained) < len(list(built.parameters()))


# --- the tensors hand-copied cards missed ------------------------------------------------------
def _vit(name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False, img_size=32, depth=2, **kwargs)


@pytest.mark.parametrize("name, kwargs, tensors", [
    ("deit_tiny_distilled_patch16_224", {}, ["dist_token", "cls_token", "pos_embed"]),
    ("vit_tiny_patch16_224", dict(reg_tokens=4), ["reg_token", "cls_token"]),
    ("vit_base_patch32_clip_224", dict(embed_dim=64, num_heads=2), ["norm_pre.weight", "norm_pre.bias"]),
])
def test_stem_tensors_get_the_first_layers_scale(name, kwargs, tensors):
    model = _vit(name, **kwargs)
    plan = tunespec.plan(model, {"layer_decay": {"rate": 0.65}})
    first = plan["patch_embed.proj.weight"].lr_mult
    assert first == 0.65 ** 3  # stem, 2 blocks, head
    assert {t: plan[t].lr_mult for t in tensors} == {t: first for t in tensors}
    assert timm_groups(model, layer_decay=0.65)[tensors[0]][2] == first


def test_heads_preset_on_distilled_deit_trains_both_heads():
    model = _vit("deit_tiny_distilled_patch16_224")
    trained = {d.name for d in tunespec.plan(model, {"preset": "heads"}).trainable}
    assert trained == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert {d.name for d in tunespec.plan(model, {"preset": "last-1"}).trainable} == trained | {
        n for n, _ in model.named_parameters() if n.startswith(("blocks.1.", "norm."))}


def test_a_subclass_and_a_wrapped_model_read_the_same_card():
    torch = needs("torch")
    from timm.models.vision_transformer import VisionTransformer

    class Mine(VisionTransformer):
        pass

    mine = Mine(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    plan = tunespec.plan(mine, {"layer_decay": {"rate": 0.5}})
    wrapped = tunespec.plan(torch.nn.DataParallel(mine), {"layer_decay": {"rate": 0.5}})
    assert [(d.name, d.lr_mult) for d in wrapped.decisions] == [(d.name, d.lr_mult) for d in plan.decisions]
    assert model_card(wrapped.listing).family == "ViT (timm)"


@pytest.mark.parametrize("matcher", ["a list", "raises", "captures a word"])
def test_a_model_that_misdescribes_its_layers_gets_a_card_without_them(matcher):
    """Planning goes on (presets from its classifier); layer_decay is an error naming the fix."""
    needs("torch")
    from timm.models.resnet import ResNet, BasicBlock

    class Odd(ResNet):
        def group_matcher(self, coarse=False):
            if matcher == "raises":
                raise RuntimeError("no")
            return ["not", "a", "matcher"] if matcher == "a list" else {"stem": r"^(conv)1"}

    odd = Odd(BasicBlock, [1, 1, 1, 1], num_classes=3)
    with pytest.raises(tunespec.SpecError, match="has no ordered layers; list them from input to output"):
        tunespec.plan(odd, {"layer_decay": {"rate": 0.5}})
    assert {d.name for d in tunespec.plan(odd, {"preset": "heads"}).trainable} == {"fc.weight", "fc.bias"}
    explicit = tunespec.plan(odd, {"layer_decay": {"rate": 0.5, "layers": [r"conv1\..*|bn1\..*", r"layer(\d)\..*"]}})
    assert explicit["conv1.weight"].lr_mult == 0.5 ** 5


def test_the_card_is_read_again_when_the_model_changes():
    model = _vit("vit_tiny_patch16_224")
    before = tunespec.plan(model, {"preset": "heads"})
    assert {d.name for d in before.trainable} == {"head.weight", "head.bias"}
    model.reset_classifier(0)  # no classifier any more: no heads
    with pytest.raises(tunespec.SpecError, match="preset 'heads'"):
        tunespec.plan(model, {"preset": "heads"})
    model.reset_classifier(5)
    assert {d.name for d in tunespec.plan(model, {"preset": "heads"}).trainable} == {"head.weight", "head.bias"}


# --- timm's grouping rules and the regexes the card writes ---------------------------------
def test_group_keys_follow_timms_rules():
    from timm.models._manipulate import group_with_matcher

    names = ["stem.w", "stages.0.downsample.w", "stages.0.blocks.0.w", "stages.0.blocks.1.w",
             "stages.1.downsample.w", "stages.1.blocks.0.w", "norm_pre.w", "head.fc.w"]
    matcher = {"stem": r"^stem", "blocks": [(r"^stages\.(\d+)\.downsample", (0,)),
                                             (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm_pre", (99999,))]}
    keys, stem = group_keys(names, matcher)
    ref = group_with_matcher(((n, None) for n in names), matcher, reverse=True)
    assert layer_numbers(keys) == [ref[n] for n in names] == [0, 1, 1, 2, 3, 3, 3, 4]
    assert stem == {0}


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

_ENTRY = st.sampled_from([r"^stem", r"^blocks\.(\d+)", r"^blocks\.(\d+)\.(\d+)", r"^stages\.(\d+)\.downsample",
                          r"^stages\.(\d+)\.blocks\.(\d+)", r"^norm", r"^head", r"^s(\d+)\.b(\d+)", r"^x|y"])
_SUFFIX = st.sampled_from([None, (0,), (99999,), (1, 99999)])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["stem.w", "blocks.0.w", "blocks.1.0.w", "blocks.1.1.w", "blocks.10.w",
                                 "stages.0.downsample.w", "stages.0.blocks.0.w", "stages.1.blocks.2.w",
                                 "norm.w", "head.w", "s1.b2.w", "s0.b10.w", "x.w", "yz.w", "other.w"]),
                min_size=1, max_size=12, unique=True),
       st.dictionaries(st.sampled_from(["stem", "blocks", "extra"]),
                       st.one_of(_ENTRY, st.lists(st.tuples(_ENTRY, _SUFFIX), min_size=1, max_size=3)),
                       min_size=1, max_size=3))
def test_group_keys_equal_timms_grouping_on_any_matcher(names, matcher):
    from timm.models._manipulate import group_with_matcher

    keys, _ = group_keys(names, matcher)
    ref = group_with_matcher(((n, None) for n in names), matcher, reverse=True)
    assert layer_numbers(keys) == [ref[n] for n in names]

_segment = st.sampled_from(["a", "b", "blocks", "0", "1", "w_1"])


@given(st.lists(st.tuples(st.lists(_segment, min_size=1, max_size=4), st.integers(0, 3)), min_size=1,
                max_size=25, unique_by=lambda t: ".".join(t[0])),
       st.data())
def test_name_regexes_fullmatch_exactly_their_labels_names(items, data):
    names = [".".join(parts) for parts, _ in items]
    # a name may not also be a module prefix of another (as in a real model)
    if any(o.startswith(n + ".") for n in names for o in names):
        return
    labels = [label for _, label in items]
    aliases = {}
    if data.draw(st.booleans()):
        row = data.draw(st.integers(0, len(names) - 1))
        alias = data.draw(st.sampled_from(["a.tied", "blocks.0.tied", "zz"]))
        if alias not in names and not any(n.startswith(alias + ".") or alias.startswith(n + ".") for n in names):
            aliases = {row: (alias,)}
    regexes = name_regexes(labels, names, aliases)
    for label, regex in regexes.items():
        pattern = re.compile(regex)
        assert {n for n in names if pattern.fullmatch(n)} == {n for n, lb in zip(names, labels) if lb == label}
        for row, more in aliases.items():  # an alias never drags its tensor into another label
            assert all(labels[row] == label for a in more if pattern.fullmatch(a))


# --- timm's layer_decay_min_scale and layer_decay_no_opt_scale --------------------------------
@pytest.mark.parametrize("name, kwargs, bounds", [
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=6, embed_dim=64, num_heads=2), dict(layer_decay_min_scale=0.1)),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=6, embed_dim=64, num_heads=2), dict(layer_decay_no_opt_scale=0.1)),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=6, embed_dim=64, num_heads=2),
     dict(layer_decay_min_scale=0.05, layer_decay_no_opt_scale=0.08)),
    ("mobilenetv3_small_050", {}, dict(layer_decay_min_scale=0.1, layer_decay_no_opt_scale=0.2)),
])
def test_layer_decay_bounds_equal_timms(name, kwargs, bounds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, **kwargs)
    ref = timm_groups(model, weight_decay=0.05, layer_decay=0.5, **bounds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rule of the recipe is idle (none lands on frozen tensors only)
        recipe = tunespec.from_timm(model, weight_decay=0.05, layer_decay=0.5, **bounds)
    assert recipe["layer_decay"] == {"rate": 0.5, **({"min_scale": bounds["layer_decay_min_scale"]}
                                                     if "layer_decay_min_scale" in bounds else {}),
                                     **({"freeze_below": bounds["layer_decay_no_opt_scale"]}
                                        if "layer_decay_no_opt_scale" in bounds else {})}
    got = tunespec_groups(model, recipe)
    assert got == ref
    if "layer_decay_no_opt_scale" in bounds:
        assert len(got) < len(list(model.parameters())) and recipe["bn"] == "train"
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen == {n for n, _ in model.named_parameters()} - got.keys()
    if "layer_decay_no_opt_scale" not in bounds:
        assert min(v[2] for v in got.values()) == bounds["layer_decay_min_scale"]


def test_bounds_that_change_nothing_are_left_out_or_refused():
    model = _vit("deit_tiny_patch16_224")  # 4 layers: smallest scale 0.5 ** 3
    recipe = tunespec.from_timm(model, layer_decay=0.5, layer_decay_min_scale=0.01, layer_decay_no_opt_scale=0.1)
    assert recipe["layer_decay"] == {"rate": 0.5} and "bn" not in recipe
    assert tunespec_groups(model, recipe) == timm_groups(model, layer_decay=0.5, layer_decay_min_scale=0.01,
                                                          layer_decay_no_opt_scale=0.1)
    for key, value in (("min_scale", 0.01), ("min_scale", 0.125), ("freeze_below", 0.125)):
        with pytest.raises(tunespec.SpecError, match=f"layer_decay.{key}: {value} has no effect"):
            tunespec.plan(model, {"layer_decay": {"rate": 0.5, key: value}})
        with pytest.warns(tunespec.TuneSpecWarning, match="has no effect"):
            tunespec.plan(model, {"layer_decay": {"rate": 0.5, key: value}, "strict": False})
    assert tunespec.from_timm(layer_decay=0.5, layer_decay_min_scale=0.01) == {
        "layer_decay": {"rate": 0.5, "min_scale": 0.01}, "optimizer": {"weight_decay": 0.0}}


@pytest.mark.parametrize("raw, message", [
    ({"rate": 0.5, "min_scale": -0.1}, "min_scale"), ({"rate": 0.5, "min_scale": 2}, "min_scale"),
    ({"rate": 0.5, "min_scale": float("nan")}, "min_scale"), ({"rate": 0.5, "min_scale": "0.1"}, "min_scale"),
    ({"rate": 0.5, "freeze_below": 0}, "freeze_below"), ({"rate": 0.5, "freeze_below": float("inf")}, "freeze_below"),
    ({"rate": 0.5, "freeze_below": True}, "freeze_below"), ({"rate": 0.5, "min_scales": 0.1}, "min_scales"),
])
def test_bad_bounds_are_spec_errors(raw, message):
    with pytest.raises(tunespec.SpecError, match=message):
        tunespec.Spec.from_dict({"layer_decay": raw})


def test_from_timm_refuses_bounds_without_layer_decay_and_bad_values():
    with pytest.raises(tunespec.SpecError, match="give layer_decay too"):
        tunespec.from_timm(layer_decay_min_scale=0.1)
    with pytest.raises(tunespec.SpecError, match="layer_decay_no_opt_scale"):
        tunespec.from_timm(layer_decay=0.5, layer_decay_no_opt_scale=-1)
    spec = tunespec.Spec.from_dict({"layer_decay": {"rate": 0.5, "min_scale": 0.1, "freeze_below": 0.2}})
    assert tunespec.Spec.from_dict(spec.to_dict()) == spec
