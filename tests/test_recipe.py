"""Recipe sections (optimizer, schedule) and the framework-neutral lr schedule."""

from __future__ import annotations

import math

import pytest

from tunespec import LRSchedule, SpecError, load_recipe
from tunespec.planning.optimizers import check_semantics


def test_recipe_sections_are_read_and_the_spec_still_validated(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("freeze: ['.*']\noptimizer: {name: adam, lr: 0.001, weight_decay: 1.0e-4, betas: [0.9, 0.99]}\n"
                    "schedule: {type: cosine, total_steps: 100, warmup_steps: 10}\n")
    recipe = load_recipe(path)
    assert recipe.spec.rules[0].trainable is False
    # no semantics named: the one every backend shares, decided when the optimizer is made
    assert (recipe.optimizer.name, recipe.optimizer.lr, recipe.optimizer.semantics) == ("adam", 0.001, None)
    assert check_semantics(recipe.optimizer.semantics) == "torch"
    assert recipe.optimizer.options == {"betas": [0.9, 0.99]}
    assert recipe.schedule.type == "cosine"


@pytest.mark.parametrize("data, fragment", [
    ({"schedule": {"type": "steps"}}, "did you mean 'step'"),
    ({"schedule": {"type": "step"}}, "needs step_size"),
    ({"schedule": {"type": "multistep", "milestone": [3]}}, "did you mean 'milestones'"),
    ({"optimizer": {"lr": -1}}, "optimizer.lr: expected a finite number > 0"),
    ({"optimiser": {}}, "did you mean 'optimizer'"),
])
def test_bad_recipe_sections(data, fragment):
    with pytest.raises(SpecError) as info:
        load_recipe(data)
    assert fragment in str(info.value)


def test_semantics_are_checked_against_the_backends_when_the_optimizer_is_made():
    """Reading a recipe asks no backend: an unknown semantics is refused once a plan makes an
    optimizer (tunespec.planning.optimizers), naming the ones the backends offer."""
    recipe = load_recipe({"optimizer": {"lr": 0.1, "semantics": "mxnet"}})
    with pytest.raises(SpecError) as info:
        check_semantics(recipe.optimizer.semantics)
    assert "not one of torch, native" in str(info.value)
    with pytest.raises(SpecError, match="optimizer.semantics: expected a non-empty string"):
        load_recipe({"optimizer": {"lr": 0.1, "semantics": 3}})


def test_schedule_factors():
    multistep = LRSchedule.from_dict({"type": "multistep", "milestones": [3, 5], "gamma": 0.5})
    assert [multistep.factor(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25]
    step = LRSchedule.from_dict({"type": "step", "step_size": 2, "gamma": 0.1})
    assert [round(step.factor(t), 12) for t in range(5)] == [1, 1, 0.1, 0.1, 0.01]
    cosine = LRSchedule.from_dict({"type": "cosine", "total_steps": 4, "min_factor": 0.2})
    assert cosine.factor(0) == 1 and math.isclose(cosine.factor(2), 0.6) and math.isclose(cosine.factor(9), 0.2)
    warm = LRSchedule.from_dict({"type": "constant", "warmup_steps": 4, "warmup_start_factor": 0.2})
    assert [round(warm.factor(t), 12) for t in range(6)] == [0.2, 0.4, 0.6, 0.8, 1, 1]


def test_epoch_schedules_need_steps_per_epoch():
    sched = LRSchedule.from_dict({"type": "step", "step_size": 2, "unit": "epoch"})
    with pytest.raises(SpecError, match="steps_per_epoch"):
        sched.in_steps(None)
    assert sched.in_steps(10).step_size == 20


def test_load_spec_validates_every_section(tmp_path):
    from tunespec import load_spec

    path = tmp_path / "r.yaml"
    path.write_text("freeze: ['.*']\noptimizer: {name: sgd, lr: -1}\n")
    with pytest.raises(SpecError, match="r.yaml: optimizer.lr"):
        load_spec(path)
