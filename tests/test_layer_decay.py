"""Layer-wise lr decay: the layer_decay key, its checks, and parity with timm's own optimizer
factory and scheduler (every parameter's effective lr and weight decay, float ==), with stages,
and between torch and Gluon ResNets."""

from __future__ import annotations

import math
import warnings

import pytest

from frameworks import needs
import tunespec
from tunespec.recipe.layer_decay import Layer, LayerDecay
from tunespec.planning.decay import layer_ids, scales


# --- the core: no framework needed ------------------------------------------------------------
def test_layer_ids_follow_timm_grouping_rules():
    entries = (Layer("stem"), Layer(r"blocks\.(\d+)"), Layer("norm", with_previous=True))
    # positions: stem, block 10, block 2, norm, head (in no entry)
    hits = [[0], [1, 2], [3]]
    captures = [[()], [(10,), (2,)], [()]]
    ids, count = layer_ids(entries, hits, captures, 5)
    assert (ids, count) == ([0, 2, 1, 2, 3], 4)  # numeric order; norm joins the last block; head on top
    assert scales(0.5, ids, count) == [0.125, 0.5, 0.25, 0.5, 1.0]


@pytest.mark.parametrize("raw, message", [
    ({"rate": 0}, r"layer_decay\.rate"),
    ({"rate": 1.5}, r"layer_decay\.rate"),
    ({"rate": math.nan}, r"layer_decay\.rate"),
    ({}, "give rate"),
    ({"rate": 0.5, "layer": ["a"]}, "layer_decay.*layers"),
    ({"rate": 0.5, "layers": []}, r"layer_decay\.layers"),
    ({"rate": 0.5, "layers": ["fc\\.(.*"]}, r"layer_decay\.layers\[0\]: invalid regex"),
    ({"rate": 0.5, "layers": [{"match": "a", "with_previous": True}]}, "first layer has no layer before"),
    ({"rate": 0.5, "layers": [{"match": "a", "join": True}]}, r"layers\[0\]"),
    ({"rate": 0.5, "layers": ["@no such"]}, "not a group reference"),
])
def test_bad_layer_decay_is_a_spec_error_naming_the_path(raw, message):
    with pytest.raises(tunespec.SpecError, match=message):
        tunespec.Spec.from_dict({"layer_decay": raw})


def test_layer_decay_round_trips_and_is_inherited_by_stages():
    spec = tunespec.Spec.from_dict({"layer_decay": {"rate": 0.5, "layers": ["a", {"match": "b", "with_previous": True}]}})
    assert spec.layer_decay == LayerDecay(0.5, (Layer("a"), Layer("b", True)))
    assert tunespec.Spec.from_dict(spec.to_dict()) == spec
    recipe = tunespec.load_recipe({"layer_decay": {"rate": 0.5}, "preset": "heads",
                                   "stages": [{"at_epoch": 1, "preset": "all"}]})
    assert recipe.sections["stages"].stages[0].spec.layer_decay == LayerDecay(0.5)


# --- on real models ---------------------------------------------------------------------------
def _resnet():
    needs("torch")
    torchvision = needs("torchvision")
    return torchvision.models.resnet18(weights=None)


def resnet_scale(name: str, rate: float) -> float:
    """The ResNet card's layers: stem 0, layer1.0 .. layer4.1 = 1..8, fc (and the rest) 9."""
    parts = name.split(".")
    if parts[0] in ("conv1", "bn1"):
        lid = 0
    elif parts[0].startswith("layer"):
        lid = 2 * (int(parts[0][5:]) - 1) + int(parts[1]) + 1
    else:
        lid = 9
    return rate ** (9 - lid)


def test_card_layers_compose_with_lr_mult_rules():
    plan = tunespec.plan(_resnet(), {"layer_decay": {"rate": 0.5}, "lr_mult": {r"fc\..*": 10, r"layer1\..*": 3}})
    for d in plan.decisions:
        mult = 10 if d.name.startswith("fc.") else 3 if d.name.startswith("layer1.") else 1
        assert d.lr_mult == mult * resnet_scale(d.name, 0.5), d.name


