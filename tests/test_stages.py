"""Staged unfreezing on a live model and optimizer, in torch and Gluon."""

from __future__ import annotations

import pytest

import tunespec
from frameworks import HARNESSES, batches, needs, np  # np: None without a framework, whose tests skip
from tunespec import SpecError

RECIPE = {
    "preset": "heads",
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1.0e-4},
    "schedule": {"type": "multistep", "milestones": [7], "gamma": 0.5},
    "stages": [{"at_epoch": 2, "preset": "4+", "lr_factor": 0.1}],
}


def run_epoch(h, net, opt, schedule, data):
    for x, y in data:
        h.step(net, opt, x.astype(np.float32), y)
        if h.name == "torch" and schedule.lr_scheduler is not None:
            schedule.lr_scheduler.step()


def changed(before, after, prefix):
    return [n for n in before if n.startswith(prefix) and not np.array_equal(before[n], after[n])]


def momentum(h, opt, net, name):
    """The optimizer's momentum buffer of one parameter, as an object (to check it survives)."""
    t = next(t for t in h.backend.listing(net).params if t.canonical == name)
    if h.name == "torch":
        return opt.state[t.handle]["momentum_buffer"]
    state = opt._updaters[0].states[opt._param2idx[t.handle.name]]
    return state[0] if isinstance(state, list) else state  # the fused SGD's [buffer, lr scale]


def test_unfreeze_stage_keeps_state_and_covers_new_parameters(h):
    net = h.resnet18(classes=5, dtype="float32")
    schedule = tunespec.StageRunner(RECIPE)
    net, opt = schedule.start(net)
    data = batches(2, 32, seed=1)
    w0 = h.arrays(net)
    run_epoch(h, net, opt, schedule, data)
    net, opt2 = schedule.step(0, net, opt)
    assert opt2 is opt and schedule.index == 0
    w1 = h.arrays(net)
    assert changed(w0, w1, "fc.") and not changed(w0, w1, "layer")
    fc_buffer = momentum(h, opt, net, "fc.weight")
    fc_buffer_values = fc_buffer.asnumpy().copy() if h.name == "mxnet" else fc_buffer.clone().numpy()
    run_epoch(h, net, opt, schedule, data)
    net, opt = schedule.step(1, net, opt)  # epoch 2 runs in stage '4+'
    assert schedule.index == 1 and schedule.stage.name == "4+" and schedule.history == [(1, "4+")]
    schedule.plan.verify().raise_if_changed()
    assert momentum(h, opt, net, "fc.weight") is fc_buffer  # the head's state is the same object
    w2 = h.arrays(net)
    run_epoch(h, net, opt, schedule, data)
    w3 = h.arrays(net)
    assert changed(w2, w3, "layer3.") and changed(w2, w3, "layer4.") and changed(w2, w3, "fc.")
    assert not changed(w2, w3, "layer1.") and not changed(w2, w3, "layer2.") and not changed(w2, w3, "conv1.")
    schedule.plan.verify().raise_if_changed()
    after = momentum(h, opt, net, "fc.weight")
    assert not np.array_equal(fc_buffer_values, after.asnumpy() if h.name == "mxnet" else after.numpy())
    if h.name == "torch":
        schedule.plan.check(opt)
        groups = opt.param_groups
        assert len(groups) == 2 and groups[1]["lr_factor"] == 0.1
        assert "layer3.0.conv1.weight" in groups[1]["param_names"]
        assert groups[1]["lr"] == pytest.approx(0.001) and groups[0]["lr"] == pytest.approx(0.01)
        run_epoch(h, net, opt, schedule, data)  # step 8 > milestone 7: both groups halve
        assert groups[1]["lr"] == pytest.approx(0.0005) and groups[0]["lr"] == pytest.approx(0.005)
    else:
        t = {t.canonical: t.handle for t in h.backend.listing(net).params}
        assert t["layer3.0.conv1.weight"].lr_mult == pytest.approx(0.1) and t["fc.weight"].lr_mult == 1
        assert opt._params[: 2] == [t["fc.weight"], t["fc.bias"]]  # old indices unchanged


