"""All or nothing, and no silent wrong state (issue 11), in torch and Gluon.

Every refused call is made inside ``pytest.raises(SpecError)`` (or the injected error) between two
``state_of`` snapshots of weights, trainability, multipliers, norm modes, optimizer groups and
state, lr scheduler and stage schedule; ``assert_unchanged`` names the first difference.
Failures the checks cannot see coming are injected into the backend (monkeypatch) after earlier
parts of the call have changed things, so the rollback itself is what is tested.
"""

from __future__ import annotations

import threading

import pytest

import tunespec
from tunespec.recipe import validate
from tunespec.framework_facts import framework_options, semantics_names
from frameworks import HARNESSES, batches, needs, np  # np: None without a framework, whose tests skip
from snapshot import assert_unchanged, state_of
from tunespec import SpecError

HEAD = {"freeze": [r"[0-4]\..*"]}  # small_cnn: conv 0, bn 1, conv 3, bn 4 frozen; head 8 trains
OPT = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1.0e-4}
SCHED = {"type": "step", "step_size": 3, "gamma": 0.5}
UNFREEZE = {"freeze": [r"[0-2]\..*"], "lr_factor": 0.1}  # stage 1: conv 3 and bn 4 join


def recipe(*stages, **extra):
    out = {**HEAD, "optimizer": dict(OPT), "schedule": dict(SCHED), **extra}
    if stages:
        out["stages"] = list(stages)
    return out


class Boom(RuntimeError):
    """An injected failure, after part of a call already changed things."""


def boom_after(original):
    """A backend call that does its work, then fails: the caller must undo that work too."""
    def call(*args, **kwargs):
        original(*args, **kwargs)
        raise Boom("injected")
    return call


def train_epoch(h, net, opt, schedule, seed=0):
    for x, y in batches(2, 8, seed=seed):
        h.step(net, opt, x.astype(np.float32), y)
        if h.name == "torch" and schedule is not None and schedule.lr_scheduler is not None:
            schedule.lr_scheduler.step()


def started(h, rec):
    net = h.small_cnn(dtype="float32")
    schedule = tunespec.Schedule(rec)
    net, opt = schedule.start(net)
    train_epoch(h, net, opt, schedule)  # momentum state exists: rollback must keep it
    return net, opt, schedule


def snap(net, opt=None, schedule=None):
    return state_of(net, opt, schedule, None if schedule is None else schedule.lr_scheduler)


def trainable_names(h, net):
    return sorted(t.canonical for t in h.backend.listing(net).params if t.trainable)


def held_names(h, net, opt):
    held = {id(p) for p in h.backend.optimizer_handles(opt)}
    return sorted(t.canonical for t in h.backend.listing(net).params if id(t.handle) in held)


# --- wrong types -------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [None, "resnet18", 42, object()])
def test_apply_refuses_a_non_model(model):
    with pytest.raises(SpecError):
        tunespec.apply(model, HEAD)


@pytest.mark.parametrize("kwargs", [{"spec": 42}, {"spec": None}, {"spec": [1, 2]}, {"backend": "tensorflow"},
                                    {"backend": ["torch"]}, {"strict": "yes"}, {"strict": 1}])
def test_apply_refuses_wrong_types_and_changes_nothing(h, kwargs):
    net = h.small_cnn()
    before = snap(net)
    with pytest.raises(SpecError):
        tunespec.apply(net, **{"spec": HEAD, **kwargs})
    assert_unchanged(before, snap(net))


def test_apply_rolls_back_a_failure_after_settings_changed(h, monkeypatch):
    net = h.small_cnn()
    before = snap(net)
    monkeypatch.setattr(h.backend, "tensor_bytes", lambda handle: (_ for _ in ()).throw(Boom("checksum")))
    with pytest.raises(Boom):
        tunespec.apply(net, HEAD)
    assert_unchanged(before, snap(net))


# --- optimizer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"name": "sgdd"}, "unknown"),
    ({"name": 42}, "optimizer"),
    ({"momentun": 0.9}, "did you mean 'momentum'"),
    ({"lr": float("inf")}, "optimizer.lr"),
    ({"lr": float("nan")}, "optimizer.lr"),
    ({"lr": -0.1}, "optimizer.lr"),
    ({"lr": "0.1"}, "optimizer.lr"),
    ({"weight_decay": float("nan")}, "optimizer.weight_decay"),
    ({"semantics": "pytorch"}, "semantics"),
])
def test_optimizer_refusals_leave_the_model_untouched(h, kwargs, message):
    net = h.small_cnn()
    before = snap(net)
    args = {"name": "sgd", "lr": 0.01, **kwargs}
    with pytest.raises(SpecError, match=message):
        tunespec.optimizer(net, HEAD, **args)
    assert_unchanged(before, snap(net))
    with pytest.raises(SpecError, match=message):
        tunespec.plan(net, HEAD).optimizer(**args)
    assert_unchanged(before, snap(net))


