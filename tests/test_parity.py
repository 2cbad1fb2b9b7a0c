"""Parity: the same spec file does the same thing to torchvision/GluonCV twins, in float64.

Tolerances. Both frameworks run in float64 from identical weights on identical batches, so
they differ only by summation order (~1e-16 relative per op), which a few SGD steps through
BatchNorm amplify to ~1e-12 of the update size. MXNet additionally passes lr, momentum and
wd to its update operator as float32 attributes: 0.9 becomes 0.899999976 (relative error
2.6e-8), and so on, so with the customary hyper-parameters the runs differ by ~1e-7 of the
update size. We therefore test twice: with lr/momentum/wd exactly representable in float32
(tolerance 1e-9 of the update) and with the customary 0.9 / 5e-4 (tolerance 1e-5 of the update).
Either tolerance fails if a multiplier, a frozen set or the loss scaling were wrong (those
change the update by O(1)).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from frameworks import MXNetHarness, TorchHarness, batches, needs

needs("torch")
needs("mxnet")
import numpy as np  # noqa: E402

import tunespec  # noqa: E402

RECIPES = Path(__file__).parent / "recipes"
MODELS = {  # model -> (recipe, input size, classes)
    "resnet18": ("resnet_parity.yaml", 32, 10),
    "small_cnn": ("small_cnn_parity.yaml", 8, 5),
}


@pytest.fixture(scope="module")
def harnesses():
    return TorchHarness(), MXNetHarness()


def twins(harnesses, model):
    th, mh = harnesses
    _, size, classes = MODELS[model]
    th.torch.manual_seed(0)  # reproducible initial weights (see test_port.TOLERANCE)
    tm = th.resnet18(classes) if model == "resnet18" else th.small_cnn()
    mm = mh.resnet18(classes) if model == "resnet18" else mh.small_cnn()
    mh.load_arrays(mm, th.arrays(tm))
    return tm, mm


@pytest.mark.parametrize("model", list(MODELS))
def test_same_spec_same_plan_and_same_outputs(harnesses, model):
    th, mh = harnesses
    tm, mm = twins(harnesses, model)
    recipe = RECIPES / MODELS[model][0]
    pt, pm = tunespec.plan(tm, recipe), tunespec.plan(mm, recipe)
    assert pt.backend_name == "torch" and pm.backend_name == "mxnet"
    view = lambda p: {d.name: (d.trainable, d.lr_mult, d.wd_mult) for d in p.decisions}  # noqa: E731
    assert view(pt) == view(pm)
    assert {n.norm.name: n.frozen for n in pt.norms} == {n.norm.name: n.frozen for n in pm.norms}
    assert pt.summary()["groups"] == pm.summary()["groups"]
    x = batches(1, MODELS[model][1], classes=MODELS[model][2])[0][0]
    np.testing.assert_allclose(th.forward(tm, x), mh.forward(mm, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("hyper, tolerance", [
    ((2.0 ** -9, 0.875, 2.0 ** -11), 1e-9),  # exactly representable in float32
    ((0.002, 0.9, 5e-4), 1e-5),  # the customary values; see the module docstring
], ids=["float32-exact", "customary"])
@pytest.mark.parametrize("model", list(MODELS))
def test_five_sgd_steps_agree_and_frozen_stays_bit_identical(harnesses, model, hyper, tolerance):
    th, mh = harnesses
    tm, mm = twins(harnesses, model)
    recipe, size, classes = MODELS[model]
    lr, momentum, wd = hyper
    opt_t = tunespec.optimizer(tm, RECIPES / recipe, "sgd", lr=lr, momentum=momentum, weight_decay=wd)
    opt_m = tunespec.optimizer(mm, RECIPES / recipe, "sgd", lr=lr, momentum=momentum, weight_decay=wd)
    plan = tunespec.plan(tm, RECIPES / recipe)
    frozen = {d.name for d in plan.frozen}
    frozen_stats = {f"{n.norm.name}.{s}" for n in plan.norms if n.frozen
                    for s in ("running_mean", "running_var")}
    assert frozen and frozen_stats
    start = th.arrays(tm)
    for x, y in batches(5, size, classes=classes, batch=8):
        th.step(tm, opt_t, x, y)
        mh.step(mm, opt_m, x, y)
    end_t, end_m = th.arrays(tm), mh.arrays(mm)
    for name in frozen | frozen_stats:  # bit-identical in both frameworks
        assert np.array_equal(end_t[name], start[name]), f"torch changed frozen {name}"
        assert np.array_equal(end_m[name], start[name]), f"mxnet changed frozen {name}"
    trainable = [d.name for d in plan.trainable]
    update = max(np.abs(end_t[n] - start[n]).max() for n in trainable)
    assert update > 1e-4
    moved = [n for n in trainable if not np.array_equal(end_t[n], start[n])]
    assert len(moved) >= len(trainable) - 2  # conv biases before BN get (almost) no gradient
    worst = max(np.abs(end_t[n] - end_m[n]).max() for n in trainable)
    assert worst <= tolerance * update, f"largest difference {worst:.3g} vs update {update:.3g}"
