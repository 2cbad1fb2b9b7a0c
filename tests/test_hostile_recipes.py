"""Untrusted recipes: bounded time and memory, one validation layer, safe parsing (issue 11).

Every test feeds tunespec what an attacker or a careless user would, and asserts the outcome is
a SpecError naming the path to the bad value (never another exception, never an unbounded
message), with the model exactly as it was.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

import tunespec
from fake_backend import FakeBackend, FakeLayer, fake_plan, linear, small_net
from frameworks import HARNESSES, needing, needs
from snapshot import assert_unchanged, state_of
from tunespec import SpecError, load_recipe
from tunespec.planning import matching
from tunespec.recipe import validate
from tunespec.framework_facts import framework_options
from tunespec.planning.naming import NameMap
from tunespec.planning.optimizers import check_optimizer
from tunespec.recipe.optimizer import OptimizerSpec
from tunespec.recipe.read import MAX_RECIPE_BYTES, read_recipe
from tunespec.recipe.spec import Spec


@pytest.fixture
def fast_budget(monkeypatch):
    """A small matching budget, so a test of the timeout takes a fraction of a second."""
    monkeypatch.setattr(matching, "MATCH_BUDGET_S", 0.2)
    monkeypatch.setattr(matching, "MATCH_BUDGET_PER_NAME_S", 0.0)


def error_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(SpecError) as info:
        call(*args, **kwargs)
    return str(info.value)


def _fake_state(model: FakeLayer) -> list:
    """Everything of a fake model a failed call must leave as it was."""
    out: list = []

    def walk(layer: FakeLayer) -> None:
        out.append((layer.kind, layer.stats_frozen))
        out.extend((t.trainable, t.lr_mult, t.wd_mult, t.value) for t in (*layer.params.values(),
                                                                          *layer.stats.values()))
        for child in layer.children.values():
            walk(child)

    walk(model)
    return out


# --- excerpts: an error never renders a whole hostile value ------------------------------------
class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("repr bomb")


def _deep(n: int) -> list:
    out: list = []
    for _ in range(n):
        out = [out]
    return out


def _cyclic() -> list:
    a: list = [1]
    a.append(a)
    return a


@pytest.mark.parametrize("value", [
    "x" * 10_000_000, 10**400, -(10**5000), _deep(100_000), _cyclic(), {"k" * 1000: ["v" * 1000] * 1000},
    Hostile(), b"\x00" * 10**6, 1e308, float("nan"),
], ids=["10MB-str", "400-digit", "5000-digit", "deep", "cyclic", "wide", "bad-repr", "bytes", "big-float",
        "nan"])
def test_excerpt_is_short_whatever_the_value(value):
    text = validate.excerpt(value)
    assert 0 < len(text) <= validate.EXCERPT_CHARS


def test_a_huge_value_in_a_recipe_gives_a_short_message():
    message = error_of(Spec.from_dict, {"freeze": ["fc\\..*", 10**5000]})
    assert message.startswith("freeze: expected a regex or a list of regexes") and len(message) < 200
    message = error_of(load_recipe, {"optimizer": {"lr": "x" * 10_000_000}})
    assert message.startswith("optimizer.lr: expected a finite number > 0") and len(message) < 200


# --- numbers, counts and names: one wording, the path to the value -----------------------------
@pytest.mark.parametrize("data, message", [
    ({"optimizer": {"lr": float("inf")}},
     "optimizer.lr: expected a finite number > 0 (at most 1e+06), got inf"),
    ({"optimizer": {"lr": float("nan")}},
     "optimizer.lr: expected a finite number > 0 (at most 1e+06), got nan"),
    ({"optimizer": {"lr": 10**400}}, "optimizer.lr: expected a finite number > 0"),
    ({"optimizer": {"lr": True}}, "optimizer.lr: expected a finite number > 0"),
    ({"optimizer": {"weight_decay": -0.1}}, "optimizer.weight_decay: expected a finite number >= 0"),
    ({"optimizer": {"name": 3}}, "optimizer.name: expected a non-empty string"),
    ({"schedule": {"type": "step", "step_size": "ten"}},
     "schedule.step_size: expected a positive integer (at most 10**12), got 'ten'"),
    ({"schedule": {"type": "step", "step_size": 10**400}}, "schedule.step_size: expected a positive integer"),
    ({"schedule": {"type": "step", "step_size": 3.0}}, "schedule.step_size: expected a positive integer"),
    ({"schedule": {"type": "step", "step_size": True}}, "schedule.step_size: expected a positive integer"),
    ({"schedule": {"type": "step", "step_size": 0}}, "schedule.step_size: expected a positive integer"),
    ({"schedule": {"type": "step", "step_size": 5, "gamma": float("nan")}},
     "schedule.gamma: expected a finite"),
    ({"schedule": {"type": "step", "step_size": 5, "gamma": -1}},
     "schedule.gamma: expected a finite number >= 0"),
    ({"schedule": {"type": "cosine", "total_steps": 9, "min_factor": 2}},
     "schedule.min_factor: expected a finite number in [0, 1]"),
    ({"schedule": {"type": "cosine", "total_steps": 9, "warmup_steps": 2, "warmup_start_factor": "a"}},
     "schedule.warmup_start_factor: expected a finite number in [0, 1]"),
    ({"schedule": {"type": "cosine", "total_steps": 9, "warmup_steps": -1}},
     "schedule.warmup_steps: expected an integer >= 0"),
    ({"schedule": {"type": "multistep", "milestones": [30, 20]}},
     "schedule.milestones[1]: 20 is not after 30"),
    ({"schedule": {"type": "multistep", "milestones": [30, 30]}},
     "schedule.milestones[1]: 30 is not after 30"),
    ({"schedule": {"type": "multistep", "milestones": "30"}},
     "schedule.milestones: expected a non-empty list"),
    ({"schedule": {"type": "multistep", "milestones": [1.5]}},
     "schedule.milestones[0]: expected a positive integer"),
    ({"schedule": {"type": "step", "step_size": 5, "milestones": [3]}},
     "schedule.milestones: has no effect with type step"),
    ({"schedule": {"type": "constant", "gamma": 0.5}}, "schedule.gamma: has no effect with type constant"),
    ({"schedule": {"type": "step", "step_size": 5, "min_factor": 0.1}}, "schedule.min_factor: has no effect"),
    ({"schedule": {"type": "step", "step_size": 5, "warmup_start_factor": 0.1}},
     "has no effect without warmup_steps"),
    ({"schedule": {"type": "step", "step_size": 5, "unit": "epochs"}},
     "schedule.unit: 'epochs' is not one of step, epoch"),
    ({"schedule": ["step"]}, "schedule: expected a mapping"),
    ({"lr_mult": {"fc\\..*": float("inf")}}, "expected a finite number >= 0"),
    ({"lr_mult": {"fc\\..*": 1e7}}, "at most 1e+06"),
    ({"rules": [{"match": "fc\\..*", "wd_mult": "1"}]}, "rules[0].wd_mult: expected a finite number"),
    ({"rules": [{"match": "fc\\..*", "trainable": 1}]}, "rules[0].trainable: expected true or false, got 1"),
    ({"rules": [{"match": 10**400, "trainable": True}]}, "rules[0]: expected a non-empty regex string"),
    ({"freeze": ["x" * 5000]}, "freeze[0]: expected a non-empty regex string of at most 4096"),
    ({"bn": ["train"]}, "bn: ['train'] is not one of"),
    ({"strict": "false"}, "strict: expected true or false"),
    ({"preset": 10**400}, "preset: expected a preset name"),
    ({"groups": {"x" * 500: "fc"}}, "is not a valid group name"),
    ({"init": {"seed": 2**70, "rules": [{"match": "fc", "method": "zeros"}]}},
     "init.seed: expected an integer"),
    ({"init": {"rules": [{"match": "fc", "method": "normal", "std": -1}]}},
     "init.rules[0].std: expected a finite number in [0, 1e+30]"),
    ({"init": {"rules": [{"match": "fc", "method": "normal", "mean": 1e300 * 10}]}},
     "init.rules[0].mean: expected a finite number"),
    ({"init": {"rules": [{"match": "fc", "method": "kaiming_normal", "mode": "fan_inn"}]}},
     "did you mean 'fan_in'"),
    ({"init": {"rules": [{"match": "fc", "method": "uniform", "low": 1, "high": 0}]}}, "low 1 > high 0"),
    ({"init": {"rules": [{"layer": 10**400, "method": "zeros"}]}},
     "init.rules[0].layer: expected a non-empty string"),
    ({"init": {"rules": [{"match": "fc", "method": "zeroes"}]}}, "did you mean 'zeros'"),
])
def test_every_bad_value_is_a_spec_error_with_its_path(data, message):
    assert message in error_of(load_recipe, {"freeze": ["fc\\..*"], **data})


# --- optimizer options: the update rules' own checked when the recipe is read, the rest (unknown
# options, options a framework adds) when an optimizer is made for the chosen backend -----------
READ_TIME = [
    ({"name": "SGD", "momentum": 1.5}, "optimizer.momentum: expected a finite number in [0, 1], got 1.5"),
    ({"name": "sgd", "nesterov": "yes"}, "optimizer.nesterov: expected true or false"),
    ({"name": "sgd", "nesterov": True}, "optimizer.nesterov: needs momentum > 0 and dampening 0"),
    ({"name": "sgd", "dampening": float("nan")}, "optimizer.dampening: expected a finite number"),
    ({"name": "adam", "betas": [0.9, 1.0]}, "optimizer.betas[1]: expected a finite number in [0, 1)"),
    ({"name": "adam", "betas": 0.9}, "optimizer.betas: expected a pair"),
    ({"name": "adam", "eps": 0}, "optimizer.eps: expected a finite number > 0"),
    ({"name": "adamw", "amsgrad": "no"}, "optimizer.amsgrad: expected true or false"),
]
MAKE_TIME = [
    ({"name": "sgd", "momentun": 0.9},
     "optimizer.momentun: unknown option of sgd (did you mean 'momentum'?)"),
    ({"name": "adamw", "beta": 0.9}, "optimizer.beta: unknown option of adamw (did you mean 'betas'?)"),
    ({"name": "adam", "momentum": 0.9}, "optimizer.momentum: unknown option of adam"),
    ({"name": "sgd", "update_on_kvstore": 1}, "optimizer.update_on_kvstore: expected true or false"),
    ({"name": "sgd", "kvstore": 5}, "optimizer.kvstore: expected a name like 'device'"),
    ({"name": "sgd", "compression_params": {"type": "3bit"}}, "optimizer.compression_params.type"),
    ({"name": "sgd", "clip_gradient": -1}, "optimizer.clip_gradient: expected a finite number > 0"),
]


@pytest.mark.parametrize("options, message", MAKE_TIME)
def test_other_optimizer_options_are_checked_when_the_optimizer_is_made(options, message):
    """Read without asking a backend, refused before any optimizer exists, with the path and fix."""
    spec = OptimizerSpec.from_dict({"lr": 0.1, **options})
    assert message in error_of(check_optimizer, FakeBackend(), spec.name, spec.lr, spec.weight_decay,
                               spec.semantics, spec.options)


@pytest.mark.parametrize("options, message", READ_TIME)
def test_the_update_rules_own_options_are_checked_when_read(options, message):
    assert message in error_of(OptimizerSpec.from_dict, {"lr": 0.1, **options})


def test_good_optimizer_options_pass_and_an_unknown_optimizer_is_left_to_the_backend():
    spec = OptimizerSpec.from_dict({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True})
    assert spec.options == {"momentum": 0.9, "nesterov": True}
    spec = OptimizerSpec.from_dict({"name": "adam", "lr": 1e-3, "betas": [0.9, 0.99], "eps": 1e-8})
    assert spec.options == {"betas": [0.9, 0.99], "eps": 1e-8}
    assert OptimizerSpec.from_dict({"name": "rmsprop", "lr": 0.1, "alpha": 0.9}).options == {"alpha": 0.9}
    assert set(validate.optimizer_tables()) >= {"sgd", "adam", "adamw"}
    assert validate.check_optimizer("sgd", {"momentum": 1}) == {"momentum": 1.0}
    assert "did you mean 'momentum'" in error_of(validate.check_optimizer, "sgd", {"momentun": 0.9},
                                                 extra=framework_options())


# --- stage triggers -----------------------------------------------------------------------------
BASE = {"preset": "heads", "optimizer": {"lr": 0.1}}


@pytest.mark.parametrize("stages, message", [
    ([{"at_epoch": 0, "train": ["fc\\..*"]}],
     "stages.then[0].at_epoch: 0 would start the stage before training"),
    ([{"at_epoch": 2, "train": ["a"]}, {"at_epoch": 2, "train": ["b"]}],
     "stages.then[1].at_epoch: 2 is not after stages.then[0]'s 2"),
    ([{"at_step": 50, "train": ["a"]}, {"at_step": 10, "train": ["b"]}],
     "stages.then[1].at_step: 10 is not after stages.then[0]'s 50"),
    ([{"at_epoch": 3, "train": ["a"]}, {"on_plateau": 0, "train": ["b"]}],
     "stages.then[1].on_plateau: expected a positive integer"),
    ([{"at_epoch": True, "train": ["a"]}], "stages.then[0].at_epoch: expected a positive integer"),
    ([{"at_epoch": 10**13, "train": ["a"]}], "at most 10**12"),
    ([{"at_epoch": 2, "train": ["a"], "min_delta": 0.1}], "stages.then[0].min_delta: has no effect"),
    ([{"on_plateau": 2, "train": ["a"], "min_delta": float("inf")}],
     "stages.then[0].min_delta: expected a finite"),
    ([{"at_epoch": 2, "train": ["a"], "restore_best": "yes"}],
     "stages.then[0].restore_best: expected true or false"),
    ([{"at_epoch": 2, "train": ["a"], "name": ["x"]}], "stages.then[0].name: expected a non-empty string"),
])
def test_stage_triggers_mean_what_they_say_or_are_errors(stages, message):
    assert message in error_of(load_recipe, {**BASE, "stages": stages})


def test_increasing_triggers_of_each_kind_are_accepted():
    recipe = load_recipe({**BASE, "stages": [{"at_epoch": 1, "train": ["a"]}, {"at_step": 5, "train": ["b"]},
                                             {"at_epoch": 4, "train": ["c"]}, {"on_plateau": 2, "train": ["d"]}]})
    assert [s.at for s in recipe.sections["stages"].stages] == [1, 5, 4, 2]


# --- bounded regex time -------------------------------------------------------------------------
def _aaa_model(n: int) -> FakeLayer:
    """Layers named 'aaa...a00012': 45-character parameter names that make backtracking explode."""
    return FakeLayer("container", children={"a" * 32 + f"{i:06d}": linear(2, 2) for i in range(n)})


@pytest.mark.parametrize("pattern", [r"(a|aa)+b", r"(a+)+b", r"(a|a?)+b\d", r"([a-z0-9]+\.?)+x"])
def test_a_pathological_regex_is_a_spec_error_naming_the_rule_in_bounded_time(pattern, fast_budget):
    model = _aaa_model(150)
    before = _fake_state(model)
    start = time.monotonic()
    with pytest.raises(SpecError) as info:
        fake_plan(model, {"train": ["x"], "freeze": [pattern]}).apply()
    assert time.monotonic() - start < 2.0
    message = str(info.value)
    # either the rule ran out of time, or (on a pattern the engine defuses) it matched nothing
    assert message.startswith("freeze[0]:") and validate.excerpt(pattern) in message
    assert _fake_state(model) == before


def test_a_timeout_names_the_rule_and_suggests_a_simpler_regex(fast_budget):
    matcher = matching.Matcher(FakeBackend().listing(_aaa_model(50)))
    message = error_of(matcher.select, r"(a|aa)+b", {}, "rules[3]")
    assert message.startswith("rules[3]: regex '(a|aa)+b' needed more than")
    assert "backtracks catastrophically" in message and "Simplify it" in message


def test_a_group_that_backtracks_names_the_rule_and_the_group(fast_budget):
    model = _aaa_model(50)
    message = error_of(lambda: fake_plan(model, {"groups": {"slow": "(a|aa)+b"}, "train": ["@slow"]}).apply())
    assert message.startswith("train[0] (group @slow): regex")


@pytest.mark.parametrize("name", ["torch", "mxnet"])
def test_a_pathological_regex_leaves_a_real_model_unchanged(name, fast_budget):
    needs(name)
    if name == "torch":
        import torch

        model = torch.nn.Sequential(__import__("collections").OrderedDict(
            [("a" * 40, torch.nn.Linear(2, 2)), ("b" * 40, torch.nn.BatchNorm1d(2))]))
    else:
        from mxnet import gluon

        class Net(gluon.Block):
            def __init__(self):
                super().__init__()
                setattr(self, "a" * 40, gluon.nn.Dense(2, in_units=2))

        model = Net()
        model.initialize()
    before = state_of(model)
    with pytest.raises(SpecError, match=r"freeze\[0\]: regex '\(a\|aa\)\+b' needed more than"):
        tunespec.apply(model, {"freeze": ["(a|aa)+b"]})
    assert_unchanged(before, state_of(model))


def test_namemap_patterns_are_bounded_too(fast_budget):
    names = NameMap(select="(a|aa)+b")
    with pytest.raises(SpecError, match=r"select: regex '\(a\|aa\)\+b' needed more than"):
        for i in range(100):
            names("a" * 32 + f"{i:06d}")
    assert NameMap(rename={"(.*)\\.w": "\\1.weight"})("fc.w") == "fc.weight"
    assert "rename['(.*)']" in error_of(NameMap(rename={"(.*)": "\\3"}), "fc")
    assert "select: invalid regex" in error_of(NameMap, "fc((")


@pytest.mark.parametrize("pattern, simple", [
    (r"layer4\..*", True), (r".*\.bias", True), (r"blocks\.[0-9]+\.experts\.[0-9]+\.w2\..*", False),
    (r"blocks\.(1|3)\.attn\..*", True), (r"(?!head).*\.w2\.bias", True), (r"(a+)+b", False),
    (r"(a|aa)+b", False), (r"(.*a){20}x", False), (r"(\w)\1", False), (r".*.*.*x", False),
    (r"(?:ab)+c", True), (r"a{3}.*", True),
])
def test_only_patterns_with_bounded_backtracking_skip_the_timed_engine(pattern, simple):
    assert matching.simple(pattern) is simple


def test_normal_rules_on_many_names_are_not_slowed_into_the_budget():
    layers = {f"blocks_{b}": FakeLayer("container", children={f"e{e}": linear(2, 2) for e in range(100)})
              for b in range(20)}  # 4,000 tensors
    model = FakeLayer("container", children=layers)
    plan = fake_plan(model, {"freeze": [".*"], "train": ["blocks_1\\d\\..*", "(?!blocks_0).*\\.e1\\.bias"],
                             "lr_mult": {".*\\.weight": 2}})
    assert len(plan.trainable) == 10 * 200 + 19 - 10


# --- reading recipe files -----------------------------------------------------------------------
def test_a_path_to_dev_zero_or_a_fifo_neither_hangs_nor_fills_memory(tmp_path):
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    assert "is not a regular file" in error_of(read_recipe, zero)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert "is not a regular file" in error_of(read_recipe, fifo)
    assert time.monotonic() - start < 1.0
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    assert "is not a regular file" in error_of(read_recipe, folder)


def test_a_recipe_larger_than_the_cap_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("freeze: ['.*']\n" + "#" * MAX_RECIPE_BYTES)
    assert "larger than 1024 KiB" in error_of(read_recipe, big)
    ok = tmp_path / "ok.yaml"
    ok.write_text("freeze: ['.*']\n" + "#" * (MAX_RECIPE_BYTES - 100))
    assert read_recipe(ok) == {"freeze": [".*"]}


@pytest.mark.parametrize("suffix, raw, message", [
    (".yaml", b"freeze: ['\xff\xfe']\n", "is not UTF-8 text (byte 10 is invalid)"),
    (".json", b'{"freeze": ["a\x00"]}', "contains NUL bytes"),
    (".toml", b"\x89PNG\r\n\x1a\n\x00\x00", "is not UTF-8 text"),
    (".yaml", b"a: &x [1]\nb: *x\n", "line 1: YAML anchors (&name) are not allowed"),
    (".yaml", b"freeze: ['.*']\ntrain: ['fc']\nfreeze: []\n", "line 3: duplicate key 'freeze'"),
    (".yaml", b"optimizer:\n  lr: 0.1\n  lr: 10\n", "line 3: duplicate key 'lr'"),
    (".yaml", b"base: {a: 1}\nx:\n  <<: {a: 2}\n", "merge keys (<<) are not allowed"),
    (".yaml", b"freeze: !!python/object/apply:os.system ['true']\n", "is not valid yaml"),
    (".yaml", b"lr: " + b"9" * 5000 + b"\n", "is not valid yaml"),
    (".json", b'{"freeze": [".*"], "freeze": []}', "duplicate key 'freeze'"),
    (".json", b'{"optimizer": {"lr": NaN}}', "NaN is not a JSON number"),
    (".json", b'{"optimizer": {"lr": Infinity}}', "Infinity is not a JSON number"),
    (".json", b'{"optimizer": {"lr": ' + b"9" * 5000 + b"}}", "is not valid json"),
    (".json", b"[" * 100_000, "is not valid json"),
    (".toml", b'freeze = [".*"]\nfreeze = []\n', "is not valid toml"),
    (".yaml", b"- 1\n- 2\n", "the top level must be a mapping"),
    (".yaml", b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "recipe"),
])
def test_recipe_files_are_parsed_as_untrusted_input(tmp_path, suffix, raw, message):
    path = tmp_path / f"r{suffix}"
    path.write_bytes(raw)
    text = error_of(load_recipe, path)
    assert message in text and len(text) < 400


def test_a_billion_laughs_document_fails_fast(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    assert "YAML anchors (&name) are not allowed" in error_of(load_recipe, path)
    assert time.monotonic() - start < 1.0


def test_a_deep_or_huge_mapping_given_in_memory_is_refused_before_validation():
    deep: dict = {}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    assert "nested more than 32 levels deep" in error_of(load_recipe, {"freeze": [".*"], "init": deep})
    cyclic: dict = {"freeze": [".*"]}
    cyclic["stages"] = {"then": [cyclic]}
    assert "nested more than" in error_of(load_recipe, cyclic)
    assert "more than 100000 values" in error_of(load_recipe, {"freeze": ["a"] * 200_000})


def test_valid_files_of_all_three_formats_still_load(tmp_path):
    recipe = {"freeze": [".*"], "train": ["fc\\..*"], "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
              "schedule": {"type": "multistep", "milestones": [3, 6], "gamma": 0.5}}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    (tmp_path / "r.yaml").write_text(
        "freeze: ['.*']\ntrain: ['fc\\..*']\noptimizer: {name: sgd, lr: 0.1, momentum: 0.9}\n"
        "schedule: {type: multistep, milestones: [3, 6], gamma: 0.5}\n")
    (tmp_path / "r.toml").write_text(
        "freeze = ['.*']\ntrain = ['fc\\..*']\n[optimizer]\nname = 'sgd'\nlr = 0.1\nmomentum = 0.9\n"
        "[schedule]\ntype = 'multistep'\nmilestones = [3, 6]\ngamma = 0.5\n")
    loaded = [load_recipe(tmp_path / f"r.{s}") for s in ("json", "yaml", "toml")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0].schedule.milestones == (3, 6)


# --- a refused recipe leaves a real model as it was ----------------------------------------------
@pytest.mark.parametrize("recipe", [
    {"freeze": ["0\\..*"], "optimizer": {"lr": float("nan")}},
    {"freeze": ["0\\..*"], "lr_mult": {"8\\..*": float("inf")}},
    {"freeze": ["0\\..*"], "stages": [{"at_epoch": 0, "train": [".*"]}]},
    {"freeze": ["0\\..*"], "schedule": {"type": "step", "step_size": "ten"}},
    {"freeze": ["0\\..*", "nothing\\..*"]},
])
def test_a_refused_recipe_leaves_the_model_unchanged(h, recipe):
    model = h.small_cnn()
    before = state_of(model)
    with pytest.raises(SpecError):
        tunespec.apply(model, recipe)
    assert_unchanged(before, state_of(model))


# --- property-based: random documents are a plan or a SpecError, never anything else -----------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HOSTILE_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.integers(min_value=10**20, max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, 10.0, -1.0, 1e308]),
    st.text(max_size=12), st.sampled_from([".*", "fc\\..*", "layer1\\..*", "@bias", "@norm", "@nope",
                                           "(a|aa)+b", "((", "", "x" * 5000, "heads", "4+", "all"]),
)
VALUES = st.recursive(HOSTILE_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
REGEXES = st.sampled_from([".*", "stem\\..*", "layer1\\..*", "layer2\\..*", "fc\\..*", ".*\\.bias", "@bias",
                           "@norm", "@1d", ".*conv.*", "nothing"])


def _section(valid: dict[str, Any]) -> Any:
    """A section: a valid one with some values replaced or keys added, or junk."""
    keyed = st.fixed_dictionaries({}, optional={k: st.one_of(v, VALUES) for k, v in valid.items()})
    extra = st.dictionaries(st.sampled_from(["momentun", "lr_mul", "step", "x", "milestone"]), VALUES,
                            max_size=1)
    return st.one_of(st.builds(lambda a, b: {**a, **b}, keyed, extra), VALUES)


RECIPES = st.fixed_dictionaries({}, optional={
    "freeze": st.one_of(st.lists(REGEXES, max_size=3), VALUES),
    "train": st.one_of(st.lists(REGEXES, max_size=3), VALUES),
    "lr_mult": st.one_of(st.dictionaries(REGEXES, st.sampled_from([0.1, 2, 10, 0, -1, float("inf")]), max_size=2),
                         VALUES),
    "wd_mult": st.one_of(st.dictionaries(REGEXES, st.sampled_from([0, 0.5, 1]), max_size=2), VALUES),
    "rules": st.one_of(st.lists(_section({"match": REGEXES, "trainable": st.booleans(),
                                          "lr_mult": st.sampled_from([0.5, 2])}), max_size=2), VALUES),
    "groups": st.one_of(st.dictionaries(st.sampled_from(["heads", "body", "heads", "bias", "x y"]), REGEXES,
                                        max_size=2), VALUES),
    "bn": st.one_of(st.sampled_from(["train", "freeze", "freeze_frozen"]), VALUES),
    "strict": st.one_of(st.booleans(), VALUES),
    "optimizer": _section({"name": st.sampled_from(["sgd", "adam", "adamw", "rmsprop"]),
                           "lr": st.sampled_from([0.1, 1e-3]), "momentum": st.sampled_from([0.0, 0.9]),
                           "betas": st.just([0.9, 0.999]), "weight_decay": st.just(1e-4),
                           "semantics": st.sampled_from(["torch", "native"])}),
    "schedule": _section({"type": st.sampled_from(["constant", "step", "multistep", "cosine"]),
                          "step_size": st.integers(1, 5), "milestones": st.lists(st.integers(1, 9), max_size=3),
                          "total_steps": st.integers(1, 9), "gamma": st.just(0.5),
                          "warmup_steps": st.integers(0, 3), "unit": st.sampled_from(["step", "epoch"])}),
    "stages": st.one_of(st.lists(_section({"at_epoch": st.integers(0, 4), "on_plateau": st.integers(0, 3),
                                           "train": st.lists(REGEXES, max_size=2),
                                           "lr_factor": st.just(0.1)}), max_size=3), VALUES),
    "init": _section({"seed": st.integers(0, 3),
                      "rules": st.just([{"match": "fc\\.weight", "method": "zeros"}])}),
})


def _plan_apply_restore(model: FakeLayer, source: Any) -> None:
    """load -> plan -> apply -> restore; a SpecError anywhere must leave the model as it was."""
    import warnings

    before = _fake_state(model)
    try:
        recipe = load_recipe(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = fake_plan(model, recipe.spec).apply()
        plan.restore()
    except SpecError as exc:
        assert len(str(exc)) < 2000  # never a whole hostile value
    assert _fake_state(model) == before


PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@PROPERTY
@given(RECIPES)
def test_random_recipe_mappings_are_a_plan_or_a_spec_error(data):
    _plan_apply_restore(small_net(), data)


VALID_TEXT = {
    ".yaml": "preset: heads\nfreeze: ['stem\\..*']\ntrain: ['fc\\..*']\nlr_mult: {'fc\\..*': 10}\n"
             "optimizer: {name: sgd, lr: 0.01, momentum: 0.9}\n"
             "schedule: {type: multistep, milestones: [3, 6], gamma: 0.5}\n"
             "stages: [{at_epoch: 2, train: ['layer2\\..*']}]\n",
    ".json": json.dumps({"freeze": ["stem\\..*"], "train": ["fc\\..*"], "lr_mult": {"fc\\..*": 10},
                         "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                         "schedule": {"type": "multistep", "milestones": [3, 6], "gamma": 0.5}}),
}
SNIPPETS = ["&a ", "*a", "<<: ", "\x00", "\udcff", "NaN", "1e999", "9" * 400, "{", "]", ": ", "\n  ", "\t",
            "!!python/object:os.system ", "!!binary ", "---\n", '"', "'", ",", "lr", "freeze", "- "]


@st.composite
def _mutated(draw: Any) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(sorted(VALID_TEXT)))
    text = VALID_TEXT[suffix]
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 6))
        insert = draw(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=4)))
        text = text[:at] + insert + text[at + cut:]
    return suffix, text.encode("utf-8", "surrogateescape") if draw(st.booleans()) else text.encode(
        "utf-8", "replace")


@PROPERTY
@given(st.one_of(_mutated(), st.tuples(st.sampled_from([".yaml", ".json", ".toml"]), st.binary(max_size=64))))
def test_random_recipe_files_are_a_plan_or_a_spec_error(tmp_path_factory, case):
    suffix, raw = case
    path = tmp_path_factory.mktemp("r") / f"recipe{suffix}"
    path.write_bytes(raw)
    _plan_apply_restore(small_net(), path)


@needing("torch")
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(RECIPES)
def test_random_recipes_on_a_real_torch_model(data):
    import warnings

    net = HARNESSES["torch"]().small_cnn()
    before = state_of(net)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = tunespec.apply(net, data)
        plan.restore()
    except SpecError:
        pass
    assert_unchanged(before, state_of(net))