def test_unknown_option_names_the_fix(h):
    net = h.small_cnn()
    with pytest.raises(SpecError, match=r"momentun.*unknown option.* sgd \(did you mean 'momentum'\?\)"):
        tunespec.optimizer(net, {**HEAD, "optimizer": {**OPT, "momentun": 0.9}})


def test_optimizer_build_failure_undoes_its_apply(h, monkeypatch):
    net = h.small_cnn()
    before = snap(net)
    monkeypatch.setattr(h.backend, "build_optimizer", lambda *a, **k: (_ for _ in ()).throw(Boom("build")))
    with pytest.raises(Boom):
        tunespec.optimizer(net, recipe())
    assert_unchanged(before, snap(net))
    with pytest.raises(Boom):
        tunespec.plan(net, HEAD).optimizer("sgd", lr=0.01)
    assert_unchanged(before, snap(net))


def test_optimizer_after_another_plan_reapplies_its_spec(h):
    net = h.small_cnn()
    a = tunespec.apply(net, HEAD)
    tunespec.plan(net, {"freeze": [r"8\..*"]}).apply()  # B: not recorded by tunespec.apply
    opt = tunespec.optimizer(net, HEAD, "sgd", lr=0.01)
    expected = sorted(d.name for d in a.trainable)
    assert expected == ["8.bias", "8.weight"]
    assert held_names(h, net, opt) == expected
    assert trainable_names(h, net) == expected


def test_optimizer_after_a_hand_made_change_reapplies_its_spec(h):
    net = h.small_cnn()
    tunespec.apply(net, HEAD)
    head = next(t.handle for t in h.backend.listing(net).params if t.canonical == "8.weight")
    h.backend.set_param(head, False, 1.0, 1.0)  # frozen by hand after apply
    opt = tunespec.optimizer(net, HEAD, "sgd", lr=0.01)
    assert held_names(h, net, opt) == ["8.bias", "8.weight"] == trainable_names(h, net)


# --- restore and norm modes ----------------------------------------------------------------------

def test_torch_restore_after_eval_leaves_an_eval_model():
    needs("torch")
    h = HARNESSES["torch"]()
    net = h.small_cnn()
    net.train()
    plan = tunespec.apply(net, {"bn": "freeze"})
    net.eval()
    plan.restore()
    assert not any(m.training for m in net.modules())
    plan = tunespec.apply(net, {"bn": "freeze"})
    net.train()
    plan.restore()
    assert all(m.training for m in net.modules())
    assert not any(h.backend.norm_stats_frozen(m) for m in net.modules())


def test_gluon_restore_brings_back_the_exact_flags():
    needs("mxnet")
    h = HARNESSES["mxnet"]()
    net = h.small_cnn()
    net[1]._kwargs["use_global_stats"] = True  # the user's own setting before apply
    before = snap(net)
    plan = tunespec.apply(net, {"bn": "freeze"})
    assert net[4]._kwargs["use_global_stats"] is True
    plan.restore()
    assert net[1]._kwargs["use_global_stats"] is True and net[4]._kwargs["use_global_stats"] is False
    assert_unchanged(before, snap(net))


# --- Schedule.start ------------------------------------------------------------------------------

@pytest.mark.parametrize("rec", [
    {**HEAD},  # no optimizer section
    {**HEAD, "optimizer": {"name": "sgd"}},  # no lr
    {**HEAD, "optimizer": {**OPT, "momentun": 0.9}},
    {**HEAD, "optimizer": {**OPT, "name": "nosuch"}},
    {**HEAD, "optimizer": OPT, "schedule": {**SCHED, "unit": "epoch"}},  # no steps_per_epoch
    {"freeze": [r"nosuch\..*"], "optimizer": OPT},
])
def test_start_refusals_change_nothing(h, rec):
    net = h.small_cnn()
    before = snap(net)
    with pytest.raises(SpecError):
        tunespec.Schedule(rec).start(net)
    assert_unchanged(before, snap(net))


