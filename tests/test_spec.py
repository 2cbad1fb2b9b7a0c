"""The spec: validation, desugaring order, recipe files. No framework needed."""

from __future__ import annotations

import json

import pytest

import tunespec
from tunespec import Spec, SpecError


def test_shorthands_desugar_in_fixed_order_whatever_the_key_order():
    spec = Spec.from_dict({"rules": [{"match": "a", "lr_mult": 2}], "wd_mult": {"b": 0},
                           "lr_mult": {"c": 3}, "train": ["d"], "freeze": ["e", "f"]})
    assert [r.origin for r in spec.rules] == [
        "freeze[0]", "freeze[1]", "train[0]", "lr_mult['c']", "wd_mult['b']", "rules[0]"]
    assert spec.rules[0].trainable is False and spec.rules[2].trainable is True
    assert spec.rules[3].lr_mult == 3.0 and spec.rules[4].wd_mult == 0.0


@pytest.mark.parametrize("data, fragment", [
    ({"lr_mul": {"fc": 2}}, "did you mean 'lr_mult'"),
    ({"rules": [{"match": "fc", "lr_mul": 2}]}, "did you mean 'lr_mult'"),
    ({"freeze": ["layer1.(("]}, "invalid regex"),
    ({"lr_mult": {"fc": -1}}, "expected a finite number >= 0"),
    ({"lr_mult": {"fc": float("nan")}}, "expected a finite number"),
    ({"wd_mult": {"fc": float("inf")}}, "expected a finite number"),
    ({"lr_mult": {"fc": 0}}, "write trainable: false"),
    ({"lr_mult": {"fc": "10"}}, "expected a finite number"),
    ({"rules": [{"match": "fc"}]}, "sets nothing"),
    ({"rules": [{"trainable": False}]}, "needs 'match'"),
    ({"rules": [{"match": "fc", "trainable": "no"}]}, "true or false"),
    ({"bn": "frozen"}, "did you mean 'freeze'"),
    ({"strict": "yes"}, "strict"),
    ({"groups": {"bias": "x"}}, "built-in group"),
    ({"freeze": ["@not a group"]}, "not a group reference"),
    ({"freeze": 3}, "expected a regex or a list"),
    ({"optimiser": {}}, "unknown spec key 'optimiser'"),
])
def test_bad_specs_are_errors_naming_the_key_and_value(data, fragment):
    with pytest.raises(SpecError, match=None) as info:
        Spec.from_dict(data)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_wd_mult_zero_is_allowed_but_lr_mult_zero_is_not():
    assert Spec.from_dict({"wd_mult": {"@bias": 0}}).rules[0].wd_mult == 0.0


def test_groups_accept_a_list_and_are_joined():
    spec = Spec.from_dict({"groups": {"heads": ["fc\\..*", "cls\\..*"]}, "train": ["@heads"]})
    assert spec.groups["heads"] == "(?:fc\\..*)|(?:cls\\..*)"


def test_preset_constructor_keeps_extra_rules():
    spec = Spec.preset("heads", lr_mult={"fc\\..*": 10})
    assert spec.preset_name == "heads" and spec.rules[0].lr_mult == 10


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "freeze: ['.*']\ntrain: ['fc\\..*']\nbn: freeze\n"),
    (".json", json.dumps({"freeze": [".*"], "train": ["fc\\..*"], "bn": "freeze"})),
    (".toml", "freeze = ['.*']\ntrain = ['fc\\..*']\nbn = 'freeze'\n"),
])
def test_load_spec_reads_yaml_json_toml_alike(tmp_path, suffix, text):
    path = tmp_path / f"recipe{suffix}"
    path.write_text(text)
    spec = tunespec.load_spec(path)
    assert [(r.match, r.trainable) for r in spec.rules] == [(".*", False), ("fc\\..*", True)]
    assert spec.bn == "freeze"


def test_recipe_errors_name_the_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("freeze: ['.*']\nschedul: {}\n")
    with pytest.raises(SpecError, match="r.yaml.*unknown spec key 'schedul'"):
        tunespec.load_spec(bad)
    with pytest.raises(SpecError, match="unknown file type"):
        tunespec.load_spec(tmp_path / "r.txt")
    broken = tmp_path / "b.json"
    broken.write_text("{nope")
    with pytest.raises(SpecError, match="not valid json"):
        tunespec.load_spec(broken)


def test_to_dict_round_trips():
    spec = Spec.from_dict({"freeze": [".*"], "train": ["fc\\..*"], "lr_mult": {"fc\\..*": 10},
                           "groups": {"heads": "fc\\..*"}, "bn": "train", "strict": False})
    again = Spec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    assert [(r.match, r.trainable, r.lr_mult) for r in again.rules] == \
        [(r.match, r.trainable, r.lr_mult) for r in spec.rules]
