"""Plan-aware sharding: the core's choice of units (fake backend, no framework) and PyTorch FSDP2
on two gloo CPU processes (tests/fsdp_worker.py): names, verify, a stage change, sharded resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fake_backend import FakeBackend, FakeLayer, fake_plan, linear, small_net
from frameworks import needs
from tunespec import SpecError, TuneSpecWarning, shard
from tunespec.lifecycle.sharding import shard_units

WORKER = Path(__file__).parent / "fsdp_worker.py"


# --- the units, decided by the core ---------------------------------------------------------

def units(*params):
    return shard_units([(name, aliases, key) for name, aliases, key in params]).paths


def test_largest_uniform_subtrees_are_units_and_the_root_comes_last():
    got = units(("stem.conv.weight", (), 0), ("stem.bn.weight", (), 0), ("layer1.0.conv.weight", (), 0),
                ("layer1.0.bn.weight", (), 0), ("layer2.0.conv.weight", (), 1), ("fc.weight", (), 1),
                ("fc.bias", (), 1))
    assert got == ("stem", "layer1", "layer2", "fc", "")


def test_a_mixed_subtree_is_split_and_its_own_uniform_rest_is_a_unit_after_its_children():
    # x owns a frozen tensor and holds a trainable child: x.c first, then x for x.w (FSDP2 order)
    assert units(("x.w", (), 0), ("x.c.w", (), 1), ("y.w", (), 1)) == ("x.c", "x", "y", "")


def test_uniform_means_uniform_in_every_stage():
    # layer1 and layer2 are both frozen in stage 0, but only layer2 trains in stage 1
    got = units(("layer1.a.w", (), (0, 0)), ("layer1.b.w", (), (0, 0)), ("layer2.a.w", (), (0, 1)),
                ("layer2.b.w", (), (0, 1)), ("fc.w", (), (1, 1)))
    assert got == ("layer1", "layer2", "fc", "")
    got = units(("layer.a.w", (), (0, 0)), ("layer.b.w", (), (0, 1)), ("fc.w", (), (1, 1)))
    assert got == ("layer.a", "layer.b", "fc", "")  # one unit `layer` would become mixed in stage 1


def test_a_tied_parameter_lives_in_the_smallest_subtree_holding_every_use():
    got = units(("m.enc.emb.weight", ("m.dec.out.weight",), 1), ("m.enc.l.weight", (), 0),
                ("m.dec.l.weight", (), 0), ("fc.w", (), 1))
    assert got == ("m.enc.l", "m.dec.l", "m", "fc", "")


def test_parameters_on_a_module_that_mixes_them_make_a_mixed_root_reported():
    u = shard_units([("a.weight", (), 0), ("a.bias", (), 1), ("b.weight", (), 1)])
    assert u.paths == ("b", "") and u.mixed == ("a",) and not u.uniform
    assert shard_units([("w", (), 0), ("b.weight", (), 1)]).uniform  # the root's own: one kind
    assert shard_units([]).paths == ("",)


class ShardingFake(FakeBackend):
    """The fake framework with the Sharding capability: records what it is asked to shard."""

    def __init__(self) -> None:
        super().__init__()
        self.sharded: list[tuple[tuple[str, ...], dict]] = []

    def check_shard(self, model, **options):
        if options.get("mesh") == "bad":
            raise SpecError("shard: bad mesh")

    def shard(self, model, units, **options):
        self.sharded.append((tuple(units), options))


def test_shard_gives_the_backend_the_units_then_applies_the_spec():
    be = ShardingFake()
    net = small_net()
    plan = fake_plan(net, {"freeze": [".*"], "train": [r"fc\..*"]}, be)
    sharded = shard(plan, reshard_after_forward=False)
    assert be.sharded == [(("stem", "layer1", "layer2", "fc", ""),
                           {"mesh": None, "reshard_after_forward": False})]
    assert sharded.applied and [d.name for d in sharded.trainable] == ["fc.weight", "fc.bias"]
    assert not net.children["stem"].children["conv"].params["weight"].trainable


def test_shard_refuses_before_changing_anything():
    be = ShardingFake()
    net = FakeLayer("container", children={"a": linear(2, 2), "b": linear(2, 2)})
    mixed = fake_plan(net, {"freeze": [r"a\.weight"]}, be)
    with pytest.raises(SpecError, match=r"a hold\(s\) both directly.*strict: false"):
        shard(mixed)
    with pytest.raises(SpecError, match="bad mesh"):
        shard(fake_plan(net, {"freeze": [r"a\..*"]}, be), mesh="bad")
    with pytest.raises(SpecError, match="reshard_after_forward"):
        shard(fake_plan(net, {"freeze": [r"a\..*"]}, be), reshard_after_forward="yes")
    assert be.sharded == [] and net.children["a"].params["weight"].trainable  # nothing changed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shard(fake_plan(net, {"freeze": [r"a\.weight"], "strict": False}, be))
    assert any(issubclass(w.category, TuneSpecWarning) and "mixes them" in str(w.message) for w in caught)
    assert be.sharded[-1][0] == ("b", "")


def test_a_backend_without_the_capability_is_one_clear_error():
    with pytest.raises(SpecError, match="the fake backend cannot shard a model"):
        shard(fake_plan(small_net(), {"freeze": [".*"]}))
    with pytest.raises(SpecError, match="leave spec out"):
        shard(fake_plan(small_net(), {"freeze": [".*"]}), {"freeze": [".*"]})


def test_torch_shard_needs_a_process_group():
    torch = needs("torch")
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(SpecError, match="init_process_group"):
        shard(net, {"freeze": [".*"]})
    assert net[0].weight.requires_grad  # refused before anything changed


def test_a_checkpoint_directory_outside_a_process_group_is_refused(tmp_path):
    torch = needs("torch")
    import tunespec

    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    (tmp_path / "tunespec-run.json").write_text("{}")  # what a sharded run's directory holds
    with pytest.raises(SpecError, match="sharded run checkpoint; resume it on every rank"):
        tunespec.resume(tmp_path, net, optimizer=opt)


# --- FSDP2, two ranks -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    torch = needs("torch")
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed without the gloo backend")
    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    import numpy as np

    return [(json.loads((out / f"rank{r}.json").read_text()), dict(np.load(out / f"rank{r}.npz")))
            for r in range(2)]


def test_units_follow_the_plan_and_names_see_through_fsdp(ranks):
    for log, _ in ranks:
        assert log["names_equal"] and log["dtensor_params"]
        assert log["write_read"] and log["write_restored"]  # write keeps the rank's slice, read gathers
        # frozen stem and layer1-4 (uniform in both stages: layer4 turns trainable whole), the head, the root
        assert log["fsdp_modules"] == ["", "bn1", "conv1", "fc", "layer1", "layer2", "layer3", "layer4"]


def test_only_trainable_shards_get_gradients_and_optimizer_state_across_a_stage_change(ranks):
    for log, _ in ranks:
        assert [n for n, g in log["grads_stage0"].items() if g] == ["fc.weight", "fc.bias"]
        assert log["state_stage0"] == ["fc.bias", "fc.weight"]
        trained = [n for n, g in log["grads_stage1"].items() if g]
        assert trained == [n for n in log["grads_stage1"] if n.startswith(("layer4.", "fc."))]
        assert log["state_stage1"] == sorted(trained)
        assert log["verify"] and log["resumed_verify"]


def test_ranks_stay_identical_and_frozen_weights_bit_identical(ranks):
    import numpy as np

    (_, w0), (_, w1) = ranks
    names = [k[2:] for k in w0 if k.startswith("w:")]
    for name in names:
        if name.startswith("layer4.") and ".running_" in name:
            continue  # trainable BN statistics are per rank (FSDP2 does not synchronise buffers)
        assert np.array_equal(w0["w:" + name], w1["w:" + name]), f"{name} differs between the ranks"
    frozen = [n for n in names if not n.startswith(("layer4.", "fc."))]
    assert frozen and all(np.array_equal(w0["w:" + n], w0["init:" + n]) for n in frozen)
    assert not np.array_equal(w0["w:layer4.0.conv1.weight"], w0["init:layer4.0.conv1.weight"])


def test_sharded_checkpoint_resumes_bit_identically_and_refuses_a_damaged_shard(ranks):
    for log, _ in ranks:
        assert log["resume_identical"], "the resumed run differs from the uninterrupted one"
        assert log["resumed_stage"] == 1 and log["resumed_meta"] == {"epoch": 1, "extra": {"step": 1}}
        assert "digest does not match" in log["damaged"] and log["damaged_left_unstarted"]
        assert "shard the fresh model the same way first" in log["unsharded_into"]
