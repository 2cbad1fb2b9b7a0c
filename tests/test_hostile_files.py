"""Hostile and careless files: checkpoints run no code, damaged ones are refused whole, saves are atomic.

Every refusal is a SpecError, and the run (weights, trainability, multipliers, norm modes, optimizer,
schedule) is exactly as it was before the call: tests/snapshot.py compares all of it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tunespec
import tunespec.lifecycle.checkpoint
import tunespec.lifecycle.run_files
from frameworks import HARNESSES, batches, needs, np  # np: None without a framework, whose tests skip
from snapshot import assert_unchanged, state_of
from tunespec import SpecError
from tunespec.recipe import files

RECIPE = {
    "freeze": [r"0\..*"],
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"type": "multistep", "milestones": [3], "gamma": 0.5},
    "stages": [{"at_epoch": 1, "freeze": [r"0\.bias"], "lr_factor": 0.5}],
}


def fresh(h, seed=0):
    net = h.small_cnn()
    rng = np.random.default_rng(seed)
    h.load_arrays(net, {k: rng.standard_normal(v.shape) * 0.1 for k, v in h.arrays(net, False).items()})
    return net


def train(h, epochs=2, recipe=RECIPE):
    """A small run two epochs in (past its stage change), with optimizer state to save."""
    schedule = tunespec.StageRunner(recipe)
    net, opt = schedule.start(fresh(h))
    for e in range(epochs):
        for x, y in batches(1, 8, seed=e):
            h.step(net, opt, x, y)
            if h.name == "torch":
                schedule.lr_scheduler.step()
        net, opt = schedule.step(e, net, opt, metric=1.0 / (e + 1))
    return net, opt, schedule


def saved_run(h, tmp_path, name="run.ckpt"):
    net, opt, schedule = train(h)
    path = tmp_path / name
    tunespec.save_checkpoint(path, net, opt, schedule, epoch=1, extra={"seen": 8})
    return path, h.arrays(net)


def refused_resume(h, path, match, recipe=RECIPE, model=None):
    """resume must raise a SpecError matching ``match`` and leave model and schedule untouched."""
    net = model if model is not None else fresh(h, 1)
    schedule = tunespec.StageRunner(recipe)
    before = state_of(net, None, schedule)
    with pytest.raises(SpecError, match=match):
        tunespec.resume(path, net, schedule)
    assert_unchanged(before, state_of(net, None, schedule))


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --- no code runs from a file ---------------------------------------------------------------------

class _Marker:
    """Unpickling this creates a file: proof that a reader ran code from a checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_run_checkpoint_is_safetensors_and_resuming_never_unpickles(h, tmp_path, monkeypatch):
    import pickle

    needs("safetensors")
    path, _ = saved_run(h, tmp_path)
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:  # a plain safetensors file, readable by the library
        assert any(k.startswith("model/") for k in f.keys()) and "tunespec.sha256" in f.metadata()

    def boom(*args, **kwargs):
        raise AssertionError("something unpickled during resume")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    _, _, meta = tunespec.resume(path, fresh(h, 1), tunespec.StageRunner(RECIPE))
    assert meta == {"epoch": 1, "extra": {"seen": 8}}


def test_a_crafted_gluon_params_file_of_the_old_format_runs_no_code(tmp_path):
    needs("mxnet")
    import pickle

    import mxnet as mx

    h = HARNESSES["mxnet"]()
    marker = tmp_path / "pwned"
    payload = np.frombuffer(pickle.dumps(_Marker(marker)), dtype=np.uint8)
    path = tmp_path / "run.params"
    mx.nd.save(str(path), {"meta": mx.nd.array(np.frombuffer(b'{"format": "tunespec-run/1"}', np.uint8),
                                               dtype="uint8"),
                           "trainer": mx.nd.array(payload, dtype="uint8")})
    refused_resume(h, path, "run.params.*not a tunespec run checkpoint")
    net = fresh(h)
    before = state_of(net)
    with pytest.raises(SpecError):
        tunespec.load(net, path)
    assert_unchanged(before, state_of(net))
    assert not marker.exists()


