"""Ramps, lr-schedule restarts and per-stage schedules on live models, in torch and Gluon."""

from __future__ import annotations

import warnings

import pytest

import tunespec
from frameworks import HARNESSES, batches, needs, np  # np: None without a framework, whose tests skip
from tunespec import SpecError
from tunespec.recipe.ramps import Ramp
from tunespec.recipe.schedule import LRSchedule

LR = 0.02
HEAD = r"8\..*"  # small_cnn's classifier


def recipe(**stage):
    return {"train": [HEAD], "freeze": [".*"], "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9},
            "stages": [{"at_epoch": 1, "train": [".*"], **stage}]}


def effective(h, net, opt):
    """Every trainable parameter's lr for the next optimizer step."""
    params = {t.canonical: t.handle for t in h.backend.listing(net).params}
    if h.name == "torch":
        of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        return {n: of[id(p)] for n, p in params.items() if p.requires_grad}
    o = opt._optimizer
    sched = o.lr_scheduler
    base = sched(o.num_update + 1) if sched is not None else o.lr  # what the next update asks for
    return {n: base * p.lr_mult for n, p in params.items() if p.grad_req != "null"}


def train(h, net, opt, runner, steps):
    for x, y in batches(steps, 8, seed=5):
        h.step(net, opt, x.astype(np.float32), y)
        if h.name == "torch" and runner.lr_scheduler is not None:
            runner.lr_scheduler.step()


def test_per_epoch_ramp_grows_new_parameters_to_the_rest(h):
    ramp = Ramp(0.1, 2.0)
    runner = tunespec.StageRunner(recipe(ramp={"start": 0.1, "growth": 2.0}))
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    seen = []
    for epoch in range(6):
        train(h, net, opt, runner, 1)
        net, opt = runner.step(epoch, net, opt)
        seen.append(effective(h, net, opt))
    for k, lrs in enumerate(seen):
        assert lrs["8.weight"] == pytest.approx(LR, rel=1e-12)
        expected = ramp.lr(LR, k)  # 0.002, 0.004, ... capped at 0.02
        assert lrs["0.weight"] == pytest.approx(expected, rel=1e-12) and lrs["3.weight"] == lrs["0.weight"]
    assert seen[-1]["0.weight"] == pytest.approx(LR, rel=1e-12) and seen[0]["0.weight"] < LR / 5
    runner.plan.verify().raise_if_changed()


def test_per_step_ramp_and_restart_follow_the_lr_scheduler(h):
    sched = {"type": "step", "step_size": 2, "gamma": 0.5}
    rec = {**recipe(ramp={"start": 0.25, "growth": 2.0, "per": "step"}, restart=True), "schedule": sched}
    runner = tunespec.StageRunner(rec)
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    train(h, net, opt, runner, 3)  # 3 steps: the schedule halved once
    net, opt = runner.step(0, net, opt)
    factor = LRSchedule.from_dict(sched).factor
    for n in range(4):  # the schedule restarted at the stage's first step; the ramp doubles per step
        lrs = effective(h, net, opt)
        assert lrs["8.weight"] == pytest.approx(LR * factor(n), rel=1e-12)
        assert lrs["0.weight"] == pytest.approx(LR * factor(n) * min(0.25 * 2 ** n, 1.0), rel=1e-12)
        train(h, net, opt, runner, 1)


def test_a_stage_switches_to_its_own_onecycle_schedule(h):
    own = {"type": "onecycle", "total_steps": 6, "pct_start": 0.5, "div": 4}
    rec = {**recipe(schedule=own), "schedule": {"type": "constant"}}
    runner = tunespec.StageRunner(rec)
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    train(h, net, opt, runner, 2)
    net, opt = runner.step(0, net, opt)
    factor = LRSchedule.from_dict(own).factor
    for n in range(6):
        lrs = effective(h, net, opt)
        assert lrs["0.weight"] == pytest.approx(LR * factor(n), rel=1e-12) == lrs["8.weight"]
        train(h, net, opt, runner, 1)
    assert factor(0) == pytest.approx(0.25) and factor(3) == pytest.approx(1.0)


def test_resume_inside_a_ramp_gives_the_same_lrs(h, tmp_path):
    path = tmp_path / ("run.pt" if h.name == "torch" else "run.params")
    rec = recipe(ramp={"start": 0.1, "growth": 2.0})
    runner = tunespec.StageRunner(rec)
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    for epoch in range(3):
        train(h, net, opt, runner, 1)
        net, opt = runner.step(epoch, net, opt)
    tunespec.save_checkpoint(path, net, opt, runner, epoch=2)
    net, opt = runner.step(3, net, opt)
    runner2 = tunespec.StageRunner(rec)
    net2, opt2, _ = tunespec.resume(path, h.small_cnn(dtype="float32"), runner2)
    net2, opt2 = runner2.step(3, net2, opt2)
    assert effective(h, net2, opt2) == effective(h, net, opt)