def test_start_refuses_an_optimizer_that_holds_frozen_parameters(h):
    net = h.small_cnn()
    opt = tunespec.optimizer(net, {"freeze": []}, "sgd", lr=0.01)  # everything trainable
    schedule = tunespec.Schedule(recipe())
    before = state_of(net, opt, schedule)
    with pytest.raises(SpecError, match="frozen"):
        schedule.start(net, optimizer=opt)
    assert_unchanged(before, state_of(net, opt, schedule))


def test_start_rolls_back_when_the_lr_schedule_fails(h, monkeypatch):
    net = h.small_cnn(dtype="float32")
    opt = tunespec.optimizer(net, HEAD, "sgd", lr=0.01, momentum=0.9)
    train_epoch(h, net, opt, None)
    tunespec.plan(net, {"freeze": []}).apply()  # the model is not in stage 0's state now
    schedule = tunespec.Schedule(recipe())
    before = state_of(net, None, schedule)
    monkeypatch.setattr(h.backend, "attach_schedule", boom_after(h.backend.attach_schedule))
    with pytest.raises(Boom):
        schedule.start(net)  # applies stage 0, builds its optimizer, then fails
    assert_unchanged(before, state_of(net, None, schedule))
    tunespec.apply(net, HEAD)
    before = state_of(net, opt, schedule)
    with pytest.raises(Boom):
        schedule.start(net, optimizer=opt)  # the given optimizer's groups get the schedule's lr
    assert_unchanged(before, state_of(net, opt, schedule))


def test_start_twice_after_a_stage_change_is_refused(h):
    net, opt, schedule = started(h, recipe({"at_epoch": 1, **UNFREEZE}))
    net, opt = schedule.advance(net, opt)
    before = snap(net, opt, schedule)
    with pytest.raises(SpecError, match="already started"):
        schedule.start(net)
    with pytest.raises(SpecError, match="already started"):
        schedule.start(h.small_cnn())
    assert_unchanged(before, snap(net, opt, schedule))


# --- Schedule.step / advance: wrong order and wrong arguments --------------------------------------

def test_step_and_advance_before_start(h):
    net = h.small_cnn()
    opt = tunespec.optimizer(net, HEAD, "sgd", lr=0.01)
    schedule = tunespec.Schedule(recipe({"at_epoch": 1, **UNFREEZE}))
    before = state_of(net, opt, schedule)
    with pytest.raises(SpecError, match="start"):
        schedule.step(0, net, opt)
    with pytest.raises(SpecError, match="start"):
        schedule.advance(net, opt)
    assert_unchanged(before, state_of(net, opt, schedule))


def test_advance_past_the_last_stage(h):
    net, opt, schedule = started(h, recipe({"at_epoch": 1, **UNFREEZE}))
    net, opt = schedule.advance(net, opt)
    before = snap(net, opt, schedule)
    with pytest.raises(SpecError, match="no later stage"):
        schedule.advance(net, opt)
    assert_unchanged(before, snap(net, opt, schedule))


@pytest.mark.parametrize("kwargs", [
    {"epoch": -1}, {"epoch": "1"}, {"epoch": True}, {"epoch": 1.5},
    {"metric": "low"}, {"metric": float("nan")}, {"metric": float("inf")}, {"metric": [1.0]},
    {"step": -3}, {"step": "10"},
    {"optimizer": "sgd"}, {"model": None}, {"lr_scheduler": "junk"},
])
def test_step_refuses_wrong_arguments_and_records_nothing(h, kwargs):
    net, opt, schedule = started(h, recipe({"on_plateau": 1, **UNFREEZE}))
    schedule.step(0, net, opt, metric=1.0)
    before = snap(net, opt, schedule)
    args = {"epoch": 1, "model": net, "optimizer": opt, "metric": 2.0, **kwargs}
    with pytest.raises(SpecError):
        schedule.step(args.pop("epoch"), args.pop("model"), args.pop("optimizer"), **args)
    assert_unchanged(before, snap(net, opt, schedule))


def test_at_step_stage_without_step_is_an_error(h):
    net, opt, schedule = started(h, recipe({"at_step": 10, **UNFREEZE}))
    before = snap(net, opt, schedule)
    with pytest.raises(SpecError, match="step="):
        schedule.step(0, net, opt, metric=1.0)
    assert_unchanged(before, snap(net, opt, schedule))
    net, opt = schedule.step(0, net, opt, step=9)
    assert schedule.index == 0
    net, opt = schedule.step(0, net, opt, step=10)
    assert schedule.index == 1 and "3.weight" in held_names(h, net, opt)


