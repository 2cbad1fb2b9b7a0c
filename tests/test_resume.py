"""Saving and resuming a staged run: the resumed run ends with the uninterrupted run's weights."""

from __future__ import annotations

import pytest

import tunespec
import tunespec.lifecycle.checkpoint
import tunespec.lifecycle.run_files
from frameworks import HARNESSES, batches, needs, np  # np: None without a framework, whose tests skip
from tunespec import SpecError

RECIPE = {
    "preset": "heads",
    "lr_mult": {"@heads": 10},
    "optimizer": {"name": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 1.0e-4},
    "schedule": {"type": "multistep", "milestones": [7], "gamma": 0.5},
    "stages": [{"at_epoch": 2, "preset": "4+", "lr_mult": {"@heads": 10}, "lr_factor": 0.1}],
}


def fresh(h, seed):
    net = h.resnet18(classes=5, dtype="float64")
    rng = np.random.default_rng(seed)
    h.load_arrays(net, {k: rng.standard_normal(v.shape) * 0.05 if not k.endswith("running_var") else v
                        for k, v in h.arrays(net).items() if v.dtype == np.float64})
    return net


def epoch(h, net, opt, schedule, e):
    for x, y in batches(2, 32, seed=100 + e):
        h.step(net, opt, x, y)
        if h.name == "torch":
            schedule.lr_scheduler.step()
    metric = float(np.sin(e))  # any metric sequence: it only moves the best-epoch bookkeeping
    return schedule.step(e, net, opt, metric=metric)


def test_resume_after_an_unfreeze_stage_reproduces_the_uninterrupted_run(h, tmp_path):
    path = tmp_path / ("run.pt" if h.name == "torch" else "run.params")
    schedule = tunespec.StageRunner(RECIPE)
    net, opt = schedule.start(fresh(h, 0))
    for e in range(3):
        net, opt = epoch(h, net, opt, schedule, e)
    assert schedule.index == 1
    tunespec.save_checkpoint(path, net, opt, schedule, epoch=2, extra={"seen": 12})
    for e in range(3, 5):
        net, opt = epoch(h, net, opt, schedule, e)
    uninterrupted = h.arrays(net)

    schedule2 = tunespec.StageRunner(RECIPE)
    net2, opt2, meta = tunespec.resume(path, fresh(h, 1), schedule2)
    assert meta == {"epoch": 2, "extra": {"seen": 12}} and schedule2.index == 1
    assert schedule2.history == schedule.history and schedule2.best == pytest.approx(np.sin(2))
    if h.name == "torch":
        assert [len(g["params"]) for g in opt2.param_groups] == [len(g["params"]) for g in opt.param_groups]
    for e in range(3, 5):
        net2, opt2 = epoch(h, net2, opt2, schedule2, e)
    schedule2.plan.verify().raise_if_changed()
    resumed = h.arrays(net2)
    different = [n for n in uninterrupted if not np.array_equal(uninterrupted[n], resumed[n])]
    assert not different, different[:5]


def test_a_crash_mid_save_leaves_the_previous_checkpoint(h, tmp_path, monkeypatch):
    path = tmp_path / ("run.pt" if h.name == "torch" else "run.params")
    schedule = tunespec.StageRunner(RECIPE)
    net, opt = schedule.start(fresh(h, 0))
    net, opt = epoch(h, net, opt, schedule, 0)
    tunespec.save_checkpoint(path, net, opt, schedule, epoch=0)
    good = path.read_bytes()
    net, opt = epoch(h, net, opt, schedule, 1)

    def crash(tmp, *args):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(tunespec.lifecycle.checkpoint, "write_run_file", crash)  # the one writer of run files
    with pytest.raises(KeyboardInterrupt):
        tunespec.save_checkpoint(path, net, opt, schedule, epoch=1)
    monkeypatch.undo()
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    _, _, meta = tunespec.resume(path, fresh(h, 1), tunespec.StageRunner(RECIPE))
    assert meta["epoch"] == 0


def test_resume_refuses_another_recipe(tmp_path):
    needs("torch")
    h = HARNESSES["torch"]()
    path = tmp_path / "run.pt"
    schedule = tunespec.StageRunner(RECIPE)
    net, opt = schedule.start(fresh(h, 0))
    tunespec.save_checkpoint(path, net, opt, schedule)
    other = {**RECIPE, "preset": "5+"}
    with pytest.raises(SpecError, match="not the spec the run was saved with"):
        tunespec.resume(path, fresh(h, 1), tunespec.StageRunner(other))
    with pytest.raises(SpecError, match="not a tunespec run checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        tunespec.resume(tmp_path / "junk.pt", fresh(h, 1), tunespec.StageRunner(RECIPE))
