"""tunespec convert --from mmengine CONFIG: a config's optim_wrapper as a recipe YAML."""

from __future__ import annotations

import json

import pytest

import tunespec
from frameworks import needing
from tunespec.cli import main

yaml = pytest.importorskip("yaml")

OPTIM_WRAPPER = {
    "type": "OptimWrapper",
    "optimizer": {"type": "SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4},
    "paramwise_cfg": {"norm_decay_mult": 0.0, "bias_lr_mult": 2.0,
                      "custom_keys": {"backbone": {"lr_mult": 0.1}, "head": {"lr_mult": 10.0, "decay_mult": 0.0}}},
}
PY_CONFIG = """\
open({marker!r}, "w").write("ran")
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_lr_mult=2.0,
                       custom_keys={{'backbone': dict(lr_mult=0.1), 'head': dict(lr_mult=10.0, decay_mult=0.0)}}))
"""


def expected():
    return tunespec.from_mmengine(OPTIM_WRAPPER["paramwise_cfg"], optimizer=OPTIM_WRAPPER["optimizer"])


def test_json_config_prints_the_recipe(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": {"type": "X"}, "optim_wrapper": OPTIM_WRAPPER}))
    assert main(["convert", "--from", "mmengine", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# converted from")
    assert yaml.safe_load(out) == expected()
    assert yaml.safe_load(out)["optimizer"] == {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4}


def test_yaml_config_to_a_recipe_file_that_loads(tmp_path, capsys):
    path, out = tmp_path / "cfg.yaml", tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"optim_wrapper": OPTIM_WRAPPER}))
    assert main(["convert", "--from", "mmengine", str(path), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    recipe = tunespec.load_recipe(out)
    assert recipe.optimizer.lr == 0.02 and recipe.spec.strict is False
    assert yaml.safe_load(out.read_text()) == expected()


def test_python_config_is_not_run_without_opt_in(tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "cfg.py"
    path.write_text(PY_CONFIG.format(marker=str(marker)))
    assert main(["convert", "--from", "mmengine", str(path)]) == 2
    assert "--exec-config" in capsys.readouterr().err
    assert not marker.exists()


@needing("mmengine")
def test_python_config_with_opt_in_reads_through_mmengine(tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "cfg.py"
    path.write_text(PY_CONFIG.format(marker=str(marker)))
    assert main(["convert", "--from", "mmengine", str(path), "--exec-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == expected()
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("wrapper, fragment", [
    ({**OPTIM_WRAPPER, "clip_grad": {"max_norm": 1}}, "optim_wrapper.'clip_grad': not converted"),
    ({**OPTIM_WRAPPER, "constructor": "LayerDecayOptimWrapperConstructor"}, "constructor"),
    ({"paramwise_cfg": {}}, "no optimizer"),
    ({**OPTIM_WRAPPER, "paramwise_cfg": {"bypass_duplicate": True}}, "bypass_duplicate"),
])
def test_unconvertible_configs_fail_naming_the_key(tmp_path, capsys, wrapper, fragment):
    path, out = tmp_path / "cfg.json", tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"optim_wrapper": wrapper}))
    assert main(["convert", "--from", "mmengine", str(path), "--out", str(out)]) == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def test_a_config_without_optim_wrapper(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"optim_wraper": OPTIM_WRAPPER}))
    assert main(["convert", "--from", "mmengine", str(path)]) == 2
    assert "is 'optim_wraper' a misspelling" in capsys.readouterr().err
