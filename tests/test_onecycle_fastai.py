"""onecycle and per-stage schedules against fastai's own fit_one_cycle and fine_tune (per step)."""

from __future__ import annotations

import pytest

from frameworks import needs

torch = needs("torch")
fastai = pytest.importorskip("fastai", reason="needs fastai: pip install -c constraints.txt 'tunespec[fastai]' "
                             "(see pyproject.toml: fastai installs with --no-deps)")
from fastai.callback.core import Callback  # noqa: E402
from fastai.callback.schedule import ParamScheduler, combined_cos  # noqa: E402
from fastai.test_utils import synth_learner  # noqa: E402

import tunespec  # noqa: E402
from tunespec.recipe.schedule import LRSchedule  # noqa: E402

BATCHES = 5  # synth_learner(n_trn=5): five batches per epoch


class RecordLR(Callback):
    """The lr fastai's ParamScheduler set for every training batch (the last param group's),
    over every fit (fine_tune runs two)."""

    order = ParamScheduler.order + 1

    def __init__(self):
        self.lrs = []

    def before_batch(self):
        if self.training:
            self.lrs.append(self.opt.hypers[-1]["lr"])


def fastai_lrs(run) -> list[float]:
    learn = synth_learner(n_trn=BATCHES, cbs=[record := RecordLR()])
    with learn.no_bar(), learn.no_logging():
        run(learn)
    assert len(learn.dls.train) == BATCHES
    return record.lrs


@pytest.mark.parametrize("epochs, options", [(3, {}), (2, {"pct_start": 0.3, "div": 5.0, "div_final": 1e4})])
def test_onecycle_factors_equal_fit_one_cycle(epochs, options):
    theirs = fastai_lrs(lambda learn: learn.fit_one_cycle(epochs, lr_max=1.0, **options))
    sched = LRSchedule.from_dict({"type": "onecycle", "total_steps": epochs, "unit": "epoch", **options})
    ours = [sched.in_steps(BATCHES).factor(t) for t in range(epochs * BATCHES)]
    assert ours == theirs  # float ==: lr_max 1.0, so fastai's lrs are the factors


def test_onecycle_matches_combined_cos_in_steps():
    sched = LRSchedule.from_dict({"type": "onecycle", "total_steps": 40, "pct_start": 0.25})
    curve = combined_cos(0.25, 1 / 25, 1.0, 1e-5)
    pos = 0.0
    for t in range(40):  # unit: step is fastai with one epoch of total_steps batches
        assert sched.factor(t) == curve(pos)
        pos += 1.0 / 40
    assert sched.factor(40) == sched.factor(10**6) == pytest.approx(1e-5)


def test_fine_tune_is_a_two_stage_recipe():
    """fastai's fine_tune(epochs, base_lr, freeze_epochs): one_cycle at base_lr with pct_start 0.99
    while frozen, then a restarted one_cycle at base_lr / 2 with pct_start 0.3 and div 5."""
    freeze_epochs, epochs = 1, 2
    theirs = fastai_lrs(lambda learn: learn.fine_tune(epochs, base_lr=1.0, freeze_epochs=freeze_epochs))
    recipe = {
        "train": [".*"], "optimizer": {"name": "sgd", "lr": 1.0},
        "schedule": {"type": "onecycle", "total_steps": freeze_epochs, "unit": "epoch", "pct_start": 0.99},
        "stages": [{"at_epoch": freeze_epochs, "train": [".*"], "lr_mult": {".*": 0.5},
                    "schedule": {"type": "onecycle", "total_steps": epochs, "unit": "epoch",
                                 "pct_start": 0.3, "div": 5.0}}],
    }
    net = torch.nn.Linear(1, 1)
    runner = tunespec.StageRunner(recipe, steps_per_epoch=BATCHES)
    net, opt = runner.start(net)
    ours = []
    for epoch in range(freeze_epochs + epochs):
        for _ in range(BATCHES):
            ours.append(next(g["lr"] for g in opt.param_groups if net.weight in g["params"]))
            opt.step()
            runner.lr_scheduler.step()
        net, opt = runner.step(epoch, net, opt)
    assert ours == theirs  # float ==, every step of both phases


class Reg(torch.nn.Module):
    """fastai's synth_learner model (a * x + b) with its two parameters as two layer groups."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))


def test_fine_tune_discriminative_lrs_are_lr_mult_rules():
    """fastai's slice(lo, hi) over layer groups (even_mults) spelt as lr_mult rules. Not float ==:
    fastai computes lo x step^i and anneals each group's own lr; tunespec multiplies the base lr by
    the multiplier and the schedule factor. They agree to a few ulps."""
    record = []

    class RecordGroups(Callback):
        order = ParamScheduler.order + 1

        def before_batch(self):
            if self.training:
                record.append([h["lr"] for h in self.opt.hypers])

    learn = synth_learner(n_trn=BATCHES, cbs=[RecordGroups()], splitter=lambda m: [[m.a], [m.b]])
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(2, base_lr=1.0, freeze_epochs=1, lr_mult=100)
    lo, hi = 1.0 / 2 / 100, 1.0 / 2  # fine_tune halves base_lr, then slice(base_lr / lr_mult, base_lr)
    recipe = {
        "freeze": ["a"], "optimizer": {"name": "sgd", "lr": 1.0},
        "schedule": {"type": "onecycle", "total_steps": 1, "unit": "epoch", "pct_start": 0.99},
        "stages": [{"at_epoch": 1, "train": [".*"], "lr_mult": {"a": lo, "b": hi},
                    "schedule": {"type": "onecycle", "total_steps": 2, "unit": "epoch", "pct_start": 0.3,
                                 "div": 5.0}}],
    }
    net = Reg()
    runner = tunespec.StageRunner(recipe, steps_per_epoch=BATCHES)
    net, opt = runner.start(net)
    ours = []
    for epoch in range(3):
        for _ in range(BATCHES):
            of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
            ours.append([of.get(id(net.a)), of[id(net.b)]])
            opt.step()
            runner.lr_scheduler.step()
        net, opt = runner.step(epoch, net, opt)
    assert [b for _, b in ours] == [b for _, b in record]  # the head: float ==
    assert [a for a, _ in ours[:BATCHES]] == [None] * BATCHES  # frozen while fastai's group 0 is
    for (a, _), (theirs, _) in zip(ours[BATCHES:], record[BATCHES:], strict=True):
        assert a == pytest.approx(theirs, rel=4e-15)
