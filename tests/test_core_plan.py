"""Planning semantics, tested against the fake backend (no framework imported)."""

from __future__ import annotations

import re
import warnings

import pytest

from fake_backend import FakeBackend, FakeLayer, FakeTensor, fake_plan, linear, norm, small_net
from tunespec import Card, SpecError, StalePlanError, TuneSpecWarning, register_card
from tunespec.framework_facts import leaf_spellings
from tunespec.listing import ListingBuilder, norm_leaf


def settings(plan):
    return {d.name: (d.trainable, d.lr_mult, d.wd_mult) for d in plan.decisions}


def test_starts_all_trainable_and_later_rules_override_earlier_ones():
    plan = fake_plan(small_net(), {"freeze": [".*"], "train": ["fc\\..*"]})
    got = settings(plan)
    assert got["fc.weight"] == (True, 1.0, 1.0)
    assert all(not t for n, (t, _, _) in got.items() if not n.startswith("fc."))
    plan = fake_plan(small_net(), {"rules": [{"match": "fc\\..*", "lr_mult": 10},
                                             {"match": "fc\\.bias", "lr_mult": 2, "wd_mult": 0}]})
    assert settings(plan)["fc.weight"] == (True, 10.0, 1.0)
    assert settings(plan)["fc.bias"] == (True, 2.0, 0.0)
    assert plan["fc.bias"].rules == ["rules[0]", "rules[1]"]


def test_train_before_freeze_in_the_file_still_means_freeze_first():
    spec = {"train": ["fc\\..*"], "freeze": [".*"]}  # written in the "wrong" order
    assert settings(fake_plan(small_net(), spec))["fc.weight"][0] is True


def test_matching_is_fullmatch_not_search():
    plan = fake_plan(small_net(), {"freeze": ["layer1\\..*"]})
    assert not plan["layer1.0.conv.weight"].trainable
    assert plan["stem.conv.weight"].trainable
    with pytest.raises(SpecError, match="add '.\\*' at the end"):
        fake_plan(small_net(), {"freeze": ["layer1"]})


def test_builtin_groups_select_by_kind():
    plan = fake_plan(small_net(), {"wd_mult": {"@bias": 0}})
    assert [d.name for d in plan.decisions if d.wd_mult == 0] == [
        "stem.bn.bias", "layer1.0.bn.bias", "layer2.0.bn.bias", "fc.bias"]
    plan = fake_plan(small_net(), {"freeze": ["@norm"]})
    assert {d.name for d in plan.frozen} == {f"{p}.bn.{k}" for p in ("stem", "layer1.0", "layer2.0")
                                             for k in ("weight", "bias")}
    plan = fake_plan(small_net(), {"wd_mult": {"@1d": 0}})
    assert all((d.wd_mult == 0) == (len(d.tensor.shape) == 1) for d in plan.decisions)


def test_user_groups_and_unknown_group_reference():
    spec = {"groups": {"backbone": "(stem|layer\\d)\\..*"}, "freeze": ["@backbone"]}
    assert {d.name for d in fake_plan(small_net(), spec).trainable} == {"fc.weight", "fc.bias"}
    with pytest.raises(SpecError, match="unknown group '@backbon'.*@backbone"):
        fake_plan(small_net(), {"groups": {"backbone": "x"}, "freeze": ["@backbon"]})


def test_strict_miss_is_an_error_with_close_names_and_a_warning_when_not_strict():
    with pytest.raises(SpecError) as info:
        fake_plan(small_net(), {"freeze": ["layer3\\..*"]})
    msg = str(info.value)
    assert "freeze[0]" in msg and "layer3" in msg and "'layer2'" in msg and "strict: false" in msg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = fake_plan(small_net(), {"freeze": ["layer3\\..*"], "strict": False})
    assert any("matches no parameter" in str(w.message) for w in caught)
    assert not plan.frozen


def test_native_names_are_pointed_out_when_the_regex_matches_them():
    with pytest.raises(SpecError, match="framework's own name 'fc_weight'.*'fc.weight'"):
        fake_plan(small_net(), {"freeze": ["fc_.*"]})