def test_a_torch_file_that_needs_pickle_is_refused_everywhere_without_opt_in(tmp_path):
    needs("torch")
    import torch

    from tunespec.cli import load_weights

    h = HARNESSES["torch"]()
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": fresh(h).state_dict(), "x": _Marker(marker)}, path)
    refused_resume(h, path, "evil.pt.*not a tunespec run checkpoint")
    net = fresh(h)
    before = state_of(net)
    with pytest.raises(SpecError, match="needs pickle.*allow_pickle=True"):
        tunespec.load(net, path)
    with pytest.raises(SpecError, match="needs pickle.*allow_pickle=True"):
        load_weights(net, str(path))
    assert_unchanged(before, state_of(net))
    assert not marker.exists()
    tunespec.load(net, path, allow_pickle=True, key="state_dict")  # the opt-in reads it (and runs it)
    assert marker.exists()


def test_the_cli_takes_allow_pickle(tmp_path, capsys):
    from tunespec.cli import main

    code = main(["port", str(tmp_path / "a.pt"), str(tmp_path / "b.params"), "--from", "nozoo",
                 "--to", "nozoo", "--allow-pickle"])
    assert code == 2 and "--model 'nozoo'" in capsys.readouterr().err


# --- damaged and foreign files --------------------------------------------------------------------

