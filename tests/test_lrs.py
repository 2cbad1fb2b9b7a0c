"""The learning-rate model (tunespec.lifecycle.lrs): O(1) lr functions (work counted for n and 4n steps),
growing schedules bounded when read, stages past a schedule's end, the lr timeline's memory,
and a training loop that never steps the lr scheduler."""

from __future__ import annotations

import math
import tracemalloc
import warnings

import pytest

import tunespec
from frameworks import HARNESSES, batches, needs, np  # np: None without a framework, whose tests skip
from tunespec import SpecError
from tunespec.recipe import ramps as ramps_module
from tunespec.recipe import schedule as recipe_module
from tunespec.cli import main
from tunespec.recipe.ramps import Ramp
from tunespec.recipe.schedule import LRSchedule, accumulate
from tunespec.lifecycle.timeline import MAX_POINTS, MAX_ROWS, lr_timeline

HEAD = r"8\..*"  # small_cnn's classifier


def work() -> int:
    """lr-function iterations so far: onecycle additions plus ramp products."""
    return recipe_module.ACCUMULATE_WORK[0] + ramps_module.RAMP_WORK[0]


def counted(call) -> int:
    before = work()
    call()
    return work() - before


# --- O(1) per step --------------------------------------------------------------------------
def test_accumulate_is_the_float_loop_bit_for_bit():
    import random

    rng = random.Random(7)
    for _ in range(3000):
        step = rng.choice([1 / rng.randint(1, 10**6), rng.random() * 1e-3, 0.1, 1 / 3, 1 / 391])
        pos = rng.choice([0.0, rng.random(), rng.randint(0, 9) / 10])
        n = rng.randint(0, 3000)
        expected = pos
        for _ in range(n):
            expected += step
        assert accumulate(pos, step, n) == expected


@pytest.mark.parametrize("n", [1000, 4000, 16000])
def test_a_onecycle_run_costs_linear_work_and_any_step_bounded_work(n):
    def run(steps: int) -> int:
        sched = LRSchedule.from_dict({"type": "onecycle", "total_steps": steps})
        return counted(lambda: [sched.factor(t) for t in range(steps)])

    assert run(n) <= 2 * n and run(4 * n) <= 2 * 4 * n  # one addition per step, not t per step
    fresh = LRSchedule.from_dict({"type": "onecycle", "total_steps": 10**12})
    assert counted(lambda: fresh.factor(4 * n)) <= 200  # random access: jumps, not 4n additions
    assert counted(lambda: fresh.factor(10**12 - 1)) <= 200


def test_per_step_ramps_are_closed_form_and_per_epoch_ramps_continue_their_products():
    ramp = Ramp(1e-6, 1.0001, per="step")  # 138,000 steps to the ceiling
    assert counted(lambda: [ramp.ratio(t) for t in (10, 10**6, 10**12)]) == 0
    assert ramp.ratio(10**12) == 1.0 and ramp.ratio(0) == 1e-6
    slow = Ramp(1e-6, 1.0001)
    n = 1000
    assert counted(lambda: [slow.lr(0.1, k) for k in range(n)]) == n - 1
    assert counted(lambda: [slow.lr(0.1, k) for k in range(n, 4 * n)]) == 3 * n
    assert counted(lambda: slow.lr(0.1, 10**12)) <= slow.steps_to_ceiling() + 1  # bounded by the ramp
    assert [slow.lr(0.1, k) for k in range(5)] == [Ramp(1e-6, 1.0001).lr(0.1, k) for k in range(5)]


@pytest.mark.parametrize("epochs", [250, 1000])
def test_lr_timeline_work_grows_with_the_shown_rows_not_the_steps(epochs):
    """A 4x longer run of a onecycle + per-step ramp recipe: the table costs the same work."""
    recipe = {"preset": "heads", "optimizer": {"name": "sgd", "lr": 0.1},
              "schedule": {"type": "onecycle", "total_steps": epochs, "unit": "epoch"},
              "stages": [{"at_epoch": 1, "preset": "all", "ramp": {"start": 0.01, "growth": 1.001, "per": "step"}}]}
    n = counted(lambda: lr_timeline(recipe, epochs, 1000).table())
    m = counted(lambda: lr_timeline(recipe, epochs, 250).table())
    assert n <= 400 * MAX_ROWS and m <= 400 * MAX_ROWS  # jumps per shown row, not steps


