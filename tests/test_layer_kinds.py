"""Layer kinds: the same vocabulary reported by both backends, selected by rules and groups;
native-name patterns (GluonCV's collect_params regexes) selecting what Gluon selects."""

from __future__ import annotations

import warnings

import pytest

import tunespec
from frameworks import needing, needs
from tunespec import SpecError
from tunespec.importers import from_gluoncv
from tunespec.recipe.selectors import KINDS, SELECTORS


def torch_net():
    nn = needs("torch").nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8),
        nn.GroupNorm(2, 8), nn.InstanceNorm2d(8, affine=True), nn.Conv2d(8, 8, 3, groups=2),
        nn.ConvTranspose2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8, 6), nn.LayerNorm(6),
        nn.Embedding(5, 6))


def gluon_net(initialise=True):
    mx = needs("mxnet")
    nn = mx.gluon.nn
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, use_bias=False), nn.BatchNorm(), nn.Conv2D(8, 3, groups=8),
            nn.GroupNorm(2), nn.InstanceNorm(), nn.Conv2D(8, 3, groups=2),
            nn.Conv2DTranspose(8, 3, groups=8, in_channels=8), nn.Flatten(), nn.Dense(6),
            nn.LayerNorm(), nn.Embedding(5, 6))
    net.initialize()
    if initialise:  # shapes known, as after a forward pass (the embedding takes other input)
        x = mx.nd.zeros((1, 3, 9, 9))
        for block in list(net._children.values())[:10]:
            x = block(x)
    return net


EXPECTED = {  # canonical tensor -> kind, identical in both frameworks
    "0.weight": "conv", "1.weight": "batch_norm", "1.bias": "batch_norm", "2.weight": "depthwise_conv",
    "2.bias": "depthwise_conv", "3.weight": "group_norm", "4.weight": "instance_norm",
    "5.weight": "conv", "6.weight": "depthwise_conv", "8.weight": "linear", "9.weight": "layer_norm",
    "10.weight": "embedding",
}


def kinds(model):
    listing = tunespec.plan(model, {"rules": [{"match": ".*", "lr_mult": 1}]}).listing
    return {listing.names[r]: listing.layer_kinds[listing.layers[r]] for r in listing.param_rows}


@needing("torch")
def test_torch_reports_each_kind():
    got = kinds(torch_net())
    assert {n: got[n] for n in EXPECTED} == EXPECTED
    assert set(got.values()) <= set(KINDS)


@needing("mxnet")
def test_gluon_reports_the_same_kinds():
    got = kinds(gluon_net())
    assert {n: got[n] for n in EXPECTED} == EXPECTED


@needing("mxnet")
def test_gluon_deferred_grouped_conv_is_refused_until_shapes_are_known():
    net = gluon_net(initialise=False)
    with pytest.raises(SpecError, match="run one forward pass"):
        tunespec.plan(net, {"wd_mult": {"@layer:depthwise_conv": 0}})
    tunespec.plan(net, {"wd_mult": {"@layer:batch_norm": 0}})  # other kinds need no shapes


@needing("mxnet")
def test_symbol_block_tensors_get_their_operators_kinds():
    mx = needs("mxnet")
    inner = gluon_net()
    block = mx.gluon.nn.HybridSequential()
    block.add(*list(inner._children.values())[:4])
    data = mx.sym.var("data")
    symbol = mx.gluon.SymbolBlock(block(data), data, params=block.collect_params())
    got = tunespec.plan(symbol, {"rules": [{"match": ".*", "lr_mult": 1}]}).listing
    found = {got.natives[r].rpartition("_")[2] + ":" + got.layer_kinds[got.layers[r]] for r in got.param_rows}
    assert {"weight:conv", "gamma:batch_norm", "weight:depthwise_conv", "gamma:group_norm"} <= found


def selected(model, spec):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = tunespec.plan(model, spec)
    return {d.name: (d.trainable, d.lr_mult, d.wd_mult) for d in p.decisions}


SPEC = {
    "wd_mult": {"@layer:depthwise_conv": 0, "@layer:norm": 0.5},
    "rules": [{"layer": "conv", "match": r".*\.bias", "lr_mult": 2},
              {"match": "@dw", "lr_mult": 3}, {"layer": "embedding", "trainable": False}],
    "groups": {"dw": ["@layer:layer_norm", {"layer": "batch_norm", "match": r".*\.weight"}]},
}


@needing("torch")
@needing("mxnet")
def test_selectors_decide_the_same_in_both_frameworks():
    t, g = selected(torch_net(), SPEC), selected(gluon_net(), SPEC)
    assert t == g
    assert t["2.weight"] == (True, 1.0, 0.0) and t["2.bias"] == (True, 2.0, 0.0)  # conv covers depthwise
    assert t["5.weight"][2] == 1.0 and t["3.weight"][2] == 0.5  # grouped (not depthwise); group norm
    assert t["1.weight"] == (True, 3.0, 0.5) and t["1.bias"] == (True, 1.0, 0.5)
    assert t["9.weight"] == (True, 3.0, 0.5) and t["10.weight"][0] is False


@needing("torch")
def test_groups_and_rules_with_kinds_round_trip():
    spec = tunespec.Spec.from_dict(SPEC)
    again = tunespec.Spec.from_dict(spec.to_dict())
    assert selected(torch_net(), again.to_dict()) == selected(torch_net(), SPEC)
    assert spec.to_dict()["groups"]["dw"] == ["@layer:layer_norm", {"layer": "batch_norm", "match": r".*\.weight"}]