def test_refreezing_removes_parameters_and_their_state(h):
    recipe = {**RECIPE, "preset": "4+", "stages": [{"at_epoch": 1, "preset": "heads"}]}
    net = h.resnet18(classes=5, dtype="float32")
    schedule = tunespec.StageRunner(recipe)
    net, opt = schedule.start(net)
    data = batches(2, 32, seed=2)
    run_epoch(h, net, opt, schedule, data)
    net, opt = schedule.step(0, net, opt)
    assert schedule.stage.name == "heads"
    w = h.arrays(net)
    run_epoch(h, net, opt, schedule, data)
    w2 = h.arrays(net)
    assert changed(w, w2, "fc.") and not changed(w, w2, "layer")
    schedule.plan.verify().raise_if_changed()
    if h.name == "torch":
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        assert held == {id(net.fc.weight), id(net.fc.bias)}
        assert set(map(id, opt.state)) == held


def test_plateau_stage_restores_the_best_epoch(h):
    recipe = {**RECIPE, "stages": {"mode": "min", "then": [
        {"on_plateau": 2, "preset": "all", "restore_best": True, "name": "everything"}]}}
    net = h.resnet18(classes=5, dtype="float32")
    schedule = tunespec.StageRunner(recipe)
    net, opt = schedule.start(net)
    data = batches(1, 32, seed=3)
    snapshots = []
    for epoch, metric in enumerate([1.0, 0.5, 0.7, 0.6]):
        run_epoch(h, net, opt, schedule, data)
        snapshots.append(h.arrays(net))
        net, opt = schedule.step(epoch, net, opt, metric=metric)
        assert schedule.index == (1 if epoch == 3 else 0)
    restored = h.arrays(net)
    assert not changed(snapshots[1], restored, "")  # epoch 1 had the best metric
    assert changed(snapshots[3], restored, "fc.")
    run_epoch(h, net, opt, schedule, data)
    assert changed(restored, h.arrays(net), "layer1.")  # the stage 'all' trains everything


def test_at_step_trigger_and_plain_torch_optimizer():
    torch = needs("torch")
    h = HARNESSES["torch"]()
    net = h.resnet18(classes=5, dtype="float32")
    schedule = tunespec.StageRunner({"preset": "heads", "stages": [{"at_step": 3, "preset": "5+"}]})
    opt = tunespec.optimizer(net, {"preset": "heads"}, "adam", lr=1e-3)
    net, opt = schedule.start(net, optimizer=opt)
    for step, (x, y) in enumerate(batches(4, 32, seed=4), start=1):
        h.step(net, opt, x.astype(np.float32), y)
        net, opt = schedule.step(0, net, opt, step=step)
        assert schedule.index == (1 if step >= 3 else 0)
    assert "exp_avg" in opt.state[net.layer4[0].conv1.weight]
    assert not net.layer3[0].conv1.weight.requires_grad and isinstance(opt, torch.optim.Adam)


@pytest.mark.parametrize("stages, fragment", [
    ([{"preset": "4+"}], "exactly one of at_epoch, at_step, on_plateau"),
    ([{"at_epoch": 2, "on_plateau": 1, "preset": "4+"}], "exactly one of"),
    ([{"at_epoch": 2}], "sets no spec"),
    ([{"at_epoch": 2, "preset": "4+", "lr_factr": 0.1}], "did you mean 'lr_factor'"),
    ([{"at_epoch": 2, "preset": "4+", "lr_factor": 0}], "lr_factor: expected a finite number > 0"),
    ([{"on_plateau": 0, "preset": "4+"}], "on_plateau: expected a positive integer"),
    ({"mode": "lowest", "then": [{"at_epoch": 1, "preset": "all"}]}, "use min"),
    ([{"at_epoch": 2, "freeze": ["x("]}], r"stages.then\[0\]: freeze\[0\]: invalid regex"),
])
def test_bad_stages(stages, fragment):
    with pytest.raises(SpecError, match=fragment):
        tunespec.StageRunner({"preset": "heads", "stages": stages})


def test_restore_best_needs_a_metric():
    needs("torch")
    h = HARNESSES["torch"]()
    net = h.resnet18(classes=5, dtype="float32")
    stages = [{"at_epoch": 1, "preset": "4+", "restore_best": True}]
    schedule = tunespec.StageRunner({**RECIPE, "stages": stages})
    net, opt = schedule.start(net)
    with pytest.raises(SpecError, match="pass metric="):
        schedule.step(0, net, opt)
