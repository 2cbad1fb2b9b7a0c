"""Hostile and broken third-party backends: refused whole, and never a change to the others.

``register_backend`` checks a FrameworkFacts record field by field (types, a valid
``ignored_state`` regex, a ``str -> str`` ``leaf_spellings``, semantics shared with the others, a
well-formed ``'module:attr'``) and refuses one that would take over what another backend declared
(a suffix, a zoo, an option, a leaf spelling, the default semantics). An entry point with such a
record is skipped with a warning, in a fresh process. A registered backend that is broken when it
is loaded (its module missing, its object not a backend, its ``owns`` raising) is a SpecError when
named and skipped with a warning when dispatch looks for a model's backend. ``plan(object())``
is a SpecError. Each test checks that the built-in backends still plan, apply and build
optimizers exactly as before (tests/snapshot.py), and that the facts derived from them are equal.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tunespec
from frameworks import needs
from snapshot import assert_unchanged, state_of
from tunespec import FrameworkFacts, SpecError, registry
from tunespec import framework_facts as derived
from tunespec.cli import zoos
from tunespec.recipe.validate import optimizer_tables

BUILT_IN = registry.registered()
TORCH_SEMANTICS = BUILT_IN["torch"].semantics  # what torch offers; MXNet offers more
MXNET_ONLY = next(s for s in BUILT_IN["mxnet"].semantics if s not in TORCH_SEMANTICS)
THIRD = FrameworkFacts(name="third", framework="third_fw", backend="third_backend:BACKEND",
                       file_suffixes=(".third",), semantics=TORCH_SEMANTICS)
RECIPE = {"freeze": [r"0\..*"], "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
NAMES = ["0.weight", "1.running_mean", "1.num_batches_tracked", "bn.gamma", "layer1.0.bn1.num_batches_tracked"]


def derived_facts():
    """Everything the core derives from the registered backends, as the built-in ones see it."""
    return {"spellings": dict(derived.leaf_spellings()), "default": derived.default_semantics(),
            "semantics": derived.semantics_names(), "options": dict(derived.framework_options()),
            "suffixes": {s: derived.reader_for_suffix(s) for s in (".pt", ".pth", ".params", ".bin", ".xyz")},
            "ignored": {(n, b): derived.is_ignored_state(n, b) for n in NAMES for b in ("torch", "mxnet")},
            "segments": derived.wrapper_segments(), "prefixes": derived.wrapper_prefixes(),
            "zoos": zoos(),
            "tables": {k: sorted(v) for k, v in optimizer_tables(derived.framework_options()).items()}}


def behaviour(h):
    """A plan, apply and optimizer on a small model: the run's whole state after them."""
    if h.name == "torch":
        h.torch.manual_seed(0)
        net = h.small_cnn()
    else:
        h.mx.random.seed(0)
        with h.mx.name.NameManager():  # the same Gluon names every time
            net = h.small_cnn()
    opt = tunespec.optimizer(net, RECIPE)
    return state_of(net, opt)


@pytest.fixture
def clean_registry():
    names = set(registry.registered())
    yield
    for name in set(registry.registered()) - names:
        registry.unregister_backend(name)