def _foreign(kind, tmp_path, h, good: Path) -> Path:
    data = good.read_bytes()
    path = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "json":
        path.write_text(json.dumps({"format": "tunespec-run/2", "backend": h.name}))
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "bitflip_data":
        flipped = bytearray(data)
        flipped[-5] ^= 0x10
        path.write_bytes(bytes(flipped))
    elif kind == "bitflip_header":
        flipped = bytearray(data)
        flipped[20] ^= 0x01
        path.write_bytes(bytes(flipped))
    elif kind == "huge_header":
        path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    elif kind == "other_tool_safetensors":
        needs("safetensors")
        from safetensors.numpy import save_file

        save_file({"weight": np.zeros((2, 2), np.float32)}, str(path), metadata={"format": "pt"})
    elif kind == "digest_ok_but_other_format":
        tensors, meta = files.decode_safetensors(data)
        meta = dict(meta)
        meta.pop(files.DIGEST_KEY)
        meta["tunespec.run"] = json.dumps({"format": "tunespec-run/1", "backend": h.name})
        files.write_checked(str(path), tensors, meta)
    elif kind == "torch_state_dict":
        torch = needs("torch")
        torch.save(HARNESSES["torch"]().small_cnn().state_dict(), path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        return Path("/dev/zero")
    elif kind == "missing":
        pass
    return path


FOREIGN = ["empty", "random", "json", "truncated", "bitflip_data", "bitflip_header", "huge_header",
           "other_tool_safetensors", "digest_ok_but_other_format", "torch_state_dict", "directory",
           "fifo", "dev_zero", "missing"]


@pytest.mark.parametrize("kind", FOREIGN)
def test_damaged_or_foreign_files_are_refused_by_resume_naming_the_file(h, tmp_path, kind):
    good, _ = saved_run(h, tmp_path)
    path = _foreign(kind, tmp_path, h, good)
    refused_resume(h, path, f"{path.name}.*(not a tunespec run checkpoint|damaged|does not exist|"
                            f"not a regular file|directory)")


@pytest.mark.parametrize("kind", ["empty", "random", "json", "truncated", "huge_header", "directory",
                                  "fifo", "dev_zero"])
@pytest.mark.parametrize("suffix", [".pt", ".params", ".safetensors"])
def test_damaged_or_foreign_files_are_refused_by_load(h, tmp_path, kind, suffix):
    if suffix == ".pt":
        needs("torch")
    if suffix == ".params":
        needs("mxnet")
    if suffix == ".safetensors":
        needs("safetensors")
    good, _ = saved_run(h, tmp_path)
    source = _foreign(kind, tmp_path, h, good)
    path = source if kind == "dev_zero" else source.rename(source.with_suffix(suffix))
    net = fresh(h)
    before = state_of(net)
    with pytest.raises(SpecError, match=str(path.name).replace(".", r"\.")):
        tunespec.load(net, path)
    assert_unchanged(before, state_of(net))


def test_load_refuses_non_numeric_or_malformed_contents(h, tmp_path):
    net = fresh(h)
    name = next(iter(h.arrays(net)))
    before = state_of(net)
    for bad in ({name: np.array(["a", "b"])}, {name: "text"}, {3: np.zeros(3)}, {name: np.zeros(2, complex)}):
        with pytest.raises(SpecError):
            tunespec.load(net, bad, strict=False)
    assert_unchanged(before, state_of(net))


def test_a_failing_write_in_load_and_port_puts_every_tensor_back(h, monkeypatch):
    net, src = fresh(h, 0), fresh(h, 1)
    before = state_of(net)
    real = type(h.backend).write
    calls = []

    def flaky(self, handle, value):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("device lost")
        return real(self, handle, value)

    monkeypatch.setattr(type(h.backend), "write", flaky)
    with pytest.raises(SpecError, match="load: cannot write"):
        tunespec.load(net, h.arrays(src))
    calls.clear()
    with pytest.raises(SpecError, match="port: cannot write"):
        tunespec.port(src, net)
    monkeypatch.undo()
    assert_unchanged(before, state_of(net))


# --- resume: the whole recipe, the architecture, all or nothing -----------------------------------

@pytest.mark.parametrize("change, first", [
    ({"optimizer": {**RECIPE["optimizer"], "lr": 0.1}}, r"optimizer\.lr differs: the run used 0\.01, this recipe has 0\.1"),
    ({"optimizer": {**RECIPE["optimizer"], "momentum": 0.5}}, r"optimizer\.options\.momentum differs"),
    ({"schedule": {**RECIPE["schedule"], "gamma": 0.1}}, r"schedule\.gamma differs"),
    ({"stages": [{"at_epoch": 1, "freeze": [r"0\.bias"], "lr_factor": 0.25}]}, r"stages\..*lr_factor differs"),
    ({"freeze": [r"1\..*"]}, r"spec\..* differs"),
])
def test_resume_refuses_a_recipe_that_differs_in_any_section(h, tmp_path, change, first):
    path, _ = saved_run(h, tmp_path)
    refused_resume(h, path, first, recipe={**RECIPE, **change})


def test_resume_refuses_another_architecture_before_changing_anything(h, tmp_path):
    path, _ = saved_run(h, tmp_path)
    other = h.resnet18(classes=5)
    refused_resume(h, path, "differ from the saved|architecture the run used", model=other)


def failing_once(call, message):
    """``call``, except that its first use raises: the import of the saved state fails, the
    rollback (the same call, given what the optimizer held before) then works."""
    calls = []

    def wrapped(*args):
        calls.append(args)
        if len(calls) == 1:
            raise SpecError(message)
        return call(*args)

    return wrapped


def test_resume_rolls_back_when_the_last_step_fails(h, tmp_path, monkeypatch):
    path, _ = saved_run(h, tmp_path)

    monkeypatch.setattr(type(h.backend), "import_optimizer",
                        failing_once(type(h.backend).import_optimizer, "injected failure after the schedule started"))
    refused_resume(h, path, "injected failure")


def test_resume_without_schedule_refuses_an_optimizer_with_other_settings(h, tmp_path):
    path, _ = saved_run(h, tmp_path)
    net = fresh(h, 1)
    opt = tunespec.optimizer(net, {**RECIPE, "optimizer": {**RECIPE["optimizer"], "momentum": 0.5}})
    before = state_of(net, opt)
    with pytest.raises(SpecError, match="resume: .*(momentum|parameter groups|differs)"):
        tunespec.resume(path, net, optimizer=opt)
    assert_unchanged(before, state_of(net, opt))


# --- atomic writes, threads, symlinks, full disks, killed writers ---------------------------------

def test_two_threads_saving_to_one_path(h, tmp_path):
    net, opt, schedule = train(h)
    path = tmp_path / "run.ckpt"
    errors = []

    def save():
        try:
            for i in range(20):
                tunespec.save_checkpoint(path, net, opt, schedule, epoch=i)
        except BaseException as exc:  # noqa: BLE001 - any failure of a thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert temp_files(tmp_path) == []
    _, _, meta = tunespec.resume(path, fresh(h, 1), tunespec.StageRunner(RECIPE))
    assert meta["epoch"] == 19


def test_saving_through_a_symlink_writes_its_target(h, tmp_path):
    net, opt, schedule = train(h)
    real = tmp_path / "store" / "run.ckpt"
    real.parent.mkdir()
    link = tmp_path / "latest.ckpt"
    link.symlink_to(real)
    tunespec.save_checkpoint(link, net, opt, schedule, epoch=3)
    assert link.is_symlink() and real.is_file() and temp_files(real.parent) == []
    _, _, meta = tunespec.resume(link, fresh(h, 1), tunespec.StageRunner(RECIPE))
    assert meta["epoch"] == 3


@pytest.mark.parametrize("failure", ["disk_full", "read_only"])
def test_a_full_disk_or_read_only_directory_keeps_the_previous_checkpoint(h, tmp_path, monkeypatch, failure):
    net, opt, schedule = train(h)
    path = tmp_path / "run.ckpt"
    tunespec.save_checkpoint(path, net, opt, schedule, epoch=1)
    good = path.read_bytes()
    module = tunespec.lifecycle.run_files  # the module that writes run files
    if failure == "disk_full":
        def full(target, *args):
            with open(target, "wb") as f:
                f.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(module, "write_checked", full)
        match = "run.ckpt.*no space left"
    else:
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
        match = "run.ckpt.*read-only"
    with pytest.raises(SpecError, match=match):
        tunespec.save_checkpoint(path, net, opt, schedule, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == good and temp_files(tmp_path) == []
    _, _, meta = tunespec.resume(path, fresh(h, 1), tunespec.StageRunner(RECIPE))
    assert meta["epoch"] == 1


def test_weights_written_by_the_cli_are_atomic_and_follow_symlinks(h, tmp_path):
    from tunespec.cli import load_weights, save_weights

    net = fresh(h, 3)
    real = tmp_path / ("w.pt" if h.name == "torch" else "w.params")
    real.write_bytes(b"old")
    link = tmp_path / ("link.pt" if h.name == "torch" else "link.params")
    link.symlink_to(real)
    save_weights(net, str(link))
    assert link.is_symlink() and temp_files(tmp_path) == []
    other = fresh(h, 4)
    load_weights(other, str(link))
    assert all(np.array_equal(a, b) for a, b in zip(h.arrays(net).values(), h.arrays(other).values(), strict=True))


def test_stale_temp_files_of_dead_writers_are_removed(h, tmp_path):
    net, opt, schedule = train(h)
    path = tmp_path / "run.ckpt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.ckpt.tmp-{dead.pid}-abc.tmp"
    stale.write_bytes(b"left by a killed writer")
    mine = tmp_path / f".other.ckpt.tmp-{dead.pid}-abc.tmp"  # another target's: not ours to remove
    mine.write_bytes(b"x")
    tunespec.save_checkpoint(path, net, opt, schedule)
    assert not stale.exists() and mine.exists()


KILL_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[2])
import numpy as np, tunespec
from frameworks import HARNESSES
h = HARNESSES[sys.argv[3]]()
net = h.small_cnn()
schedule = tunespec.StageRunner(json_recipe)
net, opt = schedule.start(net)
i = 0
while True:
    tunespec.save_checkpoint(sys.argv[1], net, opt, schedule, epoch=i)
    print(i, flush=True)
    i += 1
"""


def test_kill_9_mid_save_leaves_a_loadable_checkpoint_and_no_stray_temp_files(tmp_path):
    needs("torch")
    h = HARNESSES["torch"]()
    path = tmp_path / "run.ckpt"
    script = "json_recipe = " + repr(RECIPE) + "\n" + KILL_SCRIPT
    proc = subprocess.Popen([sys.executable, "-c", script, str(path), str(Path(__file__).parent), "torch"],
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # a few saves done, the next one under way
            assert proc.stdout.readline(), "the writer died"
        time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _, _, meta = tunespec.resume(path, h.small_cnn(), tunespec.StageRunner(RECIPE))
    assert meta["epoch"] >= 2
    net, opt, schedule = train(h)
    tunespec.save_checkpoint(path, net, opt, schedule, epoch=99)
    assert temp_files(tmp_path) == []


# --- property: random corruptions are a clean success or a SpecError, never a changed model -------

def corruption():
    frac = st.floats(0, 1, allow_nan=False)
    return st.one_of(
        st.tuples(st.just("truncate"), frac),
        st.tuples(st.just("flip"), frac, st.integers(0, 7)),
        st.tuples(st.just("overwrite"), frac, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("head"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("random"), st.binary(min_size=0, max_size=256)),
    )


def corrupt(data: bytes, how) -> bytes:
    kind = how[0]
    if kind == "truncate":
        return data[: int(how[1] * (len(data) - 1))]
    if kind == "flip":
        pos = int(how[1] * (len(data) - 1))
        out = bytearray(data)
        out[pos] ^= 1 << how[2]
        return bytes(out)
    if kind == "overwrite":
        pos = int(how[1] * (len(data) - 1))
        return data[:pos] + how[2] + data[pos + len(how[2]):]
    if kind == "append":
        return data + how[1]
    if kind == "head":
        return how[1] + data[len(how[1]):]
    return how[1]


@pytest.fixture(scope="module", params=["torch", "mxnet"])
def saved(request, tmp_path_factory):
    needs(request.param)
    h = HARNESSES[request.param]()
    tmp = tmp_path_factory.mktemp(f"prop-{request.param}")
    path, arrays = saved_run(h, tmp)
    weights = tmp / ("w.pt" if h.name == "torch" else "w.params")
    net = fresh(h, 7)
    h.backend.save_file(net, str(weights))
    return h, path.read_bytes(), arrays, weights.read_bytes(), weights.suffix, tmp


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(how=corruption())
def test_random_corruptions_of_a_run_checkpoint(saved, how):
    h, data, arrays, _, _, tmp = saved
    path = tmp / "corrupt.ckpt"
    path.write_bytes(corrupt(data, how))
    net, schedule = fresh(h, 1), tunespec.StageRunner(RECIPE)
    before = state_of(net, None, schedule)
    try:
        tunespec.resume(path, net, schedule)
    except SpecError:
        assert_unchanged(before, state_of(net, None, schedule))
    else:
        after = h.arrays(net)
        assert all(np.array_equal(after[k], arrays[k]) for k in arrays)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(how=corruption())
def test_random_corruptions_of_a_weights_file(saved, how):
    h, _, _, data, suffix, tmp = saved
    path = tmp / f"corrupt{suffix}"
    path.write_bytes(corrupt(data, how))
    net = fresh(h, 1)
    before = state_of(net)
    try:
        tunespec.load(net, path)  # no digest in another tool's format: damaged values may load
    except SpecError:
        assert_unchanged(before, state_of(net))


def _recrafted(good: Path, tmp_path: Path, edit) -> Path:
    """A file a crafter rewrote, digest recomputed: the digest is no defence, the checks must be."""
    tensors, meta = files.decode_safetensors(good.read_bytes())
    tensors, meta = dict(tensors), dict(meta)
    meta.pop(files.DIGEST_KEY)
    edit(tensors, meta)
    path = tmp_path / "crafted.ckpt"
    files.write_checked(str(path), tensors, meta)
    return path


def _entry(tree, key):
    """The value under ``key`` of a mapping as run files encode it ({"d": [[key, value], ...]})."""
    return next(v for k, v in tree["d"] if k == key)


def test_crafted_optimizer_state_with_a_valid_digest_is_refused_and_rolled_back(h, tmp_path):
    good, _ = saved_run(h, tmp_path)

    def wrong_shape(tensors, meta):
        name = max((k for k in tensors if k.startswith("opt/")), key=lambda k: len(tensors[k][2]))
        dtype = tensors[name][0]
        tensors[name] = (dtype, (1,), bytes(files.DTYPE_SIZES[dtype]))

    refused_resume(h, _recrafted(good, tmp_path, wrong_shape), "saved optimizer state")

    def garbage_structure(tensors, meta):
        meta["tunespec.state"] = json.dumps({"model": 3})

    refused_resume(h, _recrafted(good, tmp_path, garbage_structure), "not a complete tunespec run checkpoint")

    def missing_tensor(tensors, meta):
        del tensors[next(k for k in tensors if k.startswith("model/"))]

    refused_resume(h, _recrafted(good, tmp_path, missing_tensor), "not a complete tunespec run checkpoint")

    def deep_nesting(tensors, meta):
        meta["tunespec.state"] = "[" * 100000 + "]" * 100000

    refused_resume(h, _recrafted(good, tmp_path, deep_nesting), "not a complete tunespec run checkpoint")

    def odd_schedule_state(tensors, meta):
        run = json.loads(meta["tunespec.run"])
        run["schedule"] = 5
        meta["tunespec.run"] = json.dumps(run)

    refused_resume(h, _recrafted(good, tmp_path, odd_schedule_state), "stage-runner state")
    if h.name == "torch":
        def scheduler_attributes(tensors, meta):
            state = json.loads(meta["tunespec.state"])
            common = _entry(state["optimizer"]["state"], "")  # the optimizer-level state
            _entry(common, "lr_scheduler")["d"].append(["optimizer", None])  # would overwrite the attribute
            meta["tunespec.state"] = json.dumps(state)

        refused_resume(h, _recrafted(good, tmp_path, scheduler_attributes), "lr-scheduler state")
    if h.name == "mxnet":  # the fused SGD's state is [buffer, lr it was made with]: that lr must be > 0
        for scale in (-0.01, 0.0, "0.01", None):
            def odd_lr_scale(tensors, meta, scale=scale):
                state = json.loads(meta["tunespec.state"])
                first = next(v for k, v in state["optimizer"]["state"]["d"] if k)  # a parameter's state
                value = _entry(first, "value")
                assert isinstance(value, list) and len(value) == 2
                value[1] = scale
                meta["tunespec.state"] = json.dumps(state)

            refused_resume(h, _recrafted(good, tmp_path, odd_lr_scale), "not a complete tunespec run checkpoint")


@pytest.mark.parametrize("path", [3, "bad\0name", None])
def test_paths_that_are_not_paths(h, tmp_path, path):
    net, opt, schedule = train(h)
    before = state_of(net, opt, schedule)
    with pytest.raises(SpecError):
        tunespec.save_checkpoint(path, net, opt, schedule)
    with pytest.raises(SpecError):
        tunespec.resume(path, net, optimizer=opt)
    with pytest.raises(SpecError):
        tunespec.load(net, "bad\0name.pt" if path is None else path)
    assert_unchanged(before, state_of(net, opt, schedule))


def test_resume_into_a_users_optimizer_puts_it_back_on_failure(h, tmp_path, monkeypatch):
    path, _ = saved_run(h, tmp_path)
    net = fresh(h, 1)
    opt = tunespec.optimizer(net, RECIPE)
    schedule = tunespec.StageRunner(RECIPE)
    before = state_of(net, opt, schedule)

    monkeypatch.setattr(type(h.backend), "import_optimizer",
                        failing_once(type(h.backend).import_optimizer, "injected failure after the stage change"))
    with pytest.raises(SpecError, match="injected failure"):
        tunespec.resume(path, net, schedule, optimizer=opt)
    assert_unchanged(before, state_of(net, opt, schedule))


@pytest.mark.parametrize("optimizer", [
    {"name": "adam", "lr": 0.01},
    {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
    {"name": "sgd", "lr": 0.01, "momentum": 0.9, "semantics": "native"},
    {"name": "adam", "lr": 0.01, "semantics": "native"},
    {"name": "sgd", "lr": 0.01, "momentum": 0.9, "semantics": "portable-exact"},
])
def test_resume_continues_bit_identically_with_each_optimizer(h, tmp_path, optimizer):
    recipe = {**RECIPE, "optimizer": optimizer}
    net, opt, schedule = train(h, recipe=recipe)
    path = tmp_path / "run.ckpt"
    tunespec.save_checkpoint(path, net, opt, schedule, epoch=1)

    def more(net, opt, schedule):
        for x, y in batches(2, 8, seed=50):
            h.step(net, opt, x, y)
            if h.name == "torch":
                schedule.lr_scheduler.step()
        return h.arrays(net)

    expected = more(net, opt, schedule)
    schedule2 = tunespec.StageRunner(recipe)
    net2, opt2, _ = tunespec.resume(path, fresh(h, 5), schedule2)
    got = more(net2, opt2, schedule2)
    assert [k for k in expected if not np.array_equal(expected[k], got[k])] == []


def test_load_checks_the_digest_of_a_run_checkpoint_it_reads_weights_from(h, tmp_path):
    """tunespec.load reads the weights of a run checkpoint (key 'model' or 'best') after checking
    its digest, so a flipped byte in a weight is refused instead of loaded."""
    path, saved = saved_run(h, tmp_path)
    net = fresh(h, 1)
    report = tunespec.load(net, path)
    assert report.complete and all(np.array_equal(v, saved[k]) for k, v in h.arrays(net).items())
    with pytest.raises(SpecError, match="key='best' is not in it"):
        tunespec.load(net, path, key="best")  # RECIPE restores no best weights
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    net = fresh(h, 1)
    before = state_of(net)
    with pytest.raises(SpecError, match="damaged"):
        tunespec.load(net, path)
    assert_unchanged(before, state_of(net))


def test_a_run_checkpoint_loads_into_the_other_frameworks_twin(tmp_path):
    """resume refuses another framework's run and points at tunespec.load, which reads it."""
    needs("torch"), needs("mxnet")
    th, mh = HARNESSES["torch"](), HARNESSES["mxnet"]()
    path, saved = saved_run(th, tmp_path)
    net = fresh(mh, 1)
    with pytest.raises(SpecError, match="use tunespec.load for weights across frameworks"):
        tunespec.resume(path, net, tunespec.StageRunner(RECIPE))
    report = tunespec.load(net, path)
    assert report.ok and not report.missing
    loaded = mh.arrays(net)
    assert all(np.array_equal(loaded[k], saved[k]) for k in loaded)


def test_a_params_file_whose_shape_claims_gigabytes_is_refused_before_mxnet_reads_it(tmp_path):
    """MXNet's reader trusts the sizes in a .params file: a shape rewritten to claim 2**40 elements
    would make it allocate that much before noticing the file is short. tunespec walks the layout
    first, so this is a SpecError and no memory is taken."""
    mx = needs("mxnet")
    path = tmp_path / "w.params"
    mx.nd.save(str(path), {"w": mx.nd.ones((2, 3))})
    data = bytearray(path.read_bytes())
    dims = data.find((2).to_bytes(8, "little") + (3).to_bytes(8, "little"))
    assert dims > 0
    data[dims:dims + 16] = (2**20).to_bytes(8, "little") + (2**20).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    net = fresh(HARNESSES["mxnet"]())
    before = state_of(net)
    with pytest.raises(SpecError, match=r"w\.params: not a valid MXNet \.params file .*needs more bytes"):
        tunespec.load(net, path)
    assert_unchanged(before, state_of(net))
