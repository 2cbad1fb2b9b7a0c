"""Model cards: presets mean the same layers on torchvision and GluonCV ResNets."""

from __future__ import annotations

import pytest

from frameworks import needs

torch = needs("torch")
needs("mxnet")

import torchvision  # noqa: E402

import tunespec  # noqa: E402
from tunespec.backends.mxnet import import_gluoncv  # noqa: E402

EXPECTED = {  # preset -> top-level modules that train
    "heads": {"fc"},
    "5+": {"layer4", "fc"},
    "4+": {"layer3", "layer4", "fc"},
    "3+": {"layer2", "layer3", "layer4", "fc"},
    "all": {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"},
}


@pytest.fixture(scope="module")
def twins():
    gcv = import_gluoncv()
    return torchvision.models.resnet50(weights=None), gcv.model_zoo.get_model("resnet50_v1b", pretrained=False)


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_presets_pick_the_same_canonical_groups_in_both_frameworks(twins, preset):
    t, g = twins
    pt, pg = tunespec.plan(t, tunespec.Spec.preset(preset)), tunespec.plan(g, tunespec.Spec.preset(preset))
    trainable = {d.name for d in pt.trainable}
    assert trainable == {d.name for d in pg.trainable}
    assert {n.split(".")[0] for n in trainable} == EXPECTED[preset]
    assert {n.norm.name: n.frozen for n in pt.norms} == {n.norm.name: n.frozen for n in pg.norms}


def test_preset_combines_with_extra_rules_and_card_groups(twins, tmp_path):
    t, _ = twins
    spec = tunespec.Spec.preset("4+", lr_mult={"@heads": 10}, wd_mult={"@norm": 0})
    plan = tunespec.plan(t, spec)
    assert plan["fc.weight"].lr_mult == 10 and plan["layer3.0.bn1.weight"].wd_mult == 0
    assert not plan["layer2.0.conv1.weight"].trainable
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: 5+\nlr_mult: {'@heads': 10}\n")
    assert {d.name.split(".")[0] for d in tunespec.plan(t, recipe).trainable} == {"layer4", "fc"}


def test_preset_on_a_model_without_a_card_is_a_clear_error():
    with pytest.raises(tunespec.SpecError, match="no model card for torchvision.models.vgg.VGG"):
        tunespec.plan(torchvision.models.vgg11(weights=None), {"preset": "heads"})