def test_lr_timeline_memory_is_groups_times_shown_points():
    trainable = [{f"t{i}": 1.0 + i for i in range(20)}]
    recipe = {"preset": "all", "optimizer": {"name": "sgd", "lr": 0.1},
              "schedule": {"type": "cosine", "total_steps": 10**6}}
    tracemalloc.start()
    try:
        tl = lr_timeline(recipe, 1000, 1000, trainable)
        text = tl.table()
        points = tl.points()
        values = [tl.series[k][t] for k in tl.series for t in points]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(tl.series) == 20 and len(tl.series["t0"]) == 10**6 and len(values) <= 20 * (MAX_POINTS + 2)
    assert len(text.splitlines()) <= MAX_ROWS + 25 and all(math.isfinite(v) for v in values)
    assert peak < 20 * 2**20  # the old per-step lists took 708 MB for 20 tensors at 10^6 steps


def test_a_long_table_is_thinned_and_says_so():
    tl = lr_timeline({"preset": "all", "optimizer": {"lr": 0.1}}, 10**5, 10)
    text = tl.table(every=1)
    assert "every 500 steps shown" in text and len(text.splitlines()) <= MAX_ROWS + 3  # + head, legend, note


# --- read-time validation ---------------------------------------------------------------------
@pytest.mark.parametrize("schedule, fragment", [
    ({"type": "step", "step_size": 10, "gamma": 2.0}, "without limit"),
    ({"type": "step", "step_size": 10, "gamma": 1e6}, "without limit"),
    ({"type": "multistep", "milestones": [1, 2, 3, 4, 5, 6, 7], "gamma": 10.0}, "more than the limit 1e\\+06"),
    ({"type": "multistep", "milestones": list(range(1, 400)), "gamma": 1e6}, "more than the limit"),
    ({"type": "onecycle", "total_steps": 10, "gamma": 0.5}, "has no effect with type onecycle"),
])
def test_growing_or_ignored_gamma_is_refused_when_read(schedule, fragment):
    with pytest.raises(SpecError, match=f"schedule.gamma: .*{fragment}"):
        LRSchedule.from_dict(schedule)
    stage = {"preset": "heads", "optimizer": {"lr": 0.1},
             "stages": [{"at_epoch": 1, "preset": "all", "schedule": schedule}]}
    with pytest.raises(SpecError, match=f"stages.then\\[0\\].schedule.gamma: .*{fragment}"):
        tunespec.StageRunner(stage)


def test_growth_within_the_bound_stays_finite_at_every_step():
    sched = LRSchedule.from_dict({"type": "multistep", "milestones": [10, 20, 30], "gamma": 100.0})
    assert sched.factor(10**15) == pytest.approx(1e6) and math.isfinite(sched.factor(10**15) * 1e6 * 1e6)
    assert LRSchedule.from_dict({"type": "step", "step_size": 5, "gamma": 1.0}).factor(10**15) == 1.0


COSINE6 = {"preset": "heads", "optimizer": {"name": "sgd", "lr": 0.1},
           "schedule": {"type": "cosine", "total_steps": 6, "unit": "epoch"}}


@pytest.mark.parametrize("stage, steps_per_epoch", [
    ({"at_epoch": 30}, None), ({"at_epoch": 6}, 4), ({"at_step": 24}, 4), ({"at_step": 100}, 10)])
def test_a_stage_after_the_schedule_ended_is_refused(stage, steps_per_epoch, tmp_path, capsys):
    recipe = {**COSINE6, "stages": [{**stage, "preset": "all", "name": "late"}]}
    with pytest.raises(SpecError, match="stage 'late': starts at .* when the cosine lr schedule has ended"):
        tunespec.StageRunner(recipe, steps_per_epoch)
    with pytest.raises(SpecError, match="has ended"):
        lr_timeline(recipe, 40, steps_per_epoch or 1)
    path = tmp_path / "r.json"
    path.write_text(__import__("json").dumps(recipe))
    assert main(["lr-plot", str(path), "--epochs", "40", "--steps-per-epoch", str(steps_per_epoch or 1)]) == 2
    assert "has ended" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [{"restart": True}, {"schedule": {"type": "cosine", "total_steps": 3}},
                                   {"at_epoch": 5}])
