"""tunespec.from_mmengine side by side with MMEngine's own DefaultOptimWrapperConstructor:
every parameter's lr and weight decay equal (float ==) for the same paramwise_cfg."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings, strategies as st

import tunespec
from frameworks import needing, needs
from tunespec import SpecError

BASE_LR, BASE_WD = 0.01, 1e-4


def small_mixed():
    """Depthwise convs, BN, GN, LN, bias-free convs, an embedding, top-level tensors."""
    torch = needs("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.backbone = nn.Sequential(
                nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8),
                nn.Conv2d(8, 8, 3, groups=8), nn.GroupNorm(2, 8),          # depthwise, with bias
                nn.Conv2d(8, 16, 1, bias=False), nn.Conv2d(16, 16, 3, groups=16, bias=False),
                nn.Conv2d(16, 16, 3, groups=4))                              # grouped, not depthwise
            self.neck = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16))
            self.head = nn.Linear(16, 4)
            self.pos = nn.Parameter(torch.zeros(16))                         # top-level, 1-d
            self.scale = nn.Parameter(torch.ones(2, 2))                      # top-level, 2-d
            self.bias = nn.Parameter(torch.zeros(4))                         # a bias by its own name
            self.q_bias = nn.Parameter(torch.zeros(4))                       # not a bias to MMEngine

    return Net()


def mmengine_lrs(model, cfg, base_wd=BASE_WD):
    needs("mmengine")
    from mmengine.optim import DefaultOptimWrapperConstructor

    optimizer = {"type": "SGD", "lr": BASE_LR, "momentum": 0.9}
    if base_wd is not None:
        optimizer["weight_decay"] = base_wd
    wrapper = DefaultOptimWrapperConstructor({"optimizer": optimizer}, cfg)(model)
    return {id(p): (g["lr"], g["weight_decay"]) for g in wrapper.optimizer.param_groups for p in g["params"]}


def tunespec_lrs(model, cfg, base_wd=BASE_WD, with_model=False):
    recipe = tunespec.from_mmengine(cfg, base_lr=BASE_LR, base_wd=base_wd, model=model if with_model else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tunespec.TuneSpecWarning)  # rules for kinds a model lacks
        opt = tunespec.plan(model, recipe).optimizer("sgd", lr=BASE_LR, weight_decay=base_wd or 0.0,
                                                     momentum=0.9)
    return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def assert_same(model, cfg, base_wd=BASE_WD, with_model=False):
    names = {id(p): n for n, p in model.named_parameters()}
    ours, theirs = tunespec_lrs(model, cfg, base_wd, with_model), mmengine_lrs(model, cfg, base_wd)
    assert set(ours) == set(theirs)
    differ = {names[i]: (ours[i], theirs[i]) for i in ours if ours[i] != theirs[i]}
    assert not differ, differ


CONFIGS = [
    {"bias_lr_mult": 2.0, "bias_decay_mult": 0.0, "norm_decay_mult": 0.0},
    {"dwconv_decay_mult": 0.5, "flat_decay_mult": 0.25},
    {"bias_decay_mult": 0.5, "dwconv_decay_mult": 0.0, "flat_decay_mult": 0.1},  # dw bias: bias wins
    {"norm_decay_mult": 0.3, "bias_decay_mult": 0.7, "flat_decay_mult": 0.2, "dwconv_decay_mult": 0.4,
     "bias_lr_mult": 0.5},
    # overlapping keys: the longest wins ('backbone.2' over 'backbone'), then alphabetical; a key
    # with a leading '.' reaches top-level tensors ('.pos' is a substring of '.pos' only)
    {"custom_keys": {"backbone": {"lr_mult": 0.1}, "backbone.2": {"lr_mult": 0.0, "decay_mult": 0.0},
                     "ne": {"decay_mult": 3.0}, "ck": {"lr_mult": 5.0}, ".pos": {"decay_mult": 0.0},
                     ".sc": {"lr_mult": 2.0}},
     "norm_decay_mult": 0.0, "bias_lr_mult": 2.0},
    {"custom_keys": {"head": {"lr_mult": 10.0}, "embed": {"lr_mult": 0.0}}, "flat_decay_mult": 0.0},
]


@needing("mmengine")
@pytest.mark.parametrize("cfg", CONFIGS)
def test_small_model_equals_mmengine(cfg):
    assert_same(small_mixed(), cfg)


@needing("mmengine")
def test_without_base_weight_decay():
    assert_same(small_mixed(), {"bias_lr_mult": 3.0, "custom_keys": {"head": {"lr_mult": 0.5}}}, base_wd=None)


@needing("mmengine")
@needing("torchvision")
def test_mobilenet_v3_small_equals_mmengine():
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small(weights=None)
    assert_same(model, {"norm_decay_mult": 0.0, "dwconv_decay_mult": 0.0, "bias_decay_mult": 0.5,
                        "bias_lr_mult": 2.0, "custom_keys": {"classifier": {"lr_mult": 10.0},
                                                             "features.1": {"lr_mult": 0.0}}})


MULTS = st.sampled_from([0.0, 0.5, 2.0])
KEYS = st.sampled_from(["backbone", "backbone.0", "backbone.2.", "head", ".pos", "weight", "bias", "neck.1"])


@needing("mmengine")
@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({}, optional={k: MULTS for k in ("bias_lr_mult", "bias_decay_mult", "norm_decay_mult",
                                                             "dwconv_decay_mult", "flat_decay_mult")}),
       st.dictionaries(KEYS, st.fixed_dictionaries({}, optional={"lr_mult": MULTS, "decay_mult": MULTS}),
                       max_size=4))
def test_combinations_equal_mmengine(cfg, custom):
    assert_same(small_mixed(), {**cfg, "custom_keys": custom} if custom else cfg)


def test_recipe_is_plain_yaml_and_ordered():
    yaml = pytest.importorskip("yaml")
    recipe = tunespec.from_mmengine({"custom_keys": {"a": {"lr_mult": 0.0}, "ab": {"decay_mult": 0.5}},
                                     "bias_lr_mult": 2.0}, base_lr=0.1, base_wd=0.01)
    assert yaml.safe_load(yaml.safe_dump(recipe)) == recipe
    matches = [r["match"] for r in recipe["rules"]]
    assert matches[-2:] == [".*a.*", ".*ab.*"]  # the longer key decides: it comes last
    assert recipe["rules"][-2] == {"match": ".*a.*", "lr_mult": 0.0, "trainable": True, "wd_mult": 1.0}
    assert recipe["strict"] is False


def test_optimizer_section_from_mmengine_optimizer():
    recipe = tunespec.from_mmengine({"norm_decay_mult": 0},
                                    optimizer={"type": "SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4})
    assert recipe["optimizer"] == {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4}
    assert tunespec.load_recipe(recipe).optimizer.lr == 0.02


@pytest.mark.parametrize("cfg, kwargs, fragment", [
    ({"bypass_duplicate": True}, {}, "bypass_duplicate: .*pass model="),
    ({"bypass_duplicate": "yes"}, {}, "bypass_duplicate"),
    ({"dcn_offset_lr_mult": 0.1}, {}, "dcn_offset_lr_mult: not reproduced"),
    ({"norm_decay_mul": 0}, {"base_wd": 1e-4}, "did you mean 'norm_decay_mult'"),
    ({"norm_decay_mult": 0}, {}, "needs the base weight decay"),
    ({"flat_decay_mult": 0}, {}, "needs the base weight decay"),  # MMEngine ignores it silently
    ({"custom_keys": {"head": {"lr": 0.1}}}, {}, r"custom_keys\['head'\].'lr': not reproduced"),
    ({"custom_keys": {"head": {"decay_mult": 0}}}, {}, "needs the base weight decay"),
    ({"bias_lr_mult": -1}, {}, "bias_lr_mult"),
    ({}, {"optimizer": {"type": "LARS", "lr": 0.1}}, "'LARS' is not imported"),
    ({}, {"optimizer": {"type": "AdamW", "lr": 0.1}}, "give weight_decay"),
])
def test_what_cannot_be_reproduced_is_refused(cfg, kwargs, fragment):
    with pytest.raises(SpecError, match=fragment):
        tunespec.from_mmengine(cfg, **kwargs)


# --- where MMEngine's classification is not tunespec's: shared tensors, 1-channel convolutions --
def shared_and_odd():
    """A tied embedding/decoder, a block shared by two parents, a grayscale (1-channel) stem, depthwise
    convolutions MMEngine does not count (1-d, 3-d, transposed) and a 0-d tensor."""
    torch = needs("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8))
            shared = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
            self.enc = nn.Sequential(shared, nn.Conv1d(8, 8, 3, groups=8), nn.Conv3d(4, 4, 1, groups=4))
            self.dec = nn.Sequential(shared, nn.ConvTranspose2d(8, 8, 3, groups=8), nn.Conv1d(1, 4, 1))
            self.decoder = nn.Linear(8, 10)
            self.decoder.weight = self.embed.weight  # tied: 'decoder.weight' names embed's tensor again
            self.temperature = nn.Parameter(torch.tensor(1.0))  # 0-d

    return Net()


SHARED_CONFIGS = [
    {"bypass_duplicate": True, "custom_keys": {"decoder": {"lr_mult": 0.5, "decay_mult": 0.0}}},  # alias only
    {"bypass_duplicate": True, "custom_keys": {"embed": {"lr_mult": 2.0}, "dec.0": {"lr_mult": 3.0}}},
    {"bypass_duplicate": True, "dwconv_decay_mult": 0.3, "flat_decay_mult": 0.2},
    {"bypass_duplicate": True, "dwconv_decay_mult": 0.0, "bias_decay_mult": 0.5, "bias_lr_mult": 2.0,
     "norm_decay_mult": 0.1, "custom_keys": {"weight": {"decay_mult": 3.0}, "dec": {"lr_mult": 0.0}}},
]


@needing("mmengine")
@pytest.mark.parametrize("cfg", SHARED_CONFIGS)
def test_shared_tensors_and_mmengines_own_kinds_equal_mmengine(cfg):
    assert_same(shared_and_odd(), cfg, with_model=True)


@needing("mmengine")
def test_without_the_model_the_documented_differences_show():
    model = shared_and_odd()
    ours = tunespec_lrs(model, {"dwconv_decay_mult": 0.3, "flat_decay_mult": 0.2})
    theirs = mmengine_lrs(model, {"bypass_duplicate": True, "dwconv_decay_mult": 0.3, "flat_decay_mult": 0.2})
    named = dict(model.named_parameters())
    differ = {n for n, p in named.items() if ours[id(p)] != theirs[id(p)]}
    # MMEngine: the 1-channel Conv2d is depthwise, the 1-d/3-d/transposed ones are not, 0-d is not flat
    convs = {f"{m}.{leaf}" for m in ("stem.0", "enc.1", "enc.2", "dec.1") for leaf in ("weight", "bias")}
    assert differ == convs | {"temperature"}


@needing("mmengine")
def test_a_model_with_shared_tensors_needs_bypass_duplicate_in_both():
    model = shared_and_odd()
    with pytest.raises(ValueError, match="more than one parameter group"):
        mmengine_lrs(model, {"custom_keys": {"decoder": {"lr_mult": 0.5}}})
    with pytest.raises(SpecError, match="bypass_duplicate=True"):
        tunespec.from_mmengine({"custom_keys": {"decoder": {"lr_mult": 0.5}}}, base_wd=BASE_WD, model=model)
    recipe = tunespec.from_mmengine({"bypass_duplicate": True, "custom_keys": {"decoder": {"lr_mult": 0.5}}},
                                    base_wd=BASE_WD, model=model)
    plan = tunespec.plan(model, recipe)
    assert plan["embed.weight"].lr_mult == 1.0 and plan["decoder.bias"].lr_mult == 0.5


@pytest.mark.parametrize("model", ["resnet18", object(), 3.5, None.__class__])
def test_model_must_be_a_torch_module(model):
    needs("torch")
    with pytest.raises(SpecError):
        tunespec.from_mmengine({"dwconv_decay_mult": 0.0}, base_wd=BASE_WD, model=model)


@needing("mxnet")
def test_a_gluon_model_is_refused():
    from tunespec.backends.mxnet import import_gluoncv

    net = import_gluoncv().model_zoo.get_model("mobilenet0.25", pretrained=False)
    net.initialize()
    with pytest.raises(SpecError, match="torch module"):
        tunespec.from_mmengine({"dwconv_decay_mult": 0.0}, base_wd=BASE_WD, model=net)


@needing("mmengine")
@needing("timm")
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050"])
def test_grayscale_timm_models_equal_mmengine(name):
    """A 1-channel stem convolution is depthwise to MMEngine (groups == in_channels == 1)."""
    import timm

    model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=3)
    cfg = {"dwconv_decay_mult": 0.0, "norm_decay_mult": 0.5, "custom_keys": {"layer4": {"lr_mult": 0.1}}}
    assert_same(model, cfg, with_model=True)
    recipe = tunespec.from_mmengine(cfg, base_wd=BASE_WD, model=model)
    stem = "conv1.weight" if name == "resnet18" else "conv_stem.weight"
    assert tunespec.plan(model, recipe)[stem].wd_mult == 0.0


@needing("mmengine")
@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({}, optional={k: MULTS for k in ("bias_lr_mult", "bias_decay_mult", "norm_decay_mult",
                                                             "dwconv_decay_mult", "flat_decay_mult")}),
       st.dictionaries(st.sampled_from(["embed", "decoder", "dec", "enc.0", "dec.0.1", "stem", ".temp", "bias"]),
                       st.fixed_dictionaries({}, optional={"lr_mult": MULTS, "decay_mult": MULTS}), max_size=4))
def test_shared_model_combinations_equal_mmengine(cfg, custom):
    assert_same(shared_and_odd(), {"bypass_duplicate": True, **cfg, **({"custom_keys": custom} if custom else {})},
                with_model=True)


# --- MMDetection's frozen_stages / norm_eval ------------------------------------------------
def mmdet_resnet():
    """mmdet's ResNet class, importing mmdet 3.3.0 beside mmcv-lite 2.1.0 (no compiled ops: the
    model modules import mmcv.ops names at import time, so those resolve to stubs that refuse use)."""
    import importlib.abc
    import importlib.machinery
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("mmdet") is None or importlib.util.find_spec("mmcv") is None:
        pytest.skip("needs mmdet==3.3.0 and mmcv-lite==2.1.0 (pip install --no-deps; plus pycocotools, "
                    "shapely, terminaltables, six)")

    class Missing:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("mmcv.ops is a stub here (mmcv-lite has no compiled ops)")

    class Ops(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Missing

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name == "mmcv.ops" or name.startswith("mmcv.ops."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            module = Ops(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    finder = Finder()
    sys.meta_path.insert(0, finder)
    try:
        from mmdet.models.backbones.resnet import ResNet
    finally:
        sys.meta_path.remove(finder)
    return ResNet


def stats_updated(model):
    """Names of the BatchNorm layers whose running mean moves in one training-mode forward pass."""
    torch = needs("torch")
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    model.train()
    model(torch.randn(2, 3, 32, 32))
    return {n for n, m in bns.items() if not torch.equal(m.running_mean, before[n])}


@pytest.mark.parametrize("norm_eval, bn", [(True, "freeze"), (False, "freeze_frozen")])
def test_mmdet_frozen_stages_and_norm_eval(norm_eval, bn):
    ResNet = mmdet_resnet()
    theirs = ResNet(depth=18, frozen_stages=2, norm_eval=norm_eval)
    ours = ResNet(depth=18, frozen_stages=-1, norm_eval=False)
    ours.load_state_dict(theirs.state_dict())
    recipe = {"freeze": [r"(conv1|bn1)\..*", r"layer[12]\..*"], "bn": bn}  # frozen_stages=2
    tunespec.apply(ours, recipe)
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == \
        {n for n, p in theirs.named_parameters() if p.requires_grad}
    updated = stats_updated(theirs)
    assert stats_updated(ours) == updated
    assert bool(updated) is not norm_eval  # norm_eval: none move; else the trained stages' do