@needing("torch")
@pytest.mark.parametrize("spec, fragment", [
    ({"wd_mult": {"@layer:depthwise": 0}}, "did you mean 'depthwise_conv'"),
    ({"rules": [{"layer": "batchnorm", "wd_mult": 0}]}, "did you mean 'batch_norm'"),
    ({"groups": {"x": {"layer": "conv", "mach": "a"}}}, "mach"),
    ({"rules": [{"layer": "rms_norm", "wd_mult": 0}]}, "layer kinds are batch_norm, conv"),
    ({"rules": [{"layer": "linear", "match": r"0\..*", "wd_mult": 0}]}, "matches no parameter"),
    ({"lr_mult": {"@layer:conv": 0}}, "trainable: true and lr_mult: 0"),
])
def test_bad_selectors(spec, fragment):
    with pytest.raises(SpecError, match=fragment):
        tunespec.plan(torch_net(), spec)


@needing("torch")
def test_lr_mult_zero_trains_at_lr_zero_when_said_so():
    p = tunespec.plan(torch_net(), {"rules": [{"layer": "conv", "trainable": True, "lr_mult": 0}]})
    groups = p.param_groups(lr=0.1)
    assert {g["lr"] for g in groups} == {0.0, 0.1}
    assert all(d.trainable for d in p.decisions)


def test_vocabulary_covers_what_peers_distinguish():
    assert set(SELECTORS["norm"]) == {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
                                      "local_response_norm"}
    assert set(SELECTORS["conv"]) == {"conv", "depthwise_conv"}


@needing("torch")
def test_init_layer_kinds_use_the_same_vocabulary():
    net = torch_net()
    report = tunespec.initialize(net, {"init": [{"layer": "depthwise_conv", "match": r".*\.weight",
                                                 "method": "kaiming_normal"}]})
    assert set(report.initialised) == {"2.weight", "6.weight"}


# --- native patterns ------------------------------------------------------------------------
def gluon_trainable(net, recipe):
    return {id(d.tensor.handle) for d in tunespec.plan(net, recipe).trainable}


def collected(net, pattern):
    mx = needs("mxnet")
    return {id(p) for p in net.collect_params(pattern).values()
            if not isinstance(p, mx.gluon.Constant) and p._differentiable}


@needing("gluoncv")
def test_faster_rcnn_train_patterns_train_what_gluon_collects():
    from tunespec.backends.mxnet import import_gluoncv

    net = import_gluoncv().model_zoo.get_model("faster_rcnn_resnet50_v1b_voc", pretrained=False,
                                               pretrained_base=False)
    net.initialize()
    recipe = from_gluoncv(train_patterns=net.train_patterns)
    assert recipe == {"freeze": [".*"], "rules": [{"native": net.train_patterns, "trainable": True}]}
    ours = gluon_trainable(net, recipe)
    assert ours == collected(net, net.train_patterns) and 0 < len(ours) < len(collected(net, ".*"))


@needing("gluoncv")
def test_qa_freeze_pattern_and_no_wd_equal_gluon():
    from tunespec.backends.mxnet import import_gluoncv

    net = import_gluoncv().model_zoo.get_model("resnet18_v1", pretrained=False)
    net.initialize()
    dense = next(n for n in net.collect_params().keys() if "dense" in n).partition("dense")[0]
    pattern = f"(?!{dense}dense).*"  # the Q&A's '(?!dense).*' on a model whose names carry a prefix
    plan = tunespec.plan(net, from_gluoncv(freeze_patterns=pattern, no_wd=True))
    frozen = {id(d.tensor.handle) for d in plan.frozen}
    assert frozen == collected(net, pattern) and len(plan.trainable) == 2
    no_wd = {id(d.tensor.handle) for d in plan.decisions if d.trainable and d.wd_mult == 0}
    assert no_wd == collected(net, ".*beta|.*gamma|.*bias") - frozen


@needing("torch")
def test_native_rules_on_torch_match_at_the_start_of_dotted_names():
    p = tunespec.plan(torch_net(), {"freeze": [".*"], "rules": [{"native": "8", "trainable": True}]})
    assert [d.name for d in p.trainable] == ["8.weight", "8.bias"]  # re.match: '8' starts them
    with pytest.raises(SpecError, match="native names look like '0.weight'"):
        tunespec.plan(torch_net(), {"rules": [{"native": "dense", "trainable": True}]})
    with pytest.raises(SpecError, match="not both"):
        tunespec.plan(torch_net(), {"rules": [{"native": "8", "match": "8.*", "trainable": True}]})
    with pytest.raises(SpecError, match="give train_patterns"):
        from_gluoncv()


# --- the core alone, on the fake backend (no framework) -----------------------------------
def test_kinds_and_native_rules_on_the_fake_backend():
    from fake_backend import fake_plan, small_net

    plan = fake_plan(small_net(), {"wd_mult": {"@layer:batch_norm": 0},
                                   "rules": [{"layer": "linear", "lr_mult": 10},
                                             {"native": "layer1_", "trainable": False}]})
    got = {d.name: (d.trainable, d.lr_mult, d.wd_mult) for d in plan.decisions}
    assert got["stem.bn.weight"] == (True, 1.0, 0.0) and got["stem.conv.weight"] == (True, 1.0, 1.0)
    assert got["fc.weight"] == (True, 10.0, 1.0)
    assert [n for n, (t, _, _) in got.items() if not t] == ["layer1.0.conv.weight", "layer1.0.bn.weight",
                                                           "layer1.0.bn.bias"]
    with pytest.raises(SpecError, match="layer kinds are batch_norm, conv, linear"):
        fake_plan(small_net(), {"rules": [{"layer": "embedding", "trainable": False}]})


@needing("torch")
@needing("mxnet")
def test_layer_norm_selector_is_the_norm_group():
    for model in (torch_net(), gluon_net()):
        assert selected(model, {"wd_mult": {"@layer:norm": 0}}) == selected(model, {"wd_mult": {"@norm": 0}})