def test_multiplier_landing_only_on_frozen_params_warns():
    with pytest.warns(TuneSpecWarning, match="lands only on frozen"):
        fake_plan(small_net(), {"freeze": ["stem\\..*"], "rules": [{"match": "stem\\..*", "lr_mult": 5}]})


def test_changed_flags_compare_with_current_settings():
    net = small_net()
    net.children["fc"].params["weight"].trainable = False
    plan = fake_plan(net, {"freeze": ["stem\\..*"]})
    changed = {d.name for d in plan.decisions if d.changed}
    assert changed == {"stem.conv.weight", "stem.bn.weight", "stem.bn.bias", "fc.weight"}


def test_tied_parameters_appear_once_and_rules_may_match_any_alias():
    net = small_net()
    shared = net.children["fc"].params["weight"]
    net.children["head2"] = FakeLayer("linear", {"weight": shared})
    plan = fake_plan(net, {"freeze": ["head2\\.weight"]})
    names = [d.name for d in plan.decisions]
    assert names.count("fc.weight") == 1 and "head2.weight" not in names
    assert plan["fc.weight"].tensor.aliases == ("head2.weight",)
    assert not plan["head2.weight"].trainable


def test_wrapper_segments_are_stripped_and_norm_leaves_renamed():
    wrapped = FakeLayer("wrapper", children={"module": small_net()})
    plan = fake_plan(wrapped, {"freeze": ["stem\\..*"]})
    assert plan.decisions[0].name == "stem.conv.weight"
    spellings = leaf_spellings()  # every registered backend's
    assert norm_leaf("gamma", spellings) == "weight" and norm_leaf("mobilenet0_batchnorm0_beta", spellings) == \
        "mobilenet0_batchnorm0_bias" and norm_leaf("weight", spellings) == "weight"
    found = ListingBuilder(spellings)
    found.layer(("ddp", "module", "features", "bn"), "BatchNorm", True, wrappers={1})
    found.add("g", "gamma")
    found.layer(("features", "conv"), "Conv2D")
    found.add("c", "gamma")  # only norm layers' leaves are respelled
    listing = found.build("fake.Net")
    assert listing.names == ["ddp.features.bn.weight", "features.conv.gamma"]
    assert listing.natives == ["ddp.module.features.bn.gamma", "features.conv.gamma"]


def test_state_tensors_are_reported_never_planned():
    plan = fake_plan(small_net(), {"freeze": [".*"]})
    assert all(not d.tensor.is_state for d in plan.decisions)
    assert {t.canonical for t in plan.listing.state} >= {"stem.bn.running_mean", "stem.bn.running_var"}
    with pytest.raises(SpecError):  # rules never match state
        fake_plan(small_net(), {"freeze": [".*running_mean"]})


def test_bn_policies():
    spec = {"freeze": ["stem\\..*"]}
    frozen = lambda p: {n.norm.name for n in p.norms if n.frozen}  # noqa: E731
    assert frozen(fake_plan(small_net(), spec)) == {"stem.bn"}  # freeze_frozen (default)
    assert frozen(fake_plan(small_net(), {**spec, "bn": "train"})) == set()
    assert frozen(fake_plan(small_net(), {**spec, "bn": "freeze"})) == {"stem.bn", "layer1.0.bn", "layer2.0.bn"}
    # half-frozen affine: statistics keep updating under freeze_frozen
    assert frozen(fake_plan(small_net(), {"freeze": ["stem\\.bn\\.weight"]})) == set()


def test_affine_less_norm_follows_its_enclosing_module():
    net = small_net()
    net.children["layer1"].children["0"].children["bn"] = norm(8, affine=False)
    names = lambda p: {n.norm.name for n in p.norms if n.frozen}  # noqa: E731
    assert "layer1.0.bn" in names(fake_plan(net, {"freeze": ["layer1\\..*"]}))
    assert "layer1.0.bn" not in names(fake_plan(net, {"freeze": ["stem\\..*"]}))


