"""A backend written outside the package tree (tests/fake_backend.py), joined through the public
registry: planned, applied, restored, optimised, loaded into, staged and cut with no edit to src/."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tunespec
from fake_backend import BACKEND, FACTS, FakeArray, FakeOptimizer, save_fake, small_net
from tunespec import SpecError, registry
from tunespec.backend_api import (Backend, CheckpointFiles, GraphTracing, ModelZoo, require)

UNFREEZE = {"freeze": [".*"], "train": [r"fc\..*"]}


def tensor(net, name):
    return {t.canonical: t.handle for t in BACKEND.listing(net).tensors}[name]


def test_the_fake_backend_is_registered_and_implements_the_whole_required_protocol():
    assert registry.registered()["fake"] is FACTS
    assert isinstance(BACKEND, Backend)
    required = [k for k, v in vars(Backend).items() if callable(v) and not k.startswith("_")]
    assert {"export_optimizer", "import_optimizer", "lr_state", "install_lrs"} <= set(required)
    assert len(required) == 21 and all(callable(getattr(BACKEND, k)) for k in required)
    for capability in (CheckpointFiles, GraphTracing):
        assert require(BACKEND, capability, "test") is BACKEND


def test_dispatch_finds_it_by_the_model_type_and_plans_applies_restores():
    net = small_net()
    plan = tunespec.plan(net, UNFREEZE)
    assert plan.backend is BACKEND and plan.backend_name == "fake"
    plan.apply()
    assert not tensor(net, "stem.conv.weight").trainable and tensor(net, "fc.weight").trainable
    plan.restore()
    assert tensor(net, "stem.conv.weight").trainable


def test_optimizer_groups_carry_the_core_s_lrs():
    net = small_net()
    opt = tunespec.optimizer(net, {**UNFREEZE, "lr_mult": {r"fc\.bias": 10}}, "sgd", lr=0.1, momentum=0.9)
    assert isinstance(opt, FakeOptimizer)
    assert sorted(g["lr"] for g in opt) == [0.1, 1.0]
    assert {id(p) for g in opt for p in g["params"]} == {id(tensor(net, "fc.weight")), id(tensor(net, "fc.bias"))}
    assert all(g["momentum"] == 0.9 for g in opt)


def test_a_missing_capability_is_one_clear_error():
    class Bare:
        name = "bare"

    with pytest.raises(SpecError, match="'bare' backend lacks the ModelZoo capability.*build_model"):
        require(Bare(), ModelZoo, "--model x:y")


def test_loading_a_fake_checkpoint_by_suffix_and_a_mapping(tmp_path):
    net = small_net()
    path = tmp_path / "weights.fake"
    save_fake(path, {"fc.weight": FakeArray((10, 8), 3.0), "fc.bias": FakeArray((10,), 4.0)})
    report = tunespec.load(net, path, strict=False)
    assert sorted(report.loaded) == ["fc.bias", "fc.weight"] and "stem.conv.weight" in report.missing
    assert tensor(net, "fc.weight").value == 3.0
    with pytest.raises(SpecError, match="shape"):
        tunespec.load(net, {"fc.bias": FakeArray((11,), 1.0)})
    assert tensor(net, "fc.bias").value == 4.0  # a refused load writes nothing


def test_stages_unfreeze_and_regroup_the_fake_optimizer():
    recipe = {**UNFREEZE, "stages": {"then": [{"at_epoch": 1, "freeze": [], "train": [".*"], "lr_factor": 0.5}]},
              "optimizer": {"name": "sgd", "lr": 0.1}}
    net = small_net()
    schedule = tunespec.StageRunner(recipe)
    net, opt = schedule.start(net)
    assert len(BACKEND.optimizer_handles(opt)) == 2
    net, opt = schedule.step(0, net, opt)
    assert schedule.index == 1 and tensor(net, "stem.conv.weight").trainable
    assert len(BACKEND.optimizer_handles(opt)) == len(tunespec.plan(net, {}).trainable)
    assert sorted({g["lr"] for g in opt}) == [0.05, 0.1]  # newly unfrozen at lr x lr_factor


def test_cache_frozen_cuts_the_fake_graph_through_the_capability():
    net = small_net()
    prefix = tunespec.cache_frozen(net, {"freeze": ["stem\\..*", "layer1\\..*"], "bn": "freeze_frozen"},
                                   split="layer2")
    assert prefix.features("x") == ("front", 2, "x")
    with pytest.raises(SpecError, match="layer1.0.conv.weight. is used before .layer2. but trains"):
        tunespec.cache_frozen(small_net(), {"freeze": ["stem\\..*"]}, split="layer2")


def test_a_backend_joins_through_an_entry_point_without_any_edit(tmp_path):
    """A package on sys.path that declares a tunespec.backends entry point is found by a fresh
    process, and its models are planned with no register call."""
    dist = tmp_path / "fakepkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tunespec.backends]\nfake2 = fakepkg_facts:FACTS\n")
    (tmp_path / "fakepkg_facts.py").write_text(textwrap.dedent('''
        import dataclasses, fake_backend

        class OtherFake(fake_backend.FakeBackend):
            name = "fake2"

        BACKEND = OtherFake()
        FACTS = dataclasses.replace(fake_backend.FACTS, name="fake2", backend="fakepkg_facts:BACKEND",
                                    file_suffixes=(".fake2",))  # '.fake' is fake's
    '''))
    code = textwrap.dedent('''
        import tunespec
        from tunespec import registry
        names = list(registry.registered())
        registry.unregister_backend("fake")  # fake_backend registers itself on import; only fake2 stays
        import fake_backend
        plan = tunespec.plan(fake_backend.small_net(), {"freeze": ["stem\\\\..*"]})
        print("fake2" in names, plan.backend_name, len(plan.trainable))
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).parent)]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.split() == ["True", "fake2", "8"], out.stdout + out.stderr


def test_register_backend_refuses_bad_facts_and_a_taken_name():
    import dataclasses

    with pytest.raises(SpecError, match="expected tunespec.FrameworkFacts"):
        tunespec.register_backend({"name": "x"})
    with pytest.raises(SpecError, match="backend='module:attr'"):
        tunespec.register_backend(dataclasses.replace(FACTS, name="x", backend="nocolon"))
    with pytest.raises(SpecError, match="already registered"):
        tunespec.register_backend(dataclasses.replace(FACTS, backend="elsewhere:BACKEND"))
    tunespec.register_backend(FACTS)  # the same facts again: a no-op


def test_a_broken_entry_point_warns_and_the_other_backends_stay(tmp_path):
    dist = tmp_path / "brokenpkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenpkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tunespec.backends]\nbroken = no_such_module_xyz:FACTS\n")
    code = textwrap.dedent('''
        import warnings
        from tunespec import registry
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = set(registry.registered())
        print("broken" in names, {"torch", "mxnet"} <= names,
              any("entry point 'broken'" in str(w.message) for w in caught))
    ''')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.split() == ["False", "True", "True"], out.stdout + out.stderr


# --- run checkpoints: the core writes and reads them; the fake only exports and imports ------------

STAGED = {**UNFREEZE, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
          "schedule": {"type": "cosine", "total_steps": 12},
          "stages": {"then": [{"at_epoch": 1, "freeze": [], "train": [".*"], "lr_factor": 0.5,
                               "ramp": {"start": 0.1, "growth": 2.0}}]}}


def _train(net, opt, runner, epochs):
    """A fake epoch: every trainable tensor moves, the optimizer keeps a momentum per tensor."""
    for epoch in epochs:
        for g in opt:
            for p in g["params"]:
                p.value += 0.25 * g["lr"]
                opt.state.setdefault(p, {"momentum": np.zeros(p.shape)})["momentum"] += g["lr"]
        opt.steps += 2
        net, opt = runner.step(epoch, net, opt, metric=float(epoch))
    return net, opt


def _everything(net, opt, runner):
    names = {t.handle: t.canonical for t in BACKEND.listing(net).tensors}
    return ({t.canonical: (t.handle.value, t.handle.trainable, t.handle.lr_mult) for t in BACKEND.listing(net).tensors},
            [({k: v for k, v in g.items() if k != "params"}, [names[p] for p in g["params"]]) for g in opt],
            {names[p]: {k: v.tolist() for k, v in s.items()} for p, s in opt.state.items()},
            opt.steps, opt.lrs(), runner.state_dict())


def test_the_fake_backend_saves_mid_stage_and_resumes_bit_identically(tmp_path):
    """The fake implements the required protocol (optimizer export/import included) and nothing
    else for run checkpoints: save_checkpoint, resume and the StageRunner come from the core."""
    runner = tunespec.StageRunner(STAGED, steps_per_epoch=2)
    net, opt = runner.start(small_net())
    net, opt = _train(net, opt, runner, [0, 1])  # into stage 1, its ramp under way
    path = tmp_path / "run.ckpt"
    tunespec.save_checkpoint(path, net, opt, runner, epoch=1, extra={"batch": 7})
    assert runner.index == 1 and opt.state
    expected = _everything(*_train(net, opt, runner, [2, 3]), runner)

    resumed = tunespec.StageRunner(STAGED, steps_per_epoch=2)
    net2, opt2, meta = tunespec.resume(path, small_net(), resumed)
    assert meta == {"epoch": 1, "extra": {"batch": 7}} and resumed.index == 1
    assert _everything(*_train(net2, opt2, resumed, [2, 3]), resumed) == expected


def test_a_backend_without_optimizer_export_is_one_clear_error(tmp_path, monkeypatch):
    net = small_net()
    opt = tunespec.optimizer(net, UNFREEZE, "sgd", lr=0.1)
    monkeypatch.delattr(type(BACKEND), "export_optimizer")  # a backend written before the protocol had it
    with pytest.raises(SpecError, match="save_checkpoint: the 'fake' backend lacks the Backend capability "
                                        r"\(export_optimizer\)"):
        tunespec.save_checkpoint(tmp_path / "run.ckpt", net, opt)
    with pytest.raises(SpecError, match="resume: the 'fake' backend lacks the Backend capability"):
        tunespec.resume(tmp_path / "run.ckpt", net, optimizer=opt)
    assert not (tmp_path / "run.ckpt").exists()