BAD = [
    ("name", 3, "name must be"), ("name", "", "name must be"), ("name", "two words", "name must be"),
    ("framework", None, "framework must be"), ("framework", "no such", "framework must be"),
    ("backend", "nocolon", "backend must be 'module:attr'"), ("backend", "a:b:c", "backend must be"),
    ("backend", ":BACKEND", "backend must be"), ("backend", 7, "backend must be"),
    ("extra", 1, "extra must be a string"), ("model_type", None, "model_type must be a string"),
    ("reads_other_files", "yes", "reads_other_files must be True or False"),
    ("file_suffixes", ".x", "file_suffixes must be a tuple"), ("file_suffixes", ("x",), "with the dot"),
    ("file_suffixes", (".PT",), "lower-case"), ("file_suffixes", (".pt",), "'.pt' belong.*'torch'"),
    ("file_suffixes", (".params",), "belong.*'mxnet'"),
    ("wrapper_segments", ["a"], "must be a tuple"), ("wrapper_segments", ("a.b",), "without dots"),
    ("wrapper_prefixes", ("",), "non-empty strings"),
    ("ignored_state", "(", "ignored_state must be a valid regex"), ("ignored_state", "[z-a]", "valid regex"),
    ("ignored_state", 5, "ignored_state must be a regex"),
    ("leaf_spellings", [("gamma", "weight")], "leaf_spellings must be a mapping"),
    ("leaf_spellings", {"gamma": 1}, "leaf_spellings must be"), ("leaf_spellings", {1: "x"}, "leaf_spellings"),
    ("leaf_spellings", {"weight": "kernel"}, "would rename backend"),
    ("leaf_spellings", {"gamma": "scale"}, "would rename backend 'mxnet'"),
    ("semantics", ("mine",), "share no default"), ("semantics", (MXNET_ONLY,), "share no default"),
    ("semantics", "torch", "must be a tuple"), ("semantics", (None,), "must be a tuple"),
    ("optimizer_options", {"momentum": "boolean"}, "update-rule options"),
    ("optimizer_options", {"clip_gradient": "boolean"}, "belong.*'mxnet'"),
    ("optimizer_options", {"x": "anything"}, "optimizer_options must be"),
    ("optimizer_options", ["x"], "optimizer_options must be"),
    ("zoos", ("torchvision",), "belong.*'torch'"), ("zoos", ("gluoncv", 3), "tuple of non-empty strings"),
    ("weight_layouts", {"default": ("rows",)}, "weight_layouts must be"),
    ("weight_layouts", {"nokind": ("out",)}, "weight_layouts must be"),
    ("server_role_variable", None, "server_role_variable must be a string"),
]