def test_a_stage_that_restarts_or_starts_in_time_is_fine(extra):
    stage = {"at_epoch": 30, "preset": "all", **extra}
    tunespec.StageRunner({**COSINE6, "stages": [stage]}, 4)


def test_a_stage_after_a_stage_schedule_ended_is_refused():
    recipe = {**COSINE6, "stages": [{"at_epoch": 2, "preset": "4+", "schedule": {"type": "cosine", "total_steps": 2,
                                                                                   "unit": "epoch"}},
                                    {"at_epoch": 4, "preset": "all", "name": "late"}]}
    with pytest.raises(SpecError, match="stage 'late'"):
        tunespec.StageRunner(recipe, 3)


# --- the training loop's silent no-op -----------------------------------------------------------
RECIPE = {"train": [HEAD], "freeze": [".*"], "optimizer": {"name": "sgd", "lr": 0.02},
          "schedule": {"type": "cosine", "total_steps": 20}, "stages": [{"at_epoch": 3, "train": [".*"]}]}


def train(h, net, opt, runner, steps, step_scheduler):
    for x, y in batches(steps, 8, seed=5):
        h.step(net, opt, x.astype(np.float32), y)
        if step_scheduler:
            runner.lr_scheduler.step()


def test_a_torch_loop_that_never_steps_the_lr_scheduler_is_an_error():
    needs("torch")
    h = HARNESSES["torch"]()
    runner = tunespec.StageRunner(RECIPE)
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    net, opt = runner.step(0, net, opt)  # no training yet: nothing to say
    train(h, net, opt, runner, 2, step_scheduler=False)
    lrs = [g["lr"] for g in opt.param_groups]
    with pytest.raises(SpecError, match=r"lr scheduler did not advance .*runner.lr_scheduler.step\(\)"):
        runner.step(1, net, opt)
    assert [g["lr"] for g in opt.param_groups] == lrs and runner.index == 0
    train(h, net, opt, runner, 2, step_scheduler=True)
    net, opt = runner.step(1, net, opt)  # stepped: fine


def test_under_strict_false_it_is_a_warning():
    needs("torch")
    h = HARNESSES["torch"]()
    runner = tunespec.StageRunner({**RECIPE, "strict": False})
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    net, opt = runner.step(0, net, opt)
    train(h, net, opt, runner, 2, step_scheduler=False)
    with pytest.warns(UserWarning, match="lr scheduler did not advance"):
        runner.step(1, net, opt)
    train(h, net, opt, runner, 1, step_scheduler=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.step(2, net, opt)


def test_gluon_steps_its_own_lr_scheduler_so_the_mistake_cannot_happen():
    needs("mxnet")
    h = HARNESSES["mxnet"]()
    runner = tunespec.StageRunner(RECIPE)
    net, opt = runner.start(h.small_cnn(dtype="float32"))
    assert h.backend.lr_state(opt, runner.lr_scheduler).optimizer_steps is None
    train(h, net, opt, runner, 5, step_scheduler=False)  # the Trainer asks its scheduler each update
    assert opt._optimizer.num_update == 5 and opt.learning_rate < 0.02
    runner.step(0, net, opt)


@pytest.mark.parametrize("state", [
    {"ramps": {"1": "3"}, "lr_offset": 0}, {"ramps": {"1": -1}}, {"ramps": {"7": 0}}, {"ramps": {"0": 0}},
    {"ramps": {"x": 0}}, {"ramps": [1]}, {"lr_offset": True}, {"lr_offset": 2.5}, {"lr_offset": -3},
    {"ramps": {"1": 10**30}}])
def test_a_checkpoints_lr_state_is_validated_and_a_refusal_changes_nothing(state):
    runner = tunespec.StageRunner({"preset": "heads", "optimizer": {"lr": 0.1}, "schedule": {"type": "constant"},
                                   "stages": [{"at_epoch": 1, "preset": "all", "ramp": {"start": 0.1, "growth": 2.0}}]})
    runner.load_lr_state({"ramps": {"1": 2}, "lr_offset": 5, "last_epoch": 3})
    before = runner.lrs.copy()
    with pytest.raises(SpecError, match="resume: the checkpoint's ramp"):
        runner.load_lr_state(state)
    assert runner.lrs == before and runner.state_dict()["ramps"] == {"1": 2}
