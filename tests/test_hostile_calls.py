"""Calls a careless user makes that used to surface a framework's own exception.

``tunespec.optimizer`` (and a runner's start) with every parameter frozen was torch's
"optimizer got an empty parameter list" and a TypeError inside Gluon's Trainer; it is a SpecError
before anything changes. A parameter that holds integers cannot train in either framework (torch
refuses ``requires_grad`` on it at ``apply``, MXNet's optimizers refuse to update it): both
backends list it as state, so no plan marks it trainable, a rule naming only it fails when the
plan is made (saying why), and a recipe that trains everything plans, applies and steps.
Each refusal leaves the run as it was (tests/snapshot.py); [both] frameworks.
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext

import pytest

import tunespec
from tunespec.cli import main
from frameworks import batches, np
from snapshot import assert_unchanged, state_of
from tunespec import SpecError

FROZEN = [{"freeze": [".*"]}, {"freeze": [".*"], "train": ["nothing_matches"], "strict": False}]


@pytest.mark.parametrize("spec", FROZEN)
def test_an_optimizer_over_no_trainable_parameter_is_a_spec_error(h, spec):
    net = h.small_cnn()
    before = state_of(net)
    with pytest.warns(tunespec.TuneSpecWarning) if spec.get("strict") is False else nullcontext():
        with pytest.raises(SpecError, match="freezes every parameter .* nothing to update"):
            tunespec.optimizer(net, spec, "sgd", lr=0.1)
    assert_unchanged(before, state_of(net))


def test_a_runner_whose_first_stage_freezes_everything_refuses_to_start(h):
    net = h.small_cnn()
    runner = tunespec.StageRunner({"freeze": [".*"], "optimizer": {"name": "sgd", "lr": 0.1}})
    before = state_of(net, schedule=runner)
    with pytest.raises(SpecError, match="nothing to update"):
        runner.start(net)
    assert_unchanged(before, state_of(net, schedule=runner))


def test_a_model_without_parameters_is_named_as_such(h):
    net = h.torch.nn.ReLU() if h.name == "torch" else h.mx.gluon.nn.Activation("relu")
    with pytest.raises(SpecError, match="has no parameters"):
        tunespec.optimizer(net, {}, "sgd", lr=0.1)


# --- integer parameters ------------------------------------------------------------------------

def with_integer_parameter(h):
    """The small CNN plus an integer parameter 'steps' (a counter a model keeps as a parameter)."""
    net = h.small_cnn()
    if h.name == "torch":
        torch = h.torch
        net.steps = torch.nn.Parameter(torch.arange(3), requires_grad=False)
    else:
        mx = h.mx

        class WithSteps(mx.gluon.Block):
            def __init__(self):
                super().__init__()
                with self.name_scope():
                    self.body = net
                    self.steps = self.params.get("steps", shape=(3,), dtype="int32", init=mx.init.Zero())

            def forward(self, x):
                return self.body(x)

        net = WithSteps()
        net.steps.initialize()
    return net


def test_an_integer_parameter_is_state_and_a_train_everything_recipe_runs(h):
    net = with_integer_parameter(h)
    plan = tunespec.plan(net, {"train": [".*"]})
    assert "steps" not in [d.name for d in plan.decisions]
    assert "steps" in [t.canonical for t in plan.listing.state]
    opt = tunespec.optimizer(net, {"train": [".*"], "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
    for x, y in batches(1, 4):
        h.step(net, opt, x, y)
    steps = net.steps.detach().numpy() if h.name == "torch" else net.steps.data().asnumpy()
    assert steps.dtype.kind == "i" and (steps == (np.arange(3) if h.name == "torch" else 0)).all()


@pytest.mark.parametrize("recipe", [{"train": ["steps"]}, {"freeze": [".*"], "train": ["st.*"]},
                                    {"rules": [{"match": "steps", "lr_mult": 2.0}]}])
def test_a_rule_that_would_train_only_an_integer_parameter_fails_when_planned(h, recipe):
    net = with_integer_parameter(h)
    before = state_of(net)
    with pytest.raises(SpecError, match="matches no parameter .* it matches only state such as 'steps'"):
        tunespec.plan(net, recipe)
    with pytest.raises(SpecError, match="only state such as 'steps'"):
        tunespec.apply(net, recipe)
    assert_unchanged(before, state_of(net))


# --- the command line's --model ------------------------------------------------------------------

@pytest.mark.parametrize("model, match", [
    ("os:sep", "'sep' is a str, not a function"),
    ("collections:OrderedDict.fromkeys", "cannot load"),
    ("json:loads", r"loads\(\) raised TypeError"),
    ("os:getcwd", "cannot tell which framework builtins.str"),
    ("nosuchmodule_xyz:f", "cannot load 'f' from 'nosuchmodule_xyz'"),
    ("noseparator", "write ZOO:NAME"),
])
def test_lr_plot_and_plan_with_a_model_that_is_not_one_print_one_error_line(tmp_path, capsys, model, match):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"optimizer": {"name": "sgd", "lr": 0.1}}))
    for argv in (["lr-plot", str(recipe), "--epochs", "2", "--model", model], ["plan", str(recipe), "--model", model]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("tunespec: error:") and "Traceback" not in err and re.search(match, err), err
