"""The init section: re-initialised heads with the same values in torch and Gluon."""

from __future__ import annotations

import math

import pytest

from frameworks import MXNetHarness, TorchHarness, needs

torch = needs("torch")
mx = needs("mxnet")
import numpy as np  # noqa: E402

import tunespec  # noqa: E402
from tunespec import SpecError  # noqa: E402


def big_pair():
    """A Linear and a conv with the same shapes in both frameworks (large, for statistics)."""
    t = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 3), torch.nn.Flatten(), torch.nn.Linear(2000, 1000))
    g = mx.gluon.nn.HybridSequential()
    g.add(mx.gluon.nn.Conv2D(128, 3, in_channels=64), mx.gluon.nn.Flatten(),
          mx.gluon.nn.Dense(1000, in_units=2000))
    g.initialize()
    return t, g


def values(model):
    h = TorchHarness() if isinstance(model, torch.nn.Module) else MXNetHarness()
    return h.arrays(model)


RULES = [
    {"layer": "conv", "match": r".*\.weight", "method": "kaiming_normal", "mode": "fan_out",
     "nonlinearity": "relu"},
    {"layer": "linear", "match": r".*\.weight", "method": "xavier_uniform"},
    {"match": r"0\.bias", "method": "normal", "mean": 0.5, "std": 0.01},
    {"layer": "linear", "match": r".*\.bias", "method": "constant", "value": 0.25},
]


def test_statistics_and_identical_values_in_both_frameworks():
    t, g = big_pair()
    rt = tunespec.initialize(t, {"init": {"seed": 7, "rules": RULES}})
    rg = tunespec.initialize(g, {"init": {"seed": 7, "rules": RULES}})
    assert rt.initialised == rg.initialised and len(rt.initialised) == 4
    vt, vg = values(t), values(g)
    for name in vt:  # drawn once in float64, cast to each framework's float32: identical
        assert np.array_equal(vt[name], vg[name]), name
    conv = vt["0.weight"]  # fan_out = 128 * 9
    assert abs(conv.mean()) < 2e-4 and math.isclose(conv.std(), math.sqrt(2 / (128 * 9)), rel_tol=0.01)
    fc = vt["2.weight"]
    bound = math.sqrt(6 / (2000 + 1000))
    assert fc.min() >= -bound and fc.max() <= bound
    assert math.isclose(fc.std(), bound / math.sqrt(3), rel_tol=0.01)
    assert math.isclose(vt["0.bias"].mean(), 0.5, abs_tol=0.003)
    assert np.all(vt["2.bias"] == 0.25)
    # the same distribution as torch's own initialisers
    ref = torch.empty(1000, 2000)
    torch.nn.init.xavier_uniform_(ref)
    assert math.isclose(ref.std().item(), fc.std(), rel_tol=0.01)
    torch.nn.init.kaiming_normal_(ref, mode="fan_in", nonlinearity="relu")
    t2, _ = big_pair()
    tunespec.initialize(t2, {"init": [{"match": r"2\.weight", "method": "kaiming_normal",
                                       "nonlinearity": "relu"}]})
    assert math.isclose(ref.std().item(), t2[2].weight.std().item(), rel_tol=0.01)


def test_seeded_and_independent_of_other_rules():
    t1, _ = big_pair()
    t2, _ = big_pair()
    t3, _ = big_pair()
    tunespec.initialize(t1, {"init": {"seed": 1, "rules": [RULES[1]]}})
    tunespec.initialize(t2, {"init": {"seed": 1, "rules": RULES}})
    tunespec.initialize(t3, {"init": {"seed": 2, "rules": [RULES[1]]}})
    assert torch.equal(t1[2].weight, t2[2].weight)
    assert not torch.equal(t1[2].weight, t3[2].weight)
    tunespec.initialize(t3, {"init": {"rules": [RULES[1]]}}, seed=1)  # the argument wins
    assert torch.equal(t1[2].weight, t3[2].weight)


def test_resnet_heads_by_group_and_layer_kind_in_both(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("freeze: ['.*']\ntrain: ['@heads']\n"
                    "init:\n  seed: 3\n  rules:\n    - {match: '@heads', method: zeros}\n"
                    "    - {match: 'fc\\.weight', method: normal, std: 0.01}\n")
    t, g = TorchHarness().resnet18(dtype="float32"), MXNetHarness().resnet18(dtype="float32")
    before = values(t)["layer1.0.conv1.weight"]
    rt, rg = tunespec.initialize(t, path), tunespec.initialize(g, path)
    assert rt.initialised == rg.initialised == {"fc.weight": "normal(mean=0.0, std=0.01)",
                                                "fc.bias": "zeros()"}
    assert np.array_equal(values(t)["fc.weight"], values(g)["fc.weight"])
    assert np.array_equal(values(t)["layer1.0.conv1.weight"], before)
    convs_t = tunespec.initialize(t, {"init": [{"layer": "conv", "method": "kaiming_uniform"}]})
    convs_g = tunespec.initialize(g, {"init": [{"layer": "conv", "method": "kaiming_uniform"}]})
    assert set(convs_t.initialised) == set(convs_g.initialised) and len(convs_t.initialised) == 20


@pytest.mark.parametrize("rules, fragment", [
    ([{"match": "fc.*", "method": "xavier"}], "did you mean 'xavier_normal'"),
    ([{"match": "fc.*", "method": "normal", "sd": 1}], "normal takes no 'sd'"),
    ([{"match": "fc.*", "method": "kaiming_normal", "mode": "in"}], "fan_in, fan_out"),
    ([{"method": "zeros"}], "give match"),
    ([{"match": "head\\..*", "method": "zeros"}], "selects no parameter"),
    ([{"match": "2\\.bias", "method": "xavier_normal"}], "fan-based methods need"),
    ([{"layer": "Conv3d", "method": "zeros"}], "layer types: Conv2d"),
])
def test_bad_init_rules(rules, fragment):
    t, _ = big_pair()
    before = values(t)
    with pytest.raises(SpecError, match=fragment):
        tunespec.initialize(t, {"init": rules})
    assert all(np.array_equal(before[n], v) for n, v in values(t).items())