def test_explicit_layers_and_their_errors():
    model = _resnet()
    plan = tunespec.plan(model, {"layer_decay": {"rate": 0.5, "layers": [r"(?:conv1|bn1)\..*", r"layer(\d+)\..*"]}})
    # four stage layers above the stem; fc is in no entry, so it is the top layer (5 layers)
    assert plan["conv1.weight"].lr_mult == 0.5 ** 5 and plan["layer2.0.conv1.weight"].lr_mult == 0.5 ** 3
    assert plan["fc.weight"].lr_mult == 1.0
    with pytest.raises(tunespec.SpecError, match=r"layer_decay\.layers\[1\]: 'head\\\\\.\.\*' matches no"):
        tunespec.plan(model, {"layer_decay": {"rate": 0.5, "layers": [r"conv1\..*", r"head\..*"]}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tunespec.plan(model, {"strict": False, "layer_decay": {"rate": 0.5, "layers": [r"conv1\..*", r"head\..*"]}})
    assert any("has no effect" in str(w.message) for w in caught)
    with pytest.raises(tunespec.SpecError, match="captured 'conv', not a layer number"):
        tunespec.plan(model, {"layer_decay": {"rate": 0.5, "layers": [r"(conv)1\..*"]}})


def test_a_model_whose_layers_no_card_knows_needs_an_explicit_list():
    torchvision = needs("torchvision")
    vgg = torchvision.models.vgg11(weights=None)
    with pytest.raises(tunespec.SpecError, match="no model card knows .*VGG's layers; list them"):
        tunespec.plan(vgg, {"layer_decay": {"rate": 0.5}})
    plan = tunespec.plan(vgg, {"layer_decay": {"rate": 0.5, "layers": [r"features\.(\d+)\..*"]}})
    assert plan["classifier.6.weight"].lr_mult == 1.0 and plan["features.0.weight"].lr_mult == 0.5 ** 8


def test_a_failed_plan_changes_nothing():
    from snapshot import assert_unchanged, state_of

    model = _resnet()
    before = state_of(model)
    with pytest.raises(tunespec.SpecError):
        tunespec.optimizer(model, {"layer_decay": {"rate": 0.5, "layers": [r"nothing\..*"]}}, lr=0.1)
    assert_unchanged(before, state_of(model))


def test_stages_recompute_the_decay_for_newly_trainable_layers():
    torch = needs("torch")
    model = _resnet()
    recipe = {"preset": "heads", "layer_decay": {"rate": 0.5}, "optimizer": {"name": "sgd", "lr": 0.1},
              "stages": [{"at_epoch": 1, "preset": "4+", "lr_factor": 0.1}]}
    schedule = tunespec.Schedule(recipe)
    model, opt = schedule.start(model)
    names = {id(p): n for n, p in model.named_parameters()}

    def lrs():
        return {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}

    assert lrs() == {"fc.weight": 0.1, "fc.bias": 0.1}
    model, opt = schedule.step(0, model, opt)
    got = lrs()
    assert set(got) == {n for n in names.values() if n.split(".")[0] in ("layer3", "layer4", "fc")}
    for name, lr in got.items():
        factor = 1.0 if name.startswith("fc.") else 0.1
        assert lr == 0.1 * resnet_scale(name, 0.5) * factor, name
    assert isinstance(opt, torch.optim.SGD)


def test_gluon_resnet_gets_the_same_multipliers_as_torch():
    needs("mxnet")
    from tunespec.backends.mxnet import import_gluoncv

    gcv = import_gluoncv()
    net = gcv.model_zoo.get_model("resnet18_v1b", pretrained=False)
    recipe = {"layer_decay": {"rate": 0.75}, "wd_mult": {"@norm": 0}, "preset": "3+"}
    torch_side = {d.name: (d.trainable, d.lr_mult, d.wd_mult) for d in tunespec.plan(_resnet(), recipe).decisions}
    gluon_side = {d.name: (d.trainable, d.lr_mult, d.wd_mult) for d in tunespec.plan(net, recipe).decisions}
    assert gluon_side == torch_side
    applied = tunespec.apply(net, recipe)
    params = {t.canonical: t.handle for t in applied.listing.params}
    assert params["layer2.0.conv1.weight"].lr_mult == 0.75 ** 6 and params["fc.weight"].lr_mult == 1.0


# --- parity with timm -------------------------------------------------------------------------
TIMM_MODELS = [("vit_tiny_patch16_224", {"img_size": 32}), ("convnext_atto", {}), ("resnet18", {}),
               ("efficientnet_b0", {})]


def _timm_model(name, kwargs):
    timm = pytest.importorskip("timm", reason="needs timm: pip install 'tunespec[test]'")
    return timm.create_model(name, pretrained=False, **kwargs)


def _timm_effective(model, opt_name: str, lr: float, **kwargs):
    """(lr, weight decay) per parameter name after timm's scheduler has set the groups' lrs."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    opt = create_optimizer_v2(model, opt_name, lr=lr, **kwargs)
    CosineLRScheduler(opt, t_initial=10)  # at t=0 it sets each group's lr to lr * lr_scale
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def _tunespec_effective(model, recipe, opt_name: str, lr: float):
    opt = tunespec.optimizer(model, recipe, name=opt_name, lr=lr)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("name, kwargs", TIMM_MODELS, ids=[m for m, _ in TIMM_MODELS])
def test_layer_decay_matches_timm_parameter_for_parameter(name, kwargs):
    model = _timm_model(name, kwargs)
    ref = _timm_effective(model, "adamw", 1e-3, weight_decay=0.05, layer_decay=0.75)
    recipe = tunespec.from_timm(model, weight_decay=0.05, layer_decay=0.75)
    assert _tunespec_effective(model, recipe, "adamw", 1e-3) == ref
    if name == "vit_tiny_patch16_224":  # the same, written by hand
        hand = {"layer_decay": {"rate": 0.75}, "wd_mult": {"@1d": 0, "pos_embed|cls_token": 0},
                "optimizer": {"weight_decay": 0.05}}
        assert _tunespec_effective(model, hand, "adamw", 1e-3) == ref
        assert len({lr for lr, _ in ref.values()}) == 14  # stem, 12 blocks (+ norm), head


@pytest.mark.parametrize("name, kwargs", TIMM_MODELS[:3], ids=[m for m, _ in TIMM_MODELS[:3]])
@pytest.mark.parametrize("filter_bias_and_bn", [True, False])
def test_weight_decay_groups_match_timm(name, kwargs, filter_bias_and_bn):
    model = _timm_model(name, kwargs)
    ref = _timm_effective(model, "sgd", 0.1, weight_decay=1e-4, filter_bias_and_bn=filter_bias_and_bn)
    recipe = tunespec.from_timm(model, weight_decay=1e-4, filter_bias_and_bn=filter_bias_and_bn)
    assert _tunespec_effective(model, recipe, "sgd", 0.1) == ref


def test_from_timm_is_a_plain_recipe_and_converts_fnmatch_patterns():
    yaml = pytest.importorskip("yaml")
    recipe = tunespec.from_timm(weight_decay=0.05, no_weight_decay_list=["pos_embed", "blocks.*.gamma?"],
                                layer_decay=0.65)
    assert recipe == {"layer_decay": {"rate": 0.65},
                      "wd_mult": {"@1d": 0.0, "pos_embed": 0.0, r"blocks\..*\.gamma.": 0.0},
                      "optimizer": {"weight_decay": 0.05}}
    assert yaml.safe_load(yaml.safe_dump(recipe)) == recipe
    with pytest.raises(tunespec.SpecError, match="layer_decay"):
        tunespec.from_timm(layer_decay=1.5)
    with pytest.raises(tunespec.SpecError, match="not one string"):
        tunespec.from_timm(no_weight_decay_list="pos_embed")


def test_from_timm_refuses_a_model_whose_layers_no_card_orders():
    torchvision = needs("torchvision")
    with pytest.raises(tunespec.SpecError, match="list them"):
        tunespec.from_timm(torchvision.models.vgg11(weights=None), weight_decay=0.05, layer_decay=0.75)


# --- lr_scale: timm's schedulers spread tunespec's groups ------------------------------------
def test_a_timm_scheduler_with_warmup_spreads_tunespec_groups_like_timm_groups():
    model = _timm_model("resnet18", {})
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    kwargs = dict(t_initial=6, warmup_t=3, warmup_lr_init=1e-4, lr_min=1e-5)
    ref_opt = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4, layer_decay=0.5)
    ref_sched = CosineLRScheduler(ref_opt, **kwargs)
    recipe = tunespec.from_timm(model, weight_decay=1e-4, layer_decay=0.5)
    opt = tunespec.optimizer(model, recipe, name="sgd", lr=0.1, lr_scale=True)
    sched = CosineLRScheduler(opt, **kwargs)
    names = {id(p): n for n, p in model.named_parameters()}

    def per_param(o):
        return {names[id(p)]: g["lr"] for g in o.param_groups for p in g["params"]}

    for epoch in range(6):
        ref_sched.step(epoch)
        sched.step(epoch)
        got, ref = per_param(opt), per_param(ref_opt)
        assert got == ref, epoch
        base = ref_sched._get_lr(epoch)[0]  # the one schedule all groups share
        assert got["conv1.weight"] == base * 0.5 ** 9 and got["fc.weight"] == base


def test_lr_scale_groups_train_at_their_lr_without_a_scheduler_and_gluon_refuses_it():
    model = _resnet()
    opt = tunespec.optimizer(model, {"layer_decay": {"rate": 0.5}}, name="sgd", lr=0.1, lr_scale=True)
    g = next(g for g in opt.param_groups if g["lr_scale"] != 1.0)
    assert g["lr"] == 0.1 * g["lr_scale"] and g["initial_lr"] == 0.1
    needs("mxnet")
    from tunespec.backends.mxnet import import_gluoncv
    from snapshot import assert_unchanged, state_of

    net = import_gluoncv().model_zoo.get_model("resnet18_v1b", pretrained=False)
    net.initialize()
    before = state_of(net)
    with pytest.raises(tunespec.SpecError, match="lr_scale is for optimizers with parameter groups"):
        tunespec.optimizer(net, {"layer_decay": {"rate": 0.5}}, name="sgd", lr=0.1, lr_scale=True)
    assert_unchanged(before, state_of(net))


# --- parity with MMDetection's layer-decay constructor (ConvNeXt backbones) -------------------
def _mmdet_constructor():
    """MMDetection's LearningRateDecayOptimizerConstructor, loaded from its file: mmdet's package
    import needs mmcv's compiled ops only to check their version, and this module uses none."""
    import importlib.util
    import sys
    import types

    pytest.importorskip("mmengine", reason="needs mmengine: pip install mmengine==0.10.7")
    found = importlib.util.find_spec("mmdet")
    if found is None:
        pytest.skip("needs mmdet: pip install --no-deps mmdet==3.3.0 (its mmcv dependency does not build here)")
    from mmengine.registry import Registry

    root = found.submodule_search_locations[0]
    package, registry = types.ModuleType("mmdet"), types.ModuleType("mmdet.registry")
    package.__path__ = [root]
    registry.OPTIM_WRAPPER_CONSTRUCTORS = Registry("optim wrapper constructor")
    saved = {k: sys.modules.get(k) for k in ("mmdet", "mmdet.registry")}
    sys.modules.update({"mmdet": package, "mmdet.registry": registry})
    try:
        spec = importlib.util.spec_from_file_location(
            "mmdet_layer_decay", f"{root}/engine/optimizers/layer_decay_optimizer_constructor.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return module.LearningRateDecayOptimizerConstructor


def _detector_with_convnext():
    """A detector-shaped module whose backbone follows mmpretrain's ConvNeXt naming."""
    needs("torch")
    from torch import nn

    class ConvNeXt(nn.Module):
        def __init__(self, depths=(1, 2, 9, 1)):
            super().__init__()
            self.downsample_layers = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(1, 4))
                                                   for _ in range(4))
            self.stages = nn.ModuleList(nn.Sequential(*(nn.Sequential(nn.Conv2d(4, 4, 3), nn.LayerNorm(4),
                                                                      nn.Linear(4, 4)) for _ in range(d)))
                                        for d in depths)

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.neck, self.bbox_head = ConvNeXt(), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

    return Detector()


def test_layer_decay_matches_mmdetection_convnext_constructor():
    constructor = _mmdet_constructor()
    model = _detector_with_convnext()
    wrapper = constructor(dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)),
                          dict(decay_rate=0.9, decay_type="layer_wise", num_layers=6))(model)
    names = {id(p): n for n, p in model.named_parameters()}
    ref = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in wrapper.optimizer.param_groups for p in g["params"]}
    # MMDetection's ConvNeXt map (num_layers 6): stem 0, stage 0 -> 1, stage 1 -> 2, stage 2 in
    # threes from 3, stage 3 -> 6, the rest on top; each downsampling layer with its stage.
    recipe = {"layer_decay": {"rate": 0.9, "layers": [
        r"backbone\.(?:cls_token|mask_token|pos_embed|downsample_layers\.0\..*)", r"backbone\.stages\.0\..*",
        r"backbone\.(?:downsample_layers|stages)\.1\..*", r"backbone\.(?:downsample_layers\.2|stages\.2\.[0-2])\..*",
        r"backbone\.stages\.2\.[3-5]\..*", r"backbone\.stages\.2\.[6-8]\..*",
        r"backbone\.(?:downsample_layers|stages)\.3\..*"]},
        "wd_mult": {"@1d": 0, r".*\.bias": 0}}
    assert _tunespec_effective(model, {**recipe, "optimizer": {"weight_decay": 0.05}}, "adamw", 1e-3) == ref
    assert len({lr for lr, _ in ref.values()}) == 8