def test_apply_sets_everything_restore_undoes_it():
    net, be = small_net(), FakeBackend()
    fc_w = net.children["fc"].params["weight"]
    fc_w.grad = 1.0
    stem_w = net.children["stem"].children["conv"].params["weight"]
    stem_w.grad = 3.0
    plan = fake_plan(net, {"freeze": ["stem\\..*"], "lr_mult": {"fc\\..*": 10}}, be)
    assert stem_w.trainable and fc_w.lr_mult == 1.0  # planning has no side effects
    plan.apply()
    assert not stem_w.trainable and stem_w.grad is None  # stale gradient of a newly frozen tensor
    assert fc_w.lr_mult == 10.0 and fc_w.grad == 1.0
    assert net.children["stem"].children["bn"].stats_frozen
    assert be.commits == 1
    plan.restore()
    assert stem_w.trainable and fc_w.lr_mult == 1.0
    assert not net.children["stem"].children["bn"].stats_frozen


def test_failed_apply_leaves_the_model_as_it_was():
    net, be = small_net(), FakeBackend()
    plan = fake_plan(net, {"freeze": [".*"]}, be)
    be.fail_on = "norm"
    with pytest.raises(RuntimeError):
        plan.apply()
    assert all(d.tensor.handle.trainable for d in plan.decisions)
    assert not plan.applied


def test_stale_plan_is_detected_at_apply_optimizer_and_check():
    net = small_net()
    plan = fake_plan(net, {"freeze": ["stem\\..*"]})
    net.children["fc"] = linear(5, 8)  # like GluonCV reset_class / a new torch head
    for action in (plan.apply, lambda: plan.optimizer("sgd", lr=0.1), lambda: plan.check([])):
        with pytest.raises(StalePlanError, match="fc.weight.*re-plan"):
            action()
    assert net.children["stem"].children["conv"].params["weight"].trainable


def test_verify_names_changed_frozen_params_and_stats():
    net = small_net()
    plan = fake_plan(net, {"freeze": ["stem\\..*"]}).apply()
    assert plan.verify().ok
    net.children["layer1"].children["0"].children["conv"].params["weight"].value = 5.0  # trainable
    assert plan.verify().ok
    net.children["stem"].children["conv"].params["weight"].value = 1.0
    net.children["stem"].children["bn"].stats["running_mean"].value = 2.0
    report = plan.verify()
    assert report.changed_params == ["stem.conv.weight"]
    assert report.changed_stats == ["stem.bn.running_mean"]
    with pytest.raises(AssertionError, match="stem.conv.weight"):
        report.raise_if_changed()


def test_param_groups_one_per_distinct_multipliers_in_first_appearance_order():
    spec = {"freeze": ["stem\\..*"], "lr_mult": {"fc\\..*": 10}, "wd_mult": {"@bias": 0}}
    plan = fake_plan(small_net(), spec)
    groups = plan.param_groups(lr=0.1, weight_decay=1e-4)
    assert [(g["lr_mult"], g["wd_mult"]) for g in groups] == [(1.0, 1.0), (1.0, 0.0), (10.0, 1.0), (10.0, 0.0)]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.1, 1e-4), (0.1, 0.0), (1.0, 1e-4), (1.0, 0.0)]
    assert groups[2]["param_names"] == ["fc.weight"]
    assert sum(len(g["params"]) for g in groups) == len(plan.trainable)
    with pytest.raises(SpecError, match="give lr"):
        plan.param_groups()


def test_check_rejects_optimizers_holding_frozen_or_missing_trainable():
    plan = fake_plan(small_net(), {"freeze": ["stem\\..*"]}).apply()
    everything = [d.tensor.handle for d in plan.decisions]
    with pytest.raises(SpecError, match="frozen parameter.*stem.conv.weight.*built before freezing"):
        plan.check(everything)
    with pytest.raises(SpecError, match="misses 1 trainable.*fc.bias"):
        plan.check([d.tensor.handle for d in plan.trainable if d.name != "fc.bias"])
    plan.check([d.tensor.handle for d in plan.trainable])