def test_at_epoch_starts_at_the_beginning_of_that_epoch(h):
    net, opt, schedule = started(h, recipe({"at_epoch": 2, **UNFREEZE}))
    net, opt = schedule.step(0, net, opt)
    assert schedule.index == 0
    net, opt = schedule.step(1, net, opt)  # epoch 2 is the next one: it runs in the new stage
    assert schedule.index == 1 and schedule.history == [(1, schedule.stages[1].name)]


def test_skipped_epochs_start_every_due_stage_in_order(h):
    later = {"at_epoch": 4, "freeze": [], "name": "all"}
    net, opt, schedule = started(h, recipe({"at_epoch": 2, **UNFREEZE, "name": "mid"}, later))
    net, opt = schedule.step(5, net, opt)
    assert schedule.index == 2 and [n for _, n in schedule.history] == ["mid", "all"]
    assert held_names(h, net, opt) == trainable_names(h, net) == sorted(
        t.canonical for t in h.backend.listing(net).params)


# --- Schedule.step / advance: failures after changes began ---------------------------------------------

def test_failing_stage_plan_leaves_the_best_weights_unwritten(h):
    """The issue's case: restore_best used to write the best weights, then the plan failed."""
    bad = {"at_epoch": 2, "freeze": [r"nosuch\..*"], "restore_best": True}
    net, opt, schedule = started(h, recipe(bad))
    schedule.step(0, net, opt, metric=1.0)  # the best epoch: its weights are kept
    train_epoch(h, net, opt, schedule, seed=1)  # the weights move on
    before = snap(net, opt, schedule)
    with pytest.raises(SpecError, match="nosuch"):
        schedule.step(1, net, opt, metric=2.0)
    assert_unchanged(before, snap(net, opt, schedule))


def test_second_due_stage_failing_undoes_the_first(h):
    good = {"at_epoch": 2, **UNFREEZE, "restore_best": True}
    bad = {"at_epoch": 3, "freeze": [r"nosuch\..*"]}
    net, opt, schedule = started(h, recipe(good, bad))
    schedule.step(0, net, opt, metric=1.0)
    train_epoch(h, net, opt, schedule, seed=1)
    before = snap(net, opt, schedule)
    with pytest.raises(SpecError, match="nosuch"):
        schedule.step(4, net, opt, metric=2.0)
    assert_unchanged(before, snap(net, opt, schedule))


@pytest.mark.parametrize("where", ["restage_optimizer", "rewrap_check"])
def test_failure_inside_a_stage_change_rolls_everything_back(h, monkeypatch, where):
    net, opt, schedule = started(h, recipe({"at_epoch": 2, **UNFREEZE, "restore_best": True}))
    schedule.step(0, net, opt, metric=1.0)
    train_epoch(h, net, opt, schedule, seed=1)
    before = snap(net, opt, schedule)
    if where == "restage_optimizer":
        monkeypatch.setattr(h.backend, "restage_optimizer", boom_after(h.backend.restage_optimizer))
    else:  # the very last step of a stage change
        # a backend without DistributedWrapping gets the capability here, so that it fails too
        monkeypatch.setattr(h.backend, "is_distributed_wrapper",
                            lambda model: (_ for _ in ()).throw(Boom("wrapper")), raising=False)
        monkeypatch.setattr(h.backend, "rewrap", getattr(h.backend, "rewrap", lambda model: model),
                            raising=False)
    with pytest.raises(Boom):
        schedule.step(1, net, opt, metric=2.0)  # best weights written, plan applied, optimizer regrouped
    assert_unchanged(before, snap(net, opt, schedule))
    with pytest.raises(Boom):
        schedule.advance(net, opt)
    assert_unchanged(before, snap(net, opt, schedule))
    monkeypatch.undo()
    net, opt = schedule.step(1, net, opt, metric=2.0)  # and the same call then works
    assert schedule.index == 1 and "3.weight" in held_names(h, net, opt)


# --- initialize, cache_frozen, scheduler -----------------------------------------------------------

INIT = {"init": {"seed": 1, "rules": [{"match": r"8\.weight", "method": "normal", "std": 0.01},
                                      {"match": r"8\.bias", "method": "zeros"}]}}


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": "1"}, {"strict": "yes"}, {"backend": 3},
                                    {"init": {"init": {"rules": [{"match": r"nosuch", "method": "zeros"}]}}},
                                    {"init": {"freeze": []}}, {"init": 42}])