def test_layers_may_name_groups_and_join_the_previous_layer():
    model = _resnet()
    plan = tunespec.plan(model, {"groups": {"deep": r"layer[34]\..*"}, "layer_decay": {"rate": 0.5, "layers": [
        "@stem", r"layer(\d+)\..*", {"match": "@heads", "with_previous": True}]}})
    # stem 0, layer1..layer4 = 1..4, fc joins layer4: five layers, and the user group 'deep' is unused
    assert plan["bn1.weight"].lr_mult == 0.5 ** 4 and plan["layer3.1.conv2.weight"].lr_mult == 0.5
    assert plan["layer4.0.conv1.weight"].lr_mult == plan["fc.bias"].lr_mult == 1.0


def test_a_card_without_layers_is_an_error_naming_the_fix():
    torch = needs("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)

    from tunespec.planning.cards import _CARDS

    tunespec.register_card(Tiny, tunespec.Card("Tiny", {"heads": r"head\..*"}))
    try:
        with pytest.raises(tunespec.SpecError, match="the Tiny card has no ordered layers; list them"):
            tunespec.plan(Tiny(), {"layer_decay": {"rate": 0.5}})
        tunespec.register_card(Tiny, tunespec.Card("Tiny", {"heads": r"head\..*"}, layers=(r"body\..*",)))
        plan = tunespec.plan(Tiny(), {"layer_decay": {"rate": 0.5}})
        assert plan["body.weight"].lr_mult == 0.5 and plan["head.weight"].lr_mult == 1.0
    finally:
        _CARDS.pop(f"{Tiny.__module__}.{Tiny.__qualname__}")