def test_optimizer_applies_first_and_needs_lr():
    net = small_net()
    plan = fake_plan(net, {"freeze": ["stem\\..*"]})
    with pytest.raises(SpecError, match="give lr"):
        plan.optimizer("sgd")
    groups = plan.optimizer("sgd", lr=0.1, momentum=0.9)
    assert plan.applied and groups[0]["momentum"] == 0.9
    assert not net.children["stem"].children["conv"].params["weight"].trainable


def test_summary_and_to_dict_and_table():
    plan = fake_plan(small_net(), {"freeze": ["stem\\..*"], "lr_mult": {"fc\\..*": 10}})
    s = plan.summary(lr=0.01)
    assert (s["tensors"], s["trainable_tensors"], s["frozen_tensors"]) == (11, 8, 3)
    assert s["elements"] == sum(d.tensor.numel for d in plan.decisions)
    assert [g["lr"] for g in s["groups"]] == [0.01, 0.1]
    d = plan.to_dict()
    assert d["params"][0]["name"] == "stem.conv.weight" and d["params"][0]["trainable"] is False
    text = str(plan)
    assert "stem.conv.weight" in text and "frozen 3 tensors" in text
    collapsed = plan.table(full=False)
    assert "layer1.*" in collapsed and "layer1.0.conv.weight" not in collapsed


def test_presets_need_a_card():
    with pytest.raises(SpecError, match="no model card for fake.Net"):
        fake_plan(small_net(), {"preset": "heads"})
    register_card("fake.Net", Card("fake", groups={"heads": "fc\\..*"},
                                   presets={"heads": ({"match": ".*", "trainable": False},
                                                      {"match": "@heads", "trainable": True})}))
    plan = fake_plan(small_net(), {"preset": "heads", "lr_mult": {"@heads": 10}})
    assert {d.name for d in plan.trainable} == {"fc.weight", "fc.bias"}
    assert plan["fc.weight"].lr_mult == 10
    with pytest.raises(SpecError, match="preset '4\\+' is not defined for fake"):
        fake_plan(small_net(), {"preset": "4+"})


def test_one_d_needs_shapes():
    net = FakeLayer("container", children={"fc": FakeLayer("linear", {"weight": FakeTensor(None)})})
    with pytest.raises(SpecError, match="@1d needs tensor shapes"):
        fake_plan(net, {"wd_mult": {"@1d": 0}})


@pytest.mark.parametrize("regex", [
    r"layer1\..*", r"layer1\.0\.conv\.weight", r"(?:stem|fc)\..*", r"stem|fc\.bias", r".*\.bias",
    r"(?i)FC\..*", r"la[y]er2\..*", r"layer\d\..*", r"fc\.(weight|bias)", r"st.m\..*", r"head2\.weight",
])
def test_indexed_matching_equals_brute_force(regex):
    from tunespec.planning.matching import Matcher, literal_prefix

    net = small_net()
    net.children["head2"] = FakeLayer("linear", {"weight": net.children["fc"].params["weight"]})
    listing = FakeBackend().listing(net)
    params = listing.params
    pattern = re.compile(regex)
    brute = [i for i, t in enumerate(params)
             if any(pattern.fullmatch(n) for n in (t.canonical, *t.aliases))]
    assert Matcher(listing).select(regex, {}, "rules[0]") == brute
    assert all(n.startswith(literal_prefix(regex)) for t in params for n in (t.canonical,)
               if pattern.fullmatch(n))


def test_literal_prefixes():
    from tunespec.planning.matching import literal_prefix

    assert literal_prefix(r"layer4\..*") == "layer4."
    assert literal_prefix(r"blocks\.3\.experts\.1[0-9]\..*") == "blocks.3.experts.1"
    assert literal_prefix(r"(?i)fc\..*") == "" and literal_prefix(r"a|b") == "" and literal_prefix(".*") == ""