def test_initialize_refusals_change_nothing(h, kwargs):
    net = h.small_cnn()
    before = snap(net)
    args = {"init": INIT, **kwargs}
    with pytest.raises(SpecError):
        tunespec.initialize(net, args.pop("init"), **args)
    assert_unchanged(before, snap(net))


def test_initialize_write_failure_puts_back_what_it_wrote(h, monkeypatch):
    net = h.small_cnn()
    before = snap(net)
    write, calls = h.backend.write, []

    def failing_second(handle, array):
        calls.append(1)
        if len(calls) == 2:
            raise Boom("disk")
        write(handle, array)

    monkeypatch.setattr(h.backend, "write", failing_second)
    with pytest.raises(Boom):
        tunespec.initialize(net, INIT)
    assert_unchanged(before, snap(net))


@pytest.mark.parametrize("spec, split", [({"freeze": [r"0\..*"]}, "4"), (HEAD, 7), (HEAD, ""), (HEAD, "nosuch")])
def test_cache_frozen_refusals_change_nothing(h, spec, split):
    net = h.small_cnn()
    before = snap(net)
    with pytest.raises(SpecError):
        tunespec.cache_frozen(net, spec, split)
    assert_unchanged(before, snap(net))


@pytest.mark.parametrize("schedule, steps", [({"type": "warp"}, None), (SCHED, "ten"), (SCHED, 0),
                                             ({**SCHED, "unit": "epoch"}, None), (HEAD, None)])
def test_scheduler_refusals_leave_the_optimizer_untouched(h, schedule, steps):
    net = h.small_cnn()
    opt = tunespec.optimizer(net, HEAD, "sgd", lr=0.01, momentum=0.9)
    before = state_of(net, opt)
    with pytest.raises(SpecError):
        tunespec.scheduler(opt, schedule, steps)
    assert_unchanged(before, state_of(net, opt))
    with pytest.raises(SpecError):
        tunespec.scheduler("not an optimizer", SCHED)


# --- threads ------------------------------------------------------------------------------------

def test_two_threads_applying_different_plans_end_with_one_fully_applied(h):
    net = h.small_cnn()
    specs = [HEAD, {"freeze": [r"[5-8]\..*"], "bn": "freeze"}]
    plans = [tunespec.plan(net, s) for s in specs]
    errors: list[BaseException] = []

    def work(plan):
        try:
            for _ in range(15):
                plan.apply()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    live = trainable_names(h, net)
    expected = [sorted(d.name for d in p.trainable) for p in plans]
    assert live in expected
    winner = plans[expected.index(live)]
    frozen_norms = [h.backend.norm_stats_frozen(n.norm.handle) for n in winner.norms]
    assert frozen_norms == [n.frozen for n in winner.norms]
    assert winner.is_live()


def test_stage_change_on_another_model_is_refused(h):
    net, opt, schedule = started(h, recipe({"at_epoch": 1, **UNFREEZE}))
    other = h.small_cnn(dtype="float32")
    before, before_other = snap(net, opt, schedule), snap(other)
    with pytest.raises(SpecError, match="does not hold the parameters"):
        schedule.advance(other, opt)
    with pytest.raises(SpecError, match="does not hold the parameters"):
        schedule.step(0, other, opt)
    assert_unchanged(before, snap(net, opt, schedule))
    assert_unchanged(before_other, snap(other))


def test_plan_calls_refuse_wrong_types(h):
    net = h.small_cnn()
    plan = tunespec.plan(net, HEAD)
    before = snap(net)
    for call in (lambda: plan.check("sgd"), lambda: plan.param_groups(lr="0.1"),
                 lambda: plan.param_groups(lr=0.1, weight_decay=float("inf")),
                 lambda: tunespec.optimizer(None, HEAD, "sgd", lr=0.1),
                 lambda: tunespec.optimizer(net, HEAD, "sgd", lr=0.1, backend=object())):
        with pytest.raises(SpecError):
            call()
    assert_unchanged(before, snap(net))


# --- property: any sequence of stage calls is a valid step or a SpecError that changes nothing ------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

STAGE_SPECS = [UNFREEZE, {"freeze": []}, {"freeze": [r"nosuch\..*"]}, {"freeze": [r"[0-1]\..*"], "bn": "freeze"}]
stage_st = st.fixed_dictionaries({
    "trigger": st.sampled_from(["at_epoch", "at_step", "on_plateau"]), "at": st.integers(1, 4),
    "spec": st.sampled_from(range(len(STAGE_SPECS))), "restore_best": st.booleans()})
