"""tunespec.cache_frozen: training the head on cached prefix features is the uncached training,
and cuts that would make it wrong are refused (both frameworks, real ResNet-18 at 32 px)."""

from __future__ import annotations

import pytest

import tunespec
from frameworks import batches, np  # np: None without a framework, whose tests skip

LAYER4_FC = {"freeze": [".*"], "train": [r"layer4\..*", r"fc\..*"]}
FC_ONLY = {"freeze": [".*"], "train": [r"fc\..*"]}


def cached_step(h, cut, feats, opt, y: np.ndarray) -> float:
    """One training step of the head on cached features, with the harness's loss convention."""
    if h.name == "torch":
        torch = h.torch
        cut.head.train()
        loss = torch.nn.functional.cross_entropy(cut.head(feats), torch.from_numpy(y).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    mx = h.mx
    label = mx.nd.array(y, dtype=feats.dtype)
    with mx.autograd.record():
        loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(cut.head(feats), label).sum()
    loss.backward()
    opt.step(y.shape[0])
    return float(loss.asscalar()) / y.shape[0]


def as_input(h, x: np.ndarray):
    return h.torch.from_numpy(x) if h.name == "torch" else h.mx.nd.array(x, dtype=x.dtype)


@pytest.mark.parametrize("spec, split", [(LAYER4_FC, "layer4"), (FC_ONLY, "avgpool")])
def test_cached_training_equals_uncached(h, spec, split):
    """Same losses, same gradients of every trained tensor, same weights and BN statistics after
    three steps over two epochs of cached features; frozen tensors untouched."""
    data = batches(2, 32, seed=1, classes=10)
    plain, cached = h.resnet18(), h.resnet18()
    start = h.arrays(plain)
    h.load_arrays(cached, start)
    opt_plain = tunespec.optimizer(plain, spec, "sgd", lr=0.05, momentum=0.5)
    plan = tunespec.apply(cached, spec)
    cut = tunespec.cache_frozen(cached, plan, split)
    opt_cached = plan.optimizer("sgd", lr=0.05, momentum=0.5)
    feats = [cut.features(as_input(h, x)) for x, _ in data]  # once per sample
    trained = {d.name for d in plan.trainable}
    for epoch in range(2):
        for (x, y), f in zip(data, feats, strict=True):
            loss_plain = h.step(plain, opt_plain, x, y)
            loss_cached = cached_step(h, cut, f, opt_cached, y)
            assert loss_cached == pytest.approx(loss_plain, rel=1e-12, abs=1e-12), (epoch, loss_plain)
            g_plain, g_cached = h.grads(plain), h.grads(cached)
            for name in trained:
                np.testing.assert_allclose(g_cached[name], g_plain[name], rtol=1e-10, atol=1e-12,
                                           err_msg=name)
            assert all(g_cached[n] is None or not g_cached[n].any() for n in g_cached if n not in trained)
    end_plain, end_cached = h.arrays(plain), h.arrays(cached)
    for name, value in end_plain.items():
        np.testing.assert_allclose(end_cached[name], value, rtol=1e-10, atol=1e-12, err_msg=name)
    assert any(not np.array_equal(end_cached[n], start[n]) for n in trained)
    assert plan.verify().ok


def test_features_are_detached_and_head_continues_the_model(h):
    model = h.resnet18()
    cut = tunespec.cache_frozen(model, LAYER4_FC, "layer4")
    x = batches(1, 32, seed=2)[0][0]
    feats = cut.features(as_input(h, x))
    assert tuple(feats.shape) == (4, 256, 2, 2)  # layer3's output at 32 px
    if h.name == "torch":
        assert not feats.requires_grad
    np.testing.assert_allclose(h.forward(model, x), h.forward(cut.head, feats.asnumpy() if h.name == "mxnet"
                                                              else feats.numpy()), rtol=1e-12, atol=1e-12)


def trainability(h, model) -> list[bool]:
    return [t.trainable for t in h.backend.listing(model).params]


@pytest.mark.parametrize("spec, split, message", [
    ({"freeze": [r"layer1\..*"]}, "layer4", "'conv1.weight' is used before 'layer4' but trains"),
    ({**LAYER4_FC, "bn": "train"}, "layer4", "BatchNorm 'bn1' before 'layer4' still updates"),
    (FC_ONLY, "layer4.0.conv2", "not a clean cut"),
    (FC_ONLY, "layer9", "no"),
])
def test_refusals_leave_the_model_untouched(h, spec, split, message):
    model = h.resnet18()
    before = trainability(h, model)
    with pytest.raises(tunespec.SpecError, match=message.replace(".", r"\.")):
        tunespec.cache_frozen(model, spec, split)
    assert trainability(h, model) == before


def test_refuses_dropout_before_the_split(h):
    if h.name == "torch":
        nn = h.torch.nn
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 6 * 6, 2))
    else:
        nn = h.mx.gluon.nn
        model = nn.HybridSequential()
        model.add(nn.Conv2D(4, 3, in_channels=3), nn.Dropout(0.5), nn.Activation("relu"), nn.Flatten(),
                  nn.Dense(2, in_units=4 * 6 * 6))
        model.initialize()
    with pytest.raises(tunespec.SpecError, match="random in training"):
        tunespec.cache_frozen(model, {"freeze": [r"0\..*"]}, "4")
    tunespec.cache_frozen(model, {"freeze": [r"0\..*"]}, "1")  # before the dropout: a valid cut
