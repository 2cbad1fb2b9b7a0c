"""MXNet-only behaviour: hybridized blocks, SymbolBlocks (GluonCV SSD), deferred init, prefixes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from frameworks import MXNetHarness, batches, needs

mx = needs("mxnet")
import numpy as np  # noqa: E402

import tunespec  # noqa: E402
from tunespec.backends.mxnet import import_gluoncv  # noqa: E402

SPEC = {"freeze": ["[01]\\..*"]}


@pytest.fixture(scope="module")
def gcv():
    return import_gluoncv()


def running(net, key):
    return {t.canonical: t.handle.data().asnumpy().copy()
            for t in tunespec.plan(net, {"train": [".*"]}).listing.state if key in t.canonical}


@pytest.mark.parametrize("hybridize", [False, True])
def test_hybridized_and_plain_blocks_behave_the_same(hybridize):
    fw = MXNetHarness()
    results = {}
    for hybrid in (False, hybridize):
        net = fw.small_cnn("float32")
        mx.random.seed(0)
        if hybrid:
            net.hybridize()
            fw.forward(net, batches(1, 8)[0][0].astype("float32"))  # build the cached graph
        opt = tunespec.optimizer(net, SPEC, "sgd", lr=0.05, momentum=0.9)
        before = fw.arrays(net)
        for x, y in batches(2, 8, seed=3):
            fw.step(net, opt, x.astype("float32"), y)
        after = fw.arrays(net)
        for name in ("0.weight", "1.weight", "1.running_mean", "1.running_var"):
            assert np.array_equal(before[name], after[name]), (hybrid, name)
        assert not np.array_equal(before["4.running_mean"], after["4.running_mean"])
        results[hybrid] = after
    np.testing.assert_allclose(results[False]["8.weight"], results[hybridize]["8.weight"], rtol=1e-5, atol=1e-6)


def test_gluon_names_are_structural_not_prefixed():
    vision = mx.gluon.model_zoo.vision
    a, b = vision.resnet18_v1(), vision.resnet18_v1()  # prefixes resnetv1N_ differ
    spec = {"freeze": ["features\\.[0-5]\\..*"]}
    pa, pb = tunespec.plan(a, spec), tunespec.plan(b, spec)
    assert [(d.name, d.trainable) for d in pa.decisions] == [(d.name, d.trainable) for d in pb.decisions]
    assert pa.decisions[0].tensor.native != pb.decisions[0].tensor.native
    assert pa["features.1.weight"].tensor.native.endswith("gamma")


def test_deferred_init_blocks_plan_by_name(gcv):
    net = gcv.model_zoo.get_model("resnet18_v1b", pretrained=False)  # not initialised
    plan = tunespec.apply(net, {"freeze": ["conv1\\..*", "bn1\\..*", "layer1\\..*"]})
    assert plan["conv1.weight"].tensor.shape[1] == 0 or plan["conv1.weight"].tensor.shape is not None
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    assert net.conv1.weight.grad_req == "null" and net.fc.weight.grad_req == "write"
    report = plan.verify()  # no baseline at apply time: never called ok; taken now, then watched
    assert not report.ok and "conv1.weight" in report.unchecked
    assert "could not be checked" in str(report) and "forward pass before apply" in str(report)
    with pytest.raises(AssertionError, match="could not be checked"):
        report.raise_if_changed()
    again = plan.verify()
    assert again.unchecked == [] and again.ok


def test_a_frozen_weight_changed_before_its_first_baseline_is_not_reported_ok(gcv):
    """Deferred Gluon parameters have no bytes at apply: a hand-made change before the first
    verify cannot be told from initial values, so that verify must not say ok."""
    net = gcv.model_zoo.get_model("resnet18_v1b", pretrained=False)
    net.initialize()
    plan = tunespec.apply(net, {"freeze": ["conv1\\..*", "bn1\\..*", "layer1\\..*"]})
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.conv1.weight.set_data(net.conv1.weight.data() + 1)   # changed by hand
    first = plan.verify()
    assert not first.ok and "conv1.weight" in first.unchecked
    net.conv1.weight.set_data(net.conv1.weight.data() + 1)   # once watched, a change is caught
    assert plan.verify().changed_params == ["conv1.weight"]


def ssd(gcv):
    return gcv.model_zoo.get_model("ssd_300_mobilenet0.25_voc", pretrained=False, pretrained_base=False)


def test_ssd_symbolblock_names_do_not_depend_on_counters(gcv):
    first, second = ssd(gcv), ssd(gcv)  # prefixes ssdN_ differ between the two
    spec = {"freeze": ["features\\..*"], "lr_mult": {"(class|box)_predictors\\..*": 10}}
    p1, p2 = tunespec.plan(first, spec), tunespec.plan(second, spec)
    view = lambda p: [(d.name, d.trainable, d.lr_mult) for d in p.decisions]  # noqa: E731
    assert view(p1) == view(p2)
    assert p1.decisions[0].tensor.native != p2.decisions[0].tensor.native
    names = [d.name for d in p1.decisions]
    assert "features.mobilenet0_conv0_weight" in names
    assert "features.mobilenet0_batchnorm0_weight" in names  # gamma spelled weight
    assert not any(n.startswith("anchor_generators") for n in names)  # constants are state
    # Running statistics are state, also those of layers the SymbolBlock made itself (expand_*).
    assert not any("running_" in n for n in names)
    assert {t.canonical for t in p1.listing.state} >= {"features.expand_bn0_running_mean",
                                                      "features.mobilenet0_batchnorm0_running_var"}
    assert len(p1.norms) > 30 and all(n.frozen for n in p1.norms if n.norm.name.startswith("features."))


@pytest.mark.parametrize("policy, frozen", [("freeze_frozen", True), ("train", False)])
def test_symbolblock_batchnorm_statistics_freeze(gcv, policy, frozen):
    net = ssd(gcv)
    net.initialize()
    net.hybridize()
    x = mx.nd.random.uniform(shape=(1, 3, 128, 128))
    net(x)
    # The first conv trains, so backward runs through the whole SymbolBlock (MXNet updates a
    # SymbolBlock's running statistics as part of its backward pass).
    tunespec.apply(net, {"freeze": ["features\\..*"], "train": ["features\\.mobilenet0_conv0_weight"],
                         "bn": policy})
    before = running(net, "features.mobilenet0_batchnorm0_running")
    with mx.autograd.record():  # SymbolBlocks update running statistics when backward runs
        cls_preds, box_preds, _ = net(x)
        loss = cls_preds.sum() + box_preds.sum()
    loss.backward()
    after = running(net, "features.mobilenet0_batchnorm0_running")
    same = all(np.array_equal(before[k], after[k]) for k in before)
    assert before and same == frozen


def test_gluoncv_imports_beside_torch_2_only_through_tunespec():
    code = ("import torch, sys\n"
            "try:\n    import gluoncv\n    print('plain import worked')\n"
            "except RuntimeError as e:\n    print('plain import failed:', str(e)[:40])\n"
            "for m in [m for m in sys.modules if m.startswith('gluoncv')]: del sys.modules[m]\n"
            "from tunespec.backends.mxnet import import_gluoncv\n"
            "gcv = import_gluoncv()\n"
            "net = gcv.model_zoo.get_model('resnet18_v1b', pretrained=False)\n"
            "print('ok', type(net).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "plain import failed: Legacy torch" in out.stdout, out.stdout + out.stderr
    assert "ok ResNetV1b" in out.stdout, out.stderr


def test_unknown_gluon_optimizer_is_a_clear_error():
    net = MXNetHarness().small_cnn("float32")
    with pytest.raises(tunespec.SpecError, match="unknown MXNet optimizer 'sgdd'"):
        tunespec.optimizer(net, SPEC, "sgdd", lr=0.1)


def test_trainer_options_pass_through():
    net = MXNetHarness().small_cnn("float32")
    trainer = tunespec.optimizer(net, SPEC, "sgd", lr=0.1, momentum=0.5, kvstore="local",
                                 update_on_kvstore=False)
    assert trainer._kvstore_params["kvstore"] == "local" and trainer._optimizer.momentum == 0.5


def test_reset_class_after_planning_needs_a_replan(gcv):
    net = ssd(gcv)
    net.initialize()
    plan = tunespec.plan(net, {"freeze": ["features\\..*"]})
    net.reset_class(["cat", "dog"])  # new class predictors: new Parameter objects
    with pytest.raises(tunespec.StalePlanError, match="class_predictors.*re-plan"):
        plan.optimizer("sgd", lr=0.01)
    assert all(p.grad_req != "null" for p in net.features.collect_params().values()
               if p._differentiable and "running" not in p.name and "moving" not in p.name)
    fresh = tunespec.plan(net, {"freeze": ["features\\..*"]})
    assert fresh["class_predictors.0.predictor.weight"].tensor.shape[0] == 3 * 4  # 3 classes x 4 anchors


def test_shared_gluon_parameters_listed_once_matched_by_alias():
    net = mx.gluon.nn.HybridSequential()
    first = mx.gluon.nn.Dense(4, in_units=4)
    net.add(first, mx.gluon.nn.Dense(4, in_units=4, params=first.params))  # tied weights
    net.initialize()
    plan = tunespec.apply(net, {"freeze": ["1\\.weight"]})
    assert [d.name for d in plan.decisions] == ["0.weight", "0.bias"]
    assert plan["0.weight"].tensor.aliases == ("1.weight",)
    assert first.weight.grad_req == "null" and first.bias.grad_req == "write"


def test_parameters_never_assigned_to_an_attribute_are_listed_under_their_block():
    """params.get() without an attribute (what collect_params() still returns) is planned too,
    named under the deepest block whose prefix it carries; get_constant() is state."""

    class Head(mx.gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.fc = mx.gluon.nn.Dense(2, in_units=3)
                self.params.get("scale", shape=(2,))
                self.params.get_constant("anchors", mx.nd.ones((4,)))

    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(3, in_units=3), Head())
    net.initialize()
    plan = tunespec.plan(net, {"freeze": [r"1\.scale"]})
    listing = plan.listing
    assert [d.name for d in plan.decisions] == ["0.weight", "0.bias", "1.fc.weight", "1.fc.bias", "1.scale"]
    assert [t.canonical for t in listing.state] == ["1.anchors"]
    assert not plan["1.scale"].trainable and plan["1.fc.weight"].trainable
    assert len(listing) == len(list(net.collect_params().keys()))