def test_a_stage_change_failing_after_the_lrs_were_installed_puts_them_back(monkeypatch):
    needs("torch")
    h = HARNESSES["torch"]()
    rec = {**recipe(ramp={"start": 0.1, "growth": 2.0}, restart=True), "schedule": {"type": "step", "step_size": 1}}
    runner = tunespec.StageRunner(rec)
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    train(h, net, opt, runner, 2)
    sched = runner.lr_scheduler
    before = ([dict(g, params=list(g["params"])) for g in opt.param_groups], list(sched.base_lrs),
              list(sched.get_last_lr()), len(sched.lr_lambdas), runner.clock.offset)
    real = h.backend.restage_optimizer

    def restage_then_fail(*args):
        real(*args)
        raise RuntimeError("injected")

    monkeypatch.setattr(h.backend, "restage_optimizer", restage_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        runner.step(0, net, opt)
    after = ([dict(g, params=list(g["params"])) for g in opt.param_groups], list(sched.base_lrs),
             list(sched.get_last_lr()), len(sched.lr_lambdas), runner.clock.offset)
    assert after == before and runner.index == 0 and not net[0].weight.requires_grad


def test_ramp_without_newly_unfrozen_parameters_is_an_error():
    needs("torch")
    h = HARNESSES["torch"]()
    rec = recipe(ramp={"start": 0.1, "growth": 2.0})
    rec["stages"][0].update(freeze=[".*"], train=[HEAD])  # what already trains: nothing new
    runner = tunespec.StageRunner(rec)
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    groups = [dict(g, params=list(g["params"])) for g in opt.param_groups]
    with pytest.raises(SpecError, match="ramp has no effect"):
        runner.step(0, net, opt)
    assert runner.index == 0 and [dict(g, params=list(g["params"])) for g in opt.param_groups] == groups


@pytest.mark.parametrize("stage, fragment", [
    ({"ramp": {"start": 0.1}}, "give growth"),
    ({"ramp": {"start": 0.1, "growth": 1.0}}, r"ramp.growth: expected a finite number > 1"),
    ({"ramp": {"start": 1.0, "growth": 2.0}}, "never grows"),
    ({"ramp": {"start": 0.1, "growth": 2.0, "per": "batch"}}, "ramp.per"),
    ({"ramp": {"start": 0.1, "growht": 2.0}}, "did you mean 'growth'"),
    ({"ramp": {"start": 1e-6, "growth": 1.0000001}}, "use a larger growth"),
    ({"restart": True}, "no lr schedule to restart"),
    ({"restart": True, "schedule": {"type": "constant"}}, "remove restart"),
    ({"schedule": {"type": "onecycle"}}, r"stages.then\[0\].schedule: type onecycle needs total_steps"),
    ({"schedule": {"type": "onecycle", "total_steps": 5, "pct_start": 1}}, "pct_start"),
    ({"schedule": {"type": "onecycle", "total_steps": 5, "warmup_steps": 1}}, "warms up by itself"),
    ({"schedule": {"type": "cosine", "total_steps": 5, "div": 3}}, "div: has no effect with type cosine"),
])
def test_bad_ramps_and_schedules(stage, fragment):
    with pytest.raises(SpecError, match=fragment):
        tunespec.StageRunner(recipe(**stage))


def test_ramp_lrs_are_lightnings_products():
    """The products Lightning takes, in its order: lr0 = target * start, then growth * previous."""
    ramp = Ramp(0.1, 1.5, ceiling=1.0)
    lr, expected = 0.03 * 0.1, []
    for _ in range(8):
        expected.append(lr)
        lr = 0.03 if 1.5 * lr > 0.03 else 1.5 * lr
    assert [ramp.lr(0.03, k) for k in range(8)] == expected


def test_schedule_is_a_deprecated_name_of_the_stage_runner():
    rec = {"preset": "heads", "stages": [{"at_epoch": 1, "preset": "all"}]}
    with pytest.warns(DeprecationWarning, match="tunespec.Schedule is now tunespec.StageRunner"):
        old = tunespec.Schedule(rec)
    assert isinstance(old, tunespec.StageRunner) and old.stages[1].name == "all"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tunespec.StageRunner(rec).stages == old.stages


def test_the_core_computes_ramped_lrs_on_the_fake_backend():
    """The ramp's numbers come from the core: a backend outside the tree installs them as given."""
    from fake_backend import BACKEND, small_net

    recipe = {"freeze": [".*"], "train": [r"fc\..*"], "optimizer": {"name": "sgd", "lr": 0.1},
              "stages": [{"at_epoch": 1, "train": [".*"], "ramp": {"start": 0.1, "growth": 3.0}}]}
    runner = tunespec.StageRunner(recipe)
    net, opt = runner.start(small_net())
    seen = []
    for epoch in range(4):
        net, opt = runner.step(epoch, net, opt)
        seen.append(sorted(g["lr"] for g in opt))
    ramp = Ramp(0.1, 3.0)
    assert seen == [sorted([0.1, ramp.lr(0.1, k)]) for k in range(4)]
    assert seen[-1] == [0.1, 0.1] and len(BACKEND.optimizer_handles(opt)) == len(tunespec.plan(net, {}).trainable)
