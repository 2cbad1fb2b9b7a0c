"""Hostile and careless input to the importers and ``tunespec convert``: a recipe or a SpecError.

``from_mmengine``, ``from_mmengine_config``, ``from_timm`` (its fnmatch patterns too) and
``tunespec convert`` turn any input (wrong types, unhashable values, patterns fnmatch reads in
its own way, random documents) into a recipe that loads, or a SpecError naming the value; the
command line prints one error line, never a traceback. A model given to ``from_timm`` is left as
it was (tests/snapshot.py). MMEngine's ``_base_`` inheritance is resolved for data configs, as
MMEngine merges it (compared with ``mmengine.Config`` on random configs), within a depth and
file-count bound, and what needs code is refused by name.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tunespec
from frameworks import needing
from snapshot import assert_unchanged, state_of
from tunespec import SpecError
from tunespec.cli import main
from tunespec.importers import config_bases
from tunespec.importers.mmengine import from_mmengine_config, read_config
from tunespec.importers.timm import glob_regex
from tunespec.recipe.recipe import load_recipe

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
GOOD = {"optim_wrapper": {"optimizer": {"type": "SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4},
                          "paramwise_cfg": {"norm_decay_mult": 0.0, "custom_keys": {"backbone": {"lr_mult": 0.1}}}}}


# --- wrong types: a SpecError naming the value ------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: tunespec.from_mmengine(None, optimizer={"type": ["SGD"]}), r"optimizer.type: \['SGD'\]"),
    (lambda: tunespec.from_mmengine(None, optimizer={"type": {"SGD": 1}}), r"optimizer.type: \{'SGD'"),
    (lambda: tunespec.from_mmengine({"custom_keys": {("a",): {"lr_mult": 1}}}), r"custom_keys"),
    (lambda: tunespec.from_mmengine({"custom_keys": {"a": {"lr_mult": [1]}}}), r"custom_keys\['a'\].lr_mult"),
    (lambda: tunespec.from_timm(weight_decay=0.1, no_weight_decay_list=3), "no_weight_decay_list: expected a list"),
    (lambda: tunespec.from_timm(weight_decay=0.1, no_weight_decay_list=None), "no_weight_decay_list: expected"),
    (lambda: tunespec.from_timm(weight_decay=0.1, no_weight_decay_list={"pos_embed": 1}), "expected a list"),
    (lambda: tunespec.from_timm(weight_decay=0.1, no_weight_decay_list="pos_embed"), "expected a list"),
    (lambda: tunespec.from_timm(weight_decay=0.1, no_weight_decay_list=[b"x"]), r"no_weight_decay_list\[0\]"),
    (lambda: tunespec.from_timm(weight_decay=0.1, no_weight_decay_list=["[z-a]"]),
     r"no_weight_decay_list\[0\]: '\[z-a\]' matches no name: \[z-a\] is an empty character range"),
    (lambda: tunespec.from_timm(weight_decay=0.1, no_weight_decay_list=["x.*[z-a]"]), "empty character range"),
    (lambda: from_mmengine_config({"_base_": "b.yaml", **GOOD}), r"config._base_: .*read_config\(path\)"),
])
def test_importers_refuse_wrong_types_with_a_spec_error(call, match):
    with pytest.raises(SpecError, match=match):
        call()


def test_fnmatch_edge_cases_mean_what_fnmatch_means():
    """'[!]' has no closing bracket for a set in fnmatch: the literal text; '[!z-a]' any one character."""
    recipe = tunespec.from_timm(weight_decay=0.1, no_weight_decay_list=["[!]", "a.[!z-a]", "[]]x"])
    assert set(recipe["wd_mult"]) == {"@1d", r".*\.bias", r"\[!\]", r"a\..", "[]]x"}
    load_recipe(recipe)


@pytest.mark.parametrize("result", [3, "0.bias", [None], {"[z-a]"}, {("x",)}])
def test_a_models_bad_no_weight_decay_is_a_spec_error_and_the_model_stays(h, result):
    net = h.small_cnn()
    net.no_weight_decay = lambda: result  # what timm's models define as a method
    before = state_of(net)
    with pytest.raises(SpecError, match=r"model.no_weight_decay\(\)"):
        tunespec.from_timm(net, weight_decay=0.1)
    assert_unchanged(before, state_of(net))


def test_a_models_good_no_weight_decay_set_is_read(h):
    net = h.small_cnn()
    net.no_weight_decay = lambda: {"8.weight"} if h.name == "torch" else {"*dense*_weight"}
    before = state_of(net)
    recipe = tunespec.from_timm(net, weight_decay=0.1)
    rules = set(recipe["wd_mult"]) - {"@1d", r".*\.bias"}
    assert len(rules) == 1 and "weight" in rules.pop()  # the head's weight, from the model's set
    assert_unchanged(before, state_of(net))


@given(st.text(alphabet="ab.*?[]!-z^\\", max_size=8), st.lists(st.text(alphabet="ab.z-![]^\\", max_size=6),
                                                                 max_size=8))
@PROPERTY
def test_glob_regex_matches_what_fnmatch_matches(pattern, names):
    try:
        regex = glob_regex(pattern)
    except SpecError as exc:
        assert "empty character range" in str(exc)
        assert not any(fnmatch.fnmatchcase(n, pattern) for n in names)
        return
    for name in names:
        assert bool(re.fullmatch(regex, name)) == fnmatch.fnmatchcase(name, pattern), (pattern, name, regex)


# --- random documents: a recipe that loads, or a SpecError ---------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=6), st.sampled_from(["SGD", "Adam", "AdamW", "OptimWrapper", "bias",
                                                          "backbone", "[z-a]", "(", "*"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=8)
KEYS = st.sampled_from(["type", "lr", "momentum", "weight_decay", "betas", "custom_keys", "lr_mult",
                        "decay_mult", "bias_lr_mult", "bias_decay_mult", "norm_decay_mult",
                        "dwconv_decay_mult", "flat_decay_mult", "bypass_duplicate", "dcn_offset_lr_mult",
                        "optimizer", "paramwise_cfg", "constructor", "clip_grad", "backbone", "_base_"])
DOCS = st.recursive(VALUES, lambda inner: st.dictionaries(st.one_of(KEYS, st.integers(0, 3)), inner, max_size=5),
                    max_leaves=16)


def _mutated_good():
    """GOOD with one value somewhere replaced by a random one."""
    paths = [("optim_wrapper",), ("optim_wrapper", "optimizer"), ("optim_wrapper", "optimizer", "type"),
             ("optim_wrapper", "optimizer", "lr"), ("optim_wrapper", "paramwise_cfg"),
             ("optim_wrapper", "paramwise_cfg", "custom_keys"),
             ("optim_wrapper", "paramwise_cfg", "custom_keys", "backbone"),
             ("optim_wrapper", "paramwise_cfg", "custom_keys", "backbone", "lr_mult"),
             ("optim_wrapper", "paramwise_cfg", "norm_decay_mult"), ("optim_wrapper", "type")]

    def put(path, key, value):
        doc = json.loads(json.dumps(GOOD))
        at = doc
        for k in path[:-1]:
            at = at[k]
        at[path[-1] if key is None else key] = value
        return doc

    return st.builds(put, st.sampled_from(paths), st.one_of(st.none(), KEYS), st.one_of(DOCS, VALUES))


@given(st.one_of(DOCS, _mutated_good(), st.builds(lambda w: {"optim_wrapper": w}, DOCS)))
@PROPERTY
def test_random_mmengine_configs_are_a_recipe_or_a_spec_error(doc):
    try:
        recipe = from_mmengine_config(doc)
    except SpecError:
        return
    load_recipe(recipe)  # what the importer returns is a valid recipe


@given(st.one_of(DOCS, st.dictionaries(KEYS, VALUES, max_size=4)),
       st.one_of(VALUES, st.builds(dict, st.just(GOOD["optim_wrapper"]["optimizer"]))))
@PROPERTY
def test_random_paramwise_cfgs_and_optimizers_are_a_recipe_or_a_spec_error(cfg, optimizer):
    for kwargs in ({"optimizer": optimizer}, {"base_wd": 1e-4}):
        try:
            recipe = tunespec.from_mmengine(cfg, **kwargs)
        except SpecError:
            continue
        load_recipe(recipe)


@given(st.one_of(VALUES, st.lists(st.one_of(st.text(alphabet="ab.*?[]!-z", max_size=8), SCALARS), max_size=4)),
       st.one_of(st.floats(allow_nan=True), st.integers(-1, 3), st.none()), VALUES)
@PROPERTY
def test_random_timm_arguments_are_a_recipe_or_a_spec_error(no_wd, weight_decay, layer_decay):
    try:
        recipe = tunespec.from_timm(weight_decay=weight_decay, no_weight_decay_list=no_wd,
                                    layer_decay=layer_decay)
    except SpecError:
        return
    load_recipe(recipe)


# --- tunespec convert: one error line, never a traceback -------------------------------------------

@pytest.mark.parametrize("doc, match", [
    ({"optim_wrapper": {"optimizer": {"type": ["SGD"], "lr": 0.1}}}, "optimizer.type"),
    ({"optim_wrapper": {"optimizer": {"type": {"a": 1}, "lr": 0.1}}}, "optimizer.type"),
    ({"optim_wrapper": {"optimizer": {"type": "SGD", "lr": 0.1},
                        "paramwise_cfg": {"custom_keys": {"a": {"lr_mult": [1]}}}}}, "lr_mult"),
    ({"optim_wrapper": {"type": ["x"], "optimizer": {"type": "SGD"}}}, "optim_wrapper.type"),
    ({"optim_wrapper": {"constructor": {"a": 1}, "optimizer": {"type": "SGD"}}}, "optim_wrapper.constructor"),
    ({"optim_wrapper": [1]}, "optim_wrapper"),
    ([1, 2], "top level"),
])
def test_convert_prints_one_error_line(tmp_path, capsys, doc, match):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(doc))
    assert main(["convert", "--from", "mmengine", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunespec: error:") and "Traceback" not in err and match in err, err


# --- _base_ -----------------------------------------------------------------------------------------

def write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) if path.suffix == ".json" else _yaml(doc))
    return path


def _yaml(doc):
    import yaml

    return yaml.safe_dump(doc)


def test_base_is_merged_as_mmengine_merges_it_and_convert_keeps_the_bases_paramwise_cfg(tmp_path, capsys):
    write(tmp_path / "bases" / "schedule.yaml", {"optim_wrapper": GOOD["optim_wrapper"]})
    write(tmp_path / "bases" / "model.json", {"model": {"depth": 50}})
    child = write(tmp_path / "configs" / "child.yaml", {
        "_base_": ["../bases/schedule.yaml", "../bases/model.json"],
        "optim_wrapper": {"optimizer": {"lr": 0.01}}})
    config = read_config(str(child))
    assert config == {"model": {"depth": 50}, "optim_wrapper": {
        "optimizer": {**GOOD["optim_wrapper"]["optimizer"], "lr": 0.01},
        "paramwise_cfg": GOOD["optim_wrapper"]["paramwise_cfg"]}}
    assert main(["convert", "--from", "mmengine", str(child)]) == 0
    out = capsys.readouterr().out
    assert "backbone" in out and "lr: 0.01" in out  # the base's custom key, the child's lr


def test_delete_replaces_the_bases_mapping(tmp_path):
    write(tmp_path / "base.yaml", GOOD)
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml", "optim_wrapper": {
        "paramwise_cfg": {"_delete_": True, "bias_lr_mult": 2.0}}})
    assert read_config(str(child))["optim_wrapper"]["paramwise_cfg"] == {"bias_lr_mult": 2.0}


@pytest.mark.parametrize("case, match", [
    ("cycle", "inherits from itself"),
    ("self", "inherits from itself"),
    ("deep", "nests more than 8 levels"),
    ("python", r"_base_\[0\]: 'base.py' is a Python config"),
    ("package", "is a package's config"),
    ("variable", "refers to a base config's variable"),
    ("duplicate", "come from more than one base"),
    ("missing", "does not exist|cannot read"),
    ("fifo", "not a regular file"),
    ("wrong_type", r"_base_: expected a path or a list of paths"),
    ("delete_not_bool", r"_delete_: expected true or false"),
    ("mapping_over_scalar", "add _delete_: true"),
    ("too_many_files", "more than 32 files"),
])
def test_base_that_cannot_be_resolved_as_data_is_refused_by_name(tmp_path, capsys, case, match):
    child = tmp_path / "child.yaml"
    if case == "cycle":
        write(tmp_path / "a.yaml", {"_base_": "child.yaml"})
        write(child, {"_base_": "a.yaml", **GOOD})
    elif case == "self":
        write(child, {"_base_": "./child.yaml", **GOOD})
    elif case == "deep":
        for i in range(10):
            write(tmp_path / f"d{i}.yaml", {"_base_": f"d{i + 1}.yaml"} if i < 9 else GOOD)
        write(child, {"_base_": "d0.yaml"})
    elif case == "python":
        (tmp_path / "base.py").write_text("open('ran', 'w')\n")
        write(child, {"_base_": ["base.py"], **GOOD})
    elif case == "package":
        write(child, {"_base_": "mmdet::_base_/default_runtime.py", **GOOD})
    elif case == "variable":
        write(tmp_path / "base.yaml", {"lr": 0.1})
        write(child, {"_base_": "base.yaml", "optim_wrapper": {"optimizer": {"type": "SGD", "lr": "{{_base_.lr}}"}}})
    elif case == "duplicate":
        write(tmp_path / "a.yaml", GOOD)
        write(tmp_path / "b.json", GOOD)
        write(child, {"_base_": ["a.yaml", "b.json"]})
    elif case == "missing":
        write(child, {"_base_": "nowhere.yaml", **GOOD})
    elif case == "fifo":
        os.mkfifo(tmp_path / "pipe.yaml")
        write(child, {"_base_": "pipe.yaml", **GOOD})
    elif case == "wrong_type":
        write(child, {"_base_": {"a": 1}, **GOOD})
    elif case == "delete_not_bool":
        write(tmp_path / "base.yaml", GOOD)
        write(child, {"_base_": "base.yaml", "optim_wrapper": {"_delete_": "yes"}})
    elif case == "mapping_over_scalar":
        write(tmp_path / "base.yaml", {**GOOD, "model": 3})
        write(child, {"_base_": "base.yaml", "model": {"a": 1}})
    elif case == "too_many_files":
        for i in range(40):
            write(tmp_path / f"f{i}.yaml", {f"k{i}": i})
        write(tmp_path / "mid.yaml", {"_base_": [f"f{i}.yaml" for i in range(20)]})
        write(tmp_path / "mid2.yaml", {"_base_": [f"f{i}.yaml" for i in range(20, 40)]})
        write(child, {"_base_": ["mid.yaml", "mid2.yaml"], **GOOD})
    with pytest.raises(SpecError, match=match):
        read_config(str(child))
    assert main(["convert", "--from", "mmengine", str(child)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunespec: error:") and "Traceback" not in err
    assert not (tmp_path / "ran").exists()


# Random configs merged by tunespec and by mmengine.Config side by side.
LEAF = st.one_of(st.integers(-5, 5), st.text(alphabet="abc", max_size=3), st.booleans(), st.none())
NAMES = st.sampled_from(["a", "b", "c", "optim_wrapper", "model"])
TREE = st.recursive(LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=2),
    st.dictionaries(NAMES, inner, max_size=3),
    st.builds(lambda d: {**d, "_delete_": True}, st.dictionaries(NAMES, inner, min_size=1, max_size=3))),
    max_leaves=10)
CONFIG = st.dictionaries(NAMES, TREE, max_size=4)


def _no_delete_keys(value):
    if isinstance(value, dict):
        return {k: _no_delete_keys(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, list):
        return [_no_delete_keys(v) for v in value]
    return value


@needing("mmengine")
@given(st.lists(CONFIG, min_size=1, max_size=3), CONFIG, st.booleans())
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_random_bases_merge_as_mmengine_merges_them(tmp_path_factory, bases, child, nested):
    from mmengine.config import Config

    root = tmp_path_factory.mktemp("cfg")
    names = []
    for i, base in enumerate(bases):
        name = f"sub/b{i}.json" if nested else f"b{i}.yaml"
        write(root / name, base)
        names.append(name)
    path = write(root / "child.yaml", {"_base_": names, **child})
    try:
        ours = config_bases.read_with_bases(path)
    except SpecError as exc:
        with pytest.raises(Exception):  # mmengine refuses it too (duplicate keys, mapping over a value)
            Config.fromfile(str(path))
        assert re.search("more than one base|_delete_: true", str(exc)), exc
        return
    theirs = Config.fromfile(str(path)).to_dict()
    theirs.pop("_base_", None)
    assert ours == _no_delete_keys(theirs)
