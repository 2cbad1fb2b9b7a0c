"""Property-based tests of the lr model: random schedule / ramp / stage documents either are refused
with a SpecError when the recipe is read, or give a finite lr at every step, each lr call doing
bounded work whatever the step number."""

from __future__ import annotations

import math

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tunespec  # noqa: E402
from tunespec import SpecError  # noqa: E402
from tunespec.recipe import ramps as ramps_module  # noqa: E402
from tunespec.recipe import schedule as recipe_module  # noqa: E402
from tunespec.lifecycle.timeline import lr_timeline  # noqa: E402

# The worst case of one onecycle position from scratch: ~60 binades x 3 additions, with margin.
ONECYCLE_BOUND = 400
FAR = (10, 10**6, 10**9, 10**12 - 1)

numbers = st.one_of(st.floats(min_value=0.0, max_value=2e6, allow_nan=False), st.sampled_from(
    [0.0, 0.1, 0.5, 1.0, 1.0000001, 2.0, 10.0, 1e6, 1e6 + 1]), st.integers(0, 10**7))
counts = st.one_of(st.integers(1, 12), st.sampled_from([1, 10**6, 10**12, 10**12 + 1, 0]))

units = {"unit": st.sampled_from(["step", "epoch"])}
schedules = st.one_of(
    st.fixed_dictionaries({"type": st.just("constant")}, optional={**units, "warmup_steps": st.integers(0, 5)}),
    st.fixed_dictionaries({"type": st.just("step"), "step_size": counts}, optional={**units, "gamma": numbers}),
    st.fixed_dictionaries({"type": st.just("multistep"),
                           "milestones": st.lists(st.integers(1, 40), min_size=1, max_size=30, unique=True).map(sorted)},
                          optional={**units, "gamma": numbers, "warmup_steps": st.integers(0, 5)}),
    st.fixed_dictionaries({"type": st.just("cosine"), "total_steps": counts},
                          optional={**units, "min_factor": st.floats(0, 1), "gamma": numbers}),
    st.fixed_dictionaries({"type": st.just("onecycle"), "total_steps": counts},
                          optional={**units, "pct_start": st.floats(0.01, 0.99), "div": st.floats(1, 1e6),
                                    "div_final": st.floats(1, 1e12), "gamma": numbers}))
ramps = st.fixed_dictionaries(
    {"start": st.sampled_from([1e-6, 0.01, 0.1, 0.5, 2.0]), "growth": numbers},
    optional={"ceiling": st.sampled_from([0.5, 1.0, 10.0, 1e6]), "per": st.sampled_from(["epoch", "step"])})
stages = st.fixed_dictionaries(
    {"trigger": st.sampled_from(["at_epoch", "at_step"]), "at": st.integers(1, 12), "preset": st.just("all")},
    optional={"lr_factor": st.sampled_from([0.01, 0.5, 1.0, 1e6]), "ramp": ramps, "restart": st.booleans(),
              "schedule": schedules})


def _recipe(schedule, stage_list):
    later = []
    for s in sorted(stage_list, key=lambda s: s["at"]):
        s = dict(s)
        s[s.pop("trigger")] = s.pop("at")
        later.append(s)
    out = {"preset": "heads", "optimizer": {"name": "sgd", "lr": 1e6}}
    if schedule is not None:
        out["schedule"] = schedule
    if later:
        out["stages"] = later
    return out


def _work() -> int:
    return recipe_module.ACCUMULATE_WORK[0] + ramps_module.RAMP_WORK[0]


PROPERTY = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@PROPERTY
@given(st.one_of(st.none(), schedules), st.lists(stages, max_size=3), st.integers(1, 4))
def test_random_lr_documents_are_refused_when_read_or_finite_and_bounded(schedule, stage_list, per_epoch):
    recipe = _recipe(schedule, stage_list)
    try:
        runner = tunespec.StageRunner(recipe, per_epoch)
    except SpecError:
        return  # refused when read: the promise
    # every lr at every step of a short run is finite (lr 1e6 x factor 1e6 x ramp ceiling 1e6 ...)
    timeline = lr_timeline(recipe, 6, per_epoch)
    for series in timeline.series.values():
        assert all(v is None or (math.isfinite(v) and v >= 0) for v in series)
    # each call far into a run: finite, and bounded work that does not grow with the step
    scheduled = [s.schedule.in_steps(per_epoch) for s in runner.stages if s.schedule is not None]
    if runner.recipe.schedule is not None:
        scheduled.append(runner.recipe.schedule.in_steps(per_epoch))
    for sched in scheduled:
        for t in FAR:
            before = _work()
            assert math.isfinite(sched.factor(t))
            assert _work() - before <= ONECYCLE_BOUND
    for ramp in (s.ramp for s in runner.stages if s.ramp is not None):
        for k in FAR:
            before = _work()
            assert math.isfinite(ramp.lr(1e6, k)) and math.isfinite(ramp.ratio(k))
            assert _work() - before <= ramp.steps_to_ceiling() + 1  # the ramp's own bound, not k


@settings(max_examples=200, deadline=None, derandomize=True)
@given(schedules, st.integers(1, 5))
def test_a_schedule_read_alone_is_refused_or_finite_everywhere(schedule, per_epoch):
    try:
        sched = recipe_module.LRSchedule.from_dict(schedule).in_steps(per_epoch)
    except SpecError:
        return
    before = _work()
    values = [sched.factor(t) for t in (0, 1, 2, 7, *FAR)]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert _work() - before <= ONECYCLE_BOUND * len(values)
