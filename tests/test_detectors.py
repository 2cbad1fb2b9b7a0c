"""Presets on real GluonCV detectors, trained for 2 steps with their real detection losses."""

from __future__ import annotations

import re

import pytest

from frameworks import needs

mx = needs("mxnet")
import numpy as np  # noqa: E402

from mxnet import autograd  # noqa: E402

import tunespec  # noqa: E402
from tunespec.planning.cards import card_for  # noqa: E402
from tunespec.planning.plan import APPLIED  # noqa: E402
from gluon_detection import build, samples, step_fn  # noqa: E402

PRESETS = ["heads", "3+", "4+", "5+", "all"]


def values(plan, tensors) -> dict[str, np.ndarray]:
    return {t.canonical: plan.backend.read(t.handle) for t in tensors}


CASES = [(family, True, preset) for family in ("ssd", "yolo", "frcnn") for preset in PRESETS]
CASES += [("ssd", False, "heads"), ("ssd", False, "4+")]  # a plain (not hybridized) Block too


@pytest.mark.parametrize("family,hybridize,preset", CASES)
def test_two_detection_steps_keep_frozen_tensors_and_train_the_rest(family, hybridize, preset):
    np.random.seed(0)  # GluonCV's augmentations draw from numpy's global generator
    mx.random.seed(0)
    net = build(family, hybridize)
    loss_of = step_fn(family, net)
    spec = tunespec.Spec.preset(preset, wd_mult={"@bias": 0, "@norm": 0})
    trainer = tunespec.optimizer(net, spec, "adam", lr=1e-3)
    plan = tunespec.plan(net, spec)
    applied = APPLIED[net]  # the plan tunespec.optimizer applied
    assert {id(p) for p in trainer._params} == {id(d.tensor.handle) for d in applied.trainable}
    assert [d.trainable for d in plan.decisions] == [d.trainable for d in applied.decisions]
    frozen_stats = [t for n in applied.norms if n.frozen for t in applied.listing.state
                    if any(t.handle is h for h in n.norm.stats)]
    before = values(applied, [d.tensor for d in applied.decisions]) | values(applied, frozen_stats)
    got_gradient: set[str] = set()
    for step in range(2):
        batch = samples(family, 1 if family == "frcnn" else 2, seed=step)  # GluonCV: 1 image per R-CNN step
        with autograd.record():
            loss = loss_of(batch)
        loss.backward()
        for d in applied.trainable:
            if np.any(d.tensor.handle.grad().asnumpy() != 0):
                got_gradient.add(d.name)
        trainer.step(len(batch))
    after = values(applied, [d.tensor for d in applied.decisions]) | values(applied, frozen_stats)
    for d in applied.frozen:
        assert np.array_equal(before[d.name], after[d.name]), f"frozen {d.name} changed"
    for t in frozen_stats:
        assert np.array_equal(before[t.canonical], after[t.canonical]), f"frozen statistic {t.canonical} moved"
    unchanged = [n for n in got_gradient if np.array_equal(before[n], after[n])]
    assert not unchanged, f"trainable with gradients but unchanged: {unchanged[:5]}"
    # The losses reach the heads and every backbone stage the preset trains. (Not every tensor:
    # SSD's expansion BatchNorms fix gamma, and far-away anchors match no box.)
    card = card_for((applied.listing.model_type,), (d.name for d in applied.decisions))
    for group in ["heads", *(f"stage{i}" for i in range(int(preset[0]), 6))] if preset[0].isdigit() else ["heads"]:
        pattern = re.compile(card.groups[group])
        assert any(pattern.fullmatch(n) for n in got_gradient), f"no gradient reached {group}"
    assert applied.verify().ok
    if preset != "all":
        assert applied.frozen and frozen_stats


@pytest.mark.parametrize("family", ["ssd", "yolo", "frcnn"])
def test_a_detector_built_twice_gets_the_same_plan(family):
    first, second = build(family), build(family)
    p1, p2 = (tunespec.plan(n, tunespec.Spec.preset("4+")) for n in (first, second))
    assert [(d.name, d.trainable) for d in p1.decisions] == [(d.name, d.trainable) for d in p2.decisions]
    assert [n.frozen for n in p1.norms] == [n.frozen for n in p2.norms]
    # Gluon's own names differ (ssd0_ / ssd1_, fasterrcnn0_ / fasterrcnn1_); canonical ones do not.
    assert {d.tensor.native for d in p1.decisions} != {d.tensor.native for d in p2.decisions}