@pytest.mark.parametrize("field, value, match", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_register_backend_refuses_a_broken_record_naming_the_field(h, clean_registry, field, value, match):
    before, facts, run = registry.registered(), derived_facts(), behaviour(h)
    with pytest.raises(SpecError, match=match):
        tunespec.register_backend(dataclasses.replace(THIRD, **{field: value}))
    assert registry.registered() == before and derived_facts() == facts
    assert_unchanged(run, behaviour(h))


def test_a_good_third_party_record_adds_without_changing_the_others(h, clean_registry):
    facts, run = derived_facts(), behaviour(h)
    tunespec.register_backend(dataclasses.replace(
        THIRD, leaf_spellings={"scale": "weight"}, optimizer_options={"clip_gradient": "optional_positive"},
        semantics=("mine", *TORCH_SEMANTICS), ignored_state="(?i).*STEPS", zoos=("thirdzoo",)))
    now = derived_facts()
    assert now["spellings"] == {**facts["spellings"], "scale": "weight"}
    assert now["zoos"] == {**facts["zoos"], "thirdzoo": "third"}
    assert now["semantics"] == (*facts["semantics"], "mine")
    assert {k: v for k, v in now.items() if k not in ("spellings", "semantics", "zoos")} == \
        {k: v for k, v in facts.items() if k not in ("spellings", "semantics", "zoos")}
    assert derived.is_ignored_state("a.steps") and not derived.is_ignored_state("a.steps", "torch")
    assert_unchanged(run, behaviour(h))


def _install(module_name, source):
    """A module made from ``source`` (monkeypatch puts it into sys.modules for one test)."""
    module = types.ModuleType(module_name)
    exec(textwrap.dedent(source), module.__dict__)
    return module


@pytest.mark.parametrize("case, match", [
    ("missing_module", "cannot be imported"),
    ("missing_attr", "cannot be imported"),
    ("not_a_backend", "not a tunespec backend"),
    ("wrong_name", "not a tunespec backend named 'third'"),
])
def test_a_registered_backend_broken_when_loaded_is_a_spec_error_and_dispatch_skips_it(
        h, clean_registry, monkeypatch, case, match):
    """The framework module is imported (so dispatch asks the backend), the backend object is not
    what its facts promise: named, it is a SpecError; looking for a model's backend skips it."""
    monkeypatch.setitem(sys.modules, "third_fw", types.ModuleType("third_fw"))
    if case != "missing_module":
        source = {"missing_attr": "", "not_a_backend": "BACKEND = object()",
                  "wrong_name": "from tunespec.backends.torch import BACKEND"}[case]
        monkeypatch.setitem(sys.modules, "third_backend", _install("third_backend", source))
    run = behaviour(h)
    tunespec.register_backend(THIRD)
    with pytest.raises(SpecError, match=match):
        tunespec.plan(h.small_cnn(), RECIPE, backend="third")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert_unchanged(run, behaviour(h))
        with pytest.raises(SpecError, match="cannot tell which framework builtins.object"):
            tunespec.plan(object(), {})


def test_a_backend_whose_owns_raises_is_skipped(h, clean_registry, monkeypatch):
    source = '''
        from tunespec.backends.torch import BACKEND as _TORCH

        class Broken(type(_TORCH)):
            name = "third"

            def owns(self, model):
                raise RuntimeError("third party bug")

            def owns_optimizer(self, optimizer):
                raise RuntimeError("third party bug")

        BACKEND = Broken()
    '''
    monkeypatch.setitem(sys.modules, "third_fw", _install("third_fw", ""))
    needs("torch")
    monkeypatch.setitem(sys.modules, "third_backend", _install("third_backend", source))
    run = behaviour(h)
    tunespec.register_backend(THIRD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_unchanged(run, behaviour(h))
        with pytest.raises(SpecError, match="cannot tell which framework"):
            tunespec.plan(object(), {})
    assert any("backend 'third' skipped: third party bug" in str(w.message) for w in caught) or \
        "third" in registry.registered()  # warned once per process: an earlier test may have seen it


@pytest.mark.parametrize("model", [object(), None, 3, "resnet18", [], {"weight": 1}, type])
def test_plan_of_a_non_model_is_a_spec_error(model):
    with pytest.raises(SpecError, match="cannot tell which framework|expected"):
        tunespec.plan(model, {})


# --- random records -----------------------------------------------------------------------------

ANY = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.text(max_size=5),
                st.sampled_from(["(", ".pt", "torch", "weight", "gamma", "mod:attr", "(?i)x", "[z-a]"]),
                st.lists(st.text(max_size=3), max_size=2))
STRINGS = st.tuples(*[st.sampled_from([".pt", ".x", "x", "", "A", "torch", "native", "mine", "a.b", "seg"])] * 2)
FIELDS = {
    "name": st.one_of(st.sampled_from(["third", "", "a b", "torch"]), ANY),
    "framework": st.one_of(st.sampled_from(["third_fw", "x.y", "1x"]), ANY),
    "backend": st.one_of(st.sampled_from(["m:A", "m.n:A", "m:", ":A", "m:A:B"]), ANY),
    "file_suffixes": st.one_of(STRINGS, ANY), "wrapper_segments": st.one_of(STRINGS, ANY),
    "semantics": st.one_of(STRINGS, ANY, st.just(TORCH_SEMANTICS), st.just((MXNET_ONLY,))), "zoos": st.one_of(STRINGS, ANY),
    "ignored_state": st.one_of(st.sampled_from(["", "(", "x", "(?i)y", "[a-", "(a)\\1"]), ANY),
    "leaf_spellings": st.one_of(st.dictionaries(st.sampled_from(["gamma", "weight", "scale", "k", "1"]),
                                                st.one_of(st.sampled_from(["weight", "bias", "s"]), ANY),
                                                max_size=2), ANY),
    "optimizer_options": st.one_of(st.dictionaries(st.sampled_from(["momentum", "clip_gradient", "x"]),
                                                   st.sampled_from(["boolean", "positive", "nope"]),
                                                   max_size=2), ANY),
    "reads_other_files": st.one_of(st.booleans(), ANY),
    "extra": ANY, "model_type": ANY,
}


@given(st.fixed_dictionaries({}, optional=FIELDS))
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_random_records_are_refused_or_change_nothing_the_others_do(clean_registry, fields):
    before, facts = registry.registered(), derived_facts()
    try:
        tunespec.register_backend(dataclasses.replace(THIRD, **fields))
    except SpecError:
        assert registry.registered() == before and derived_facts() == facts
        return
    try:
        now = derived_facts()
        for key in ("default", "options", "suffixes", "ignored", "zoos", "tables"):
            if key in ("options", "zoos"):  # may grow, never change an existing entry
                assert {k: now[key][k] for k in facts[key]} == facts[key]
            elif key == "tables":
                assert all(set(facts[key][k]) <= set(now[key][k]) for k in facts[key])
            else:
                assert now[key] == facts[key], key
        assert {k: now["spellings"][k] for k in facts["spellings"]} == facts["spellings"]
    finally:
        for name in set(registry.registered()) - set(before):
            registry.unregister_backend(name)


# --- entry points, in a fresh process ----------------------------------------------------------------

BROKEN_FACTS = {
    "bad_regex": 'dataclasses.replace(BASE, name="ep_bad", ignored_state="(")',
    "wrong_spellings": 'dataclasses.replace(BASE, name="ep_bad", leaf_spellings=[("gamma", "weight")])',
    "foreign_semantics": 'dataclasses.replace(BASE, name="ep_bad", semantics=("mine",))',
    "takes_pt": 'dataclasses.replace(BASE, name="ep_bad", file_suffixes=(".pt",))',
    "not_facts": '{"name": "ep_bad"}',
    "int_name": 'dataclasses.replace(BASE, name=3)',
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FACTS))
def test_a_broken_entry_point_is_skipped_with_a_warning_and_torch_works_as_before(tmp_path, kind):
    """In a fresh process with the broken package installed: the warning names it, the torch
    backend's load, port and optimizer give what a process without it gives."""
    needs("torch")
    dist = tmp_path / "eppkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: eppkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tunespec.backends]\nep_bad = eppkg_facts:FACTS\n")
    (tmp_path / "eppkg_facts.py").write_text(textwrap.dedent(f'''
        import dataclasses
        from tunespec import FrameworkFacts
        BASE = FrameworkFacts(name="ep_bad", framework="sys", backend="eppkg_facts:BACKEND")
        FACTS = {BROKEN_FACTS[kind]}
    '''))
    code = textwrap.dedent('''
        import hashlib, io, json, warnings
        import torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import tunespec
            from tunespec import registry
            names = sorted(registry.registered())
            torch.manual_seed(0)
            a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
            b = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
            report = tunespec.port(a, b)
            buf = io.BytesIO()
            torch.save(a.state_dict(), buf)
            path = "w.pt"
            open(path, "wb").write(buf.getvalue())
            loaded = tunespec.load(b, path)
            opt = tunespec.optimizer(b, {"freeze": ["0\\\\..*"], "optimizer": {"name": "sgd", "lr": 0.1}})
        out = {"names": names, "port": str(report), "load": str(loaded),
               "groups": [len(g["params"]) for g in opt.param_groups],
               "weights": hashlib.sha256(b[1].running_mean.numpy().tobytes()).hexdigest(),
               "warnings": [str(w.message) for w in caught if "tunespec" in str(w.message)]}
        print(json.dumps(out))
    ''')
    base_env = dict(os.environ)

    def run(with_package):
        paths = [str(tmp_path)] if with_package else []
        env = dict(base_env, PYTHONPATH=os.pathsep.join(paths + [base_env.get("PYTHONPATH", "")]))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        import json

        return json.loads(out.stdout.strip().splitlines()[-1])

    broken, clean = run(True), run(False)
    assert any("ep_bad" in w and "skipped" in w for w in broken["warnings"]), broken["warnings"]
    assert "ep_bad" not in broken["names"]
    assert {k: v for k, v in broken.items() if k != "warnings"} == {k: v for k, v in clean.items() if k != "warnings"}
