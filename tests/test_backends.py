"""Behaviour of both backends on real models: one suite, run over torch and mxnet (float32)."""

from __future__ import annotations


import pytest

import tunespec
from frameworks import batches, np  # np: None without a framework, whose tests skip
from tunespec import SpecError, StalePlanError

SPEC = {"freeze": ["[01]\\..*"], "lr_mult": {"8\\..*": 10}, "wd_mult": {"@bias": 0, "@norm": 0}}
FROZEN = {"0.weight", "0.bias", "1.weight", "1.bias"}
FROZEN_STATS = {"1.running_mean", "1.running_var"}


def train(h, model, opt, steps=3, size=8):
    for x, y in batches(steps, size, seed=1):
        h.step(model, opt, x.astype("float32"), y)


def test_frozen_bit_identical_trainable_changed_and_verify(h):
    model = h.small_cnn("float32")
    plan = tunespec.apply(model, SPEC)
    opt = plan.optimizer("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    plan.check(opt)
    before = h.arrays(model)
    train(h, model, opt)
    after = h.arrays(model)
    for name in FROZEN | FROZEN_STATS:
        assert np.array_equal(before[name], after[name]), name
    for name in ("3.weight", "4.weight", "4.bias", "8.weight", "8.bias", "4.running_mean"):
        assert not np.array_equal(before[name], after[name]), name
    assert plan.verify().ok


def test_verify_detects_a_changed_frozen_weight(h):
    model = h.small_cnn("float32")
    plan = tunespec.apply(model, SPEC)
    arrays = h.arrays(model)
    arrays["0.weight"] = arrays["0.weight"] + 1
    arrays["1.running_var"] = arrays["1.running_var"] + 1
    h.load_arrays(model, {k: arrays[k] for k in ("0.weight", "1.running_var")})
    report = plan.verify()
    assert report.changed_params == ["0.weight"] and report.changed_stats == ["1.running_var"]


def test_optimizer_groups_carry_multipliers_and_exclude_frozen(h):
    model = h.small_cnn("float32")
    opt = tunespec.optimizer(model, SPEC, "sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    handles = {id(p) for p in h.backend.optimizer_handles(opt)}
    listing = {t.canonical: t.handle for t in h.backend.listing(model).tensors}
    assert not any(id(listing[n]) in handles for n in FROZEN)
    assert not any(id(listing[n]) in handles for n in FROZEN_STATS)  # state never optimised
    assert id(listing["8.weight"]) in handles
    if h.name == "torch":
        groups = [(g["lr"], g["weight_decay"], g["param_names"]) for g in opt.param_groups]
        assert groups == [(0.1, 1e-4, ["3.weight"]), (0.1, 0.0, ["3.bias", "4.weight", "4.bias"]),
                          (1.0, 1e-4, ["8.weight"]), (1.0, 0.0, ["8.bias"])]
    else:
        assert opt.learning_rate == 0.1 and opt.optimizer.wd == 1e-4
        assert (listing["8.weight"].lr_mult, listing["8.bias"].wd_mult) == (10.0, 0.0)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_named_optimizers_work_in_both(h, name):
    model = h.small_cnn("float32")
    opt = tunespec.optimizer(model, SPEC, name, lr=0.01, weight_decay=0.01)
    before = h.arrays(model)
    train(h, model, opt, steps=2)
    after = h.arrays(model)
    assert np.array_equal(before["0.weight"], after["0.weight"])
    assert not np.array_equal(before["8.weight"], after["8.weight"])


def test_check_catches_an_optimizer_built_before_freezing(h):
    model = h.small_cnn("float32")
    early = tunespec.optimizer(model, {"freeze": [], "train": [".*"]}, "sgd", lr=0.1)
    plan = tunespec.apply(model, SPEC)
    with pytest.raises(SpecError, match="frozen parameter.*0.weight"):
        plan.check(early)


def test_restore_undoes_apply(h):
    model = h.small_cnn("float32")
    plan0 = tunespec.plan(model, SPEC)
    original = [(d.tensor.trainable, d.tensor.lr_mult, d.tensor.wd_mult) for d in plan0.decisions]
    plan = tunespec.apply(model, SPEC)
    assert not tunespec.plan(model, {"train": [".*"]}).decisions[0].tensor.trainable
    plan.restore()
    again = tunespec.plan(model, SPEC)
    assert [(d.tensor.trainable, d.tensor.lr_mult, d.tensor.wd_mult) for d in again.decisions] == original
    assert not any(n.norm.stats_frozen for n in again.norms)


def test_apply_clears_stale_gradients_of_newly_frozen(h):
    model = h.small_cnn("float32")
    opt = tunespec.optimizer(model, {"train": [".*"]}, "sgd", lr=0.01)
    train(h, model, opt, steps=1)
    assert h.grads(model)["0.weight"] is not None
    tunespec.apply(model, SPEC)
    assert h.grads(model)["0.weight"] is None
    assert h.grads(model)["8.weight"] is not None


def test_model_changed_after_planning_needs_a_replan(h):
    model = h.small_cnn("float32")
    plan = tunespec.plan(model, SPEC)
    other = h.small_cnn("float32")
    if h.name == "torch":
        model[8] = other[8]
    else:
        model._children["8"] = other._children["8"]
    with pytest.raises(StalePlanError, match="8.weight.*re-plan"):
        plan.apply()
    assert all(d.tensor.trainable for d in tunespec.plan(model, {"train": [".*"]}).decisions[:4])


def test_bad_spec_leaves_the_model_untouched(h):
    model = h.small_cnn("float32")
    before = [(d.tensor.trainable, d.tensor.lr_mult) for d in tunespec.plan(model, {"train": [".*"]}).decisions]
    for bad in ({"freeze": ["[01]\\..*", "layer9\\..*"]}, {"freeze": ["[01]\\..*"], "lr_mult": {"8.*": 0}}):
        with pytest.raises(SpecError):
            tunespec.apply(model, bad)
    after = [(d.tensor.trainable, d.tensor.lr_mult) for d in tunespec.plan(model, {"train": [".*"]}).decisions]
    assert before == after


def test_frozen_bn_policy_freeze_normalises_with_running_stats_in_training(h):
    model = h.small_cnn("float32")
    tunespec.apply(model, {"bn": "freeze", "train": [".*"]})
    x = batches(1, 8)[0][0].astype("float32")
    before = h.arrays(model)
    out_train = h.forward(model, x, train=True)
    assert np.array_equal(before["4.running_mean"], h.arrays(model)["4.running_mean"])
    out_eval = h.forward(model, x, train=False)
    np.testing.assert_allclose(out_train, out_eval, rtol=1e-5, atol=1e-6)
    tunespec.apply(model, {"bn": "train", "train": [".*"]})  # control: statistics move again
    h.forward(model, x, train=True)
    assert not np.array_equal(before["4.running_mean"], h.arrays(model)["4.running_mean"])


def test_state_is_reported_not_planned(h):
    plan = tunespec.plan(h.small_cnn("float32"), SPEC)
    state = {t.canonical for t in plan.listing.state}
    assert {"1.running_mean", "1.running_var", "4.running_mean", "4.running_var"} <= state
    assert not state & {d.name for d in plan.decisions}