call_st = st.fixed_dictionaries({
    "epoch": st.one_of(st.integers(0, 6), st.sampled_from([-1, "2", 1.5])),
    "metric": st.one_of(st.none(), st.floats(0, 3), st.sampled_from([float("nan"), "x"])),
    "step": st.one_of(st.none(), st.integers(0, 6), st.just(-2)),
    "kind": st.sampled_from(["step", "step", "step", "advance"])})


def _stage(d):
    return {d["trigger"]: d["at"], **STAGE_SPECS[d["spec"]], "restore_best": d["restore_best"]}


@pytest.mark.parametrize("framework", ["torch", "mxnet"])
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(stages=st.lists(stage_st, min_size=1, max_size=3), calls=st.lists(call_st, min_size=1, max_size=5))
def test_random_stage_runs_change_state_only_on_success(framework, stages, calls):
    needs(framework)
    h = HARNESSES[framework]()
    try:
        schedule = tunespec.Schedule(recipe(*map(_stage, stages)))
    except SpecError:
        return  # a recipe the parser refuses (e.g. decreasing triggers) never reaches a model
    net = h.small_cnn(dtype="float32")
    net, opt = schedule.start(net)
    for i, call in enumerate(calls):
        train_epoch(h, net, opt, schedule, seed=i)
        before = snap(net, opt, schedule)
        try:
            if call["kind"] == "advance":
                net, opt = schedule.advance(net, opt)
            else:
                net, opt = schedule.step(call["epoch"], net, opt, metric=call["metric"], step=call["step"])
        except SpecError:
            assert_unchanged(before, snap(net, opt, schedule))
            continue
        trainable = trainable_names(h, net)
        assert trainable == sorted(d.name for d in schedule.plan.trainable)
        held = held_names(h, net, opt)
        assert set(trainable) <= set(held) and (h.name == "mxnet" or held == trainable)


VALID_OPTIONS = {
    "torch": [("sgd", {"momentum": 0.9, "nesterov": True}, "torch"), ("adam", {"betas": (0.9, 0.99)}, "torch"),
              ("adamw", {"eps": 1e-6, "amsgrad": True}, "torch")],
    "mxnet": [("sgd", {"momentum": 0.9, "nesterov": True}, "torch"), ("sgd", {"lazy_update": False}, "native"),
              ("adam", {"beta1": 0.8, "clip_gradient": 1.0}, "torch"), ("adamw", {"epsilon": 1e-6}, "native"),
              ("sgd", {"momentum": 0.9, "update_on_kvstore": False}, "torch")],
}


def test_every_real_option_is_accepted(h):
    for name, options, semantics in VALID_OPTIONS[h.name]:
        net = h.small_cnn()
        opt = tunespec.optimizer(net, HEAD, name, lr=0.01, semantics=semantics, **options)
        assert held_names(h, net, opt) == ["8.bias", "8.weight"]


def test_failed_stage_that_freezes_trained_tensors_gives_back_their_gradients(h, monkeypatch):
    """Freezing drops a torch gradient; rolling the stage back must bring it back too."""
    refreeze = {"at_epoch": 1, "freeze": [r"[0-2]\..*", r"8\..*"]}  # the head freezes, conv 3 joins
    net, opt, schedule = started(h, recipe(refreeze))
    before = snap(net, opt, schedule)
    if h.name == "torch":
        assert any(p.grad is not None for p in net[8].parameters())
    monkeypatch.setattr(h.backend, "restage_optimizer", boom_after(h.backend.restage_optimizer))
    with pytest.raises(Boom):
        schedule.step(0, net, opt)
    assert_unchanged(before, snap(net, opt, schedule))
    monkeypatch.undo()
    net, opt = schedule.step(0, net, opt)
    assert trainable_names(h, net) == ["3.bias", "3.weight", "4.bias", "4.weight"]


def test_the_recipe_option_table_covers_every_option_the_backend_builds_with(h):
    """Options are checked against the update rules' tables plus the frameworks' own options when
    an optimizer is made; an option the framework takes but the tables lack would refuse a valid recipe."""
    tables = validate.optimizer_tables(framework_options())
    for semantics in semantics_names():
        for name, table in tables.items():
            accepted = h.backend.optimizer_options(name, semantics) - {"lr", "weight_decay"}
            assert accepted <= set(table), (name, semantics, sorted(accepted - set(table)))
