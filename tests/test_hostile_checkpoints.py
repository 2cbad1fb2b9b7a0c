"""Hostile run checkpoints, second round: what a re-signed or buggy file records about the stage
runner, and sharded checkpoints (a directory of per-rank files and a JSON sidecar) with absurd
sizes or a pickle where a shard should be. Each is a SpecError at resume, before anything is
allocated or changed: model, optimizer and runner as they were (tests/snapshot.py)."""

from __future__ import annotations

import json
import pickle

import pytest

import tunespec
import tunespec.lifecycle.run_files
from frameworks import HARNESSES, needs
from snapshot import assert_unchanged, state_of
from test_hostile_files import RECIPE, _recrafted, fresh, refused_resume, saved_run, train
from tunespec import SpecError
from tunespec.backend_api import ProcessGroup

# --- the stage runner's recorded state, every field checked like a recipe's ------------------------

WRONG_RUNNER_STATE = [
    ("best", "0.5", r"schedule state\.best: expected a finite number"),
    ("best", float("nan"), r"not a tunespec run checkpoint|schedule state\.best"),
    ("best_epoch", 1.5, r"schedule state\.best_epoch: expected"),
    ("best_epoch", -3, r"schedule state\.best_epoch: expected"),
    ("bad_epochs", "2", r"schedule state\.bad_epochs: expected"),
    ("bad_epochs", None, r"schedule state\.bad_epochs: expected"),
    ("history", {"0": "x"}, r"schedule state\.history: expected"),
    ("history", [[0]], r"schedule state\.history\[0\]: expected an \[epoch, stage name\] pair"),
    ("history", [["0", "stage"]], r"schedule state\.history\[0\]\[0\]: expected"),
    ("history", [[0, 7]], r"schedule state\.history\[0\]\[1\]: expected"),
    ("ramps", [1, 2], r"schedule state\.ramps: expected"),
    ("ramps", {"x": 1}, r"schedule state\.ramps: expected integer keys"),
    ("ramps", {"1": "3"}, r"schedule state\.ramps\[1\]: expected"),
    ("lr_offset", 2.5, r"schedule state\.lr_offset: expected"),
    ("lr_offset", -1, r"schedule state\.lr_offset: expected"),
    ("last_epoch", "1", r"schedule state\.last_epoch: expected"),
    ("surprise", 1, r"schedule state: unknown key 'surprise'"),
]


@pytest.mark.parametrize("key, value, match", WRONG_RUNNER_STATE)
def test_a_runner_state_of_the_wrong_types_is_refused_at_resume(h, tmp_path, key, value, match):
    """Written by a buggy tool or an attacker who re-signed the file: refused at resume, never a
    TypeError at the next step()."""
    good, _ = saved_run(h, tmp_path)

    def edit(tensors, meta):
        run = json.loads(meta["tunespec.run"])
        run["schedule"][key] = value
        meta["tunespec.run"] = json.dumps(run)

    refused_resume(h, _recrafted(good, tmp_path, edit), match)


def test_a_valid_runner_state_still_resumes_and_steps(h, tmp_path):
    path, _ = saved_run(h, tmp_path)
    schedule = tunespec.StageRunner(RECIPE)
    net, opt, _ = tunespec.resume(path, fresh(h, 1), schedule)
    assert schedule.index == 1 and schedule.history and isinstance(schedule.bad_epochs, int)
    schedule.step(2, net, opt, metric=0.1)  # no TypeError from anything the file held


# --- sharded run checkpoints: one process, one rank (the layout is the core's, not torch's) ---------

@pytest.fixture
def one_rank(monkeypatch):
    """torch with a one-rank process group: save_checkpoint writes a sharded run's directory, in
    this process, without torch.distributed (every tensor is the rank's own part)."""
    needs("torch")
    th = HARNESSES["torch"]()
    monkeypatch.setattr(type(th.backend), "process_group",
                        lambda self, model: ProcessGroup(0, 1, lambda ok: ok))
    return th


def _sharded(th, tmp_path):
    net, opt, schedule = train(th)
    path = tmp_path / "run"
    tunespec.save_checkpoint(path, net, opt, schedule, epoch=1)
    assert sorted(p.name for p in path.iterdir()) == ["rank0.safetensors", "tunespec-run.json"]
    return path


def _sidecar(path, edit):
    data = json.loads((path / "tunespec-run.json").read_text())
    data.pop("digest")
    edit(data)
    data["digest"] = tunespec.lifecycle.run_files._text_digest(data)  # re-signed: the checks must hold anyway
    (path / "tunespec-run.json").write_text(json.dumps(data))


def _refused(th, path, match):
    net = fresh(th, 1)
    schedule = tunespec.StageRunner(RECIPE)
    before = state_of(net, None, schedule)
    with pytest.raises(SpecError, match=match):
        tunespec.resume(path, net, schedule)
    assert_unchanged(before, state_of(net, None, schedule))


def test_a_sharded_run_resumes_through_the_core(one_rank, tmp_path):
    path = _sharded(one_rank, tmp_path)
    schedule = tunespec.StageRunner(RECIPE)
    net, _, meta = tunespec.resume(path, fresh(one_rank, 1), schedule)
    assert meta["epoch"] == 1 and schedule.index == 1


def test_a_sidecar_listing_a_file_of_absurd_size_is_refused_before_reading(one_rank, tmp_path, monkeypatch):
    path = _sharded(one_rank, tmp_path)
    _sidecar(path, lambda d: d["files"]["rank0.safetensors"].update(bytes=2**50))
    reads = []
    monkeypatch.setattr(tunespec.lifecycle.run_files, "read_checked", lambda *a: reads.append(a))  # nothing may be read
    _refused(one_rank, path, r"rank0\.safetensors.* is \d+ bytes, the sidecar says 1125899906842624")
    assert reads == []


def test_a_shard_whose_header_claims_an_absurd_entry_is_refused_before_allocating(one_rank, tmp_path):
    path = _sharded(one_rank, tmp_path)
    shard = path / "rank0.safetensors"
    data = bytearray(shard.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k.startswith("model/"))
    header[name]["shape"] = [2**40, 2**7]  # a terabyte of float64: never allocated
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    shard.write_bytes(len(text).to_bytes(8, "little") + text + bytes(data[8 + n:]))
    _sidecar(path, lambda d: d["files"]["rank0.safetensors"].update(bytes=shard.stat().st_size))
    _refused(one_rank, path, r"rank0\.safetensors.*not a valid safetensors file: tensor .* bytes for shape")


class Boom:
    """Unpickling this writes a marker file: had anything been unpickled, the test would see it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_inside_a_shard_is_a_spec_error_and_never_runs(one_rank, tmp_path):
    path = _sharded(one_rank, tmp_path)
    marker = tmp_path / "ran"
    shard = path / "rank0.safetensors"
    shard.write_bytes(pickle.dumps({"model/0.weight": Boom(marker)}))
    _sidecar(path, lambda d: d["files"]["rank0.safetensors"].update(bytes=shard.stat().st_size))
    _refused(one_rank, path, r"rank0\.safetensors.* is not a tunespec run checkpoint")
    assert not marker.exists()


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(world=2), "saved by 2 ranks, this run has 1"),
    (lambda d: d["files"].update({"rank1.safetensors": {"bytes": 8, "sha256": "0"}}), "not one per rank"),
    (lambda d: d["files"].update({"../evil": {"bytes": 8, "sha256": "0"}}), "not one per rank"),
    (lambda d: d["files"]["rank0.safetensors"].update(sha256="0" * 64), "not the file the sidecar lists"),
    (lambda d: d.update(files=[1, 2]), "not a complete tunespec sharded run description"),
    (lambda d: d.update(meta=json.dumps({"format": "tunespec-run/3", "backend": "torch"})),
     "belongs to another save"),
])
def test_a_resigned_sidecar_that_lies_is_refused(one_rank, tmp_path, edit, match):
    path = _sharded(one_rank, tmp_path)
    _sidecar(path, edit)
    _refused(one_rank, path, match)


def test_a_changed_sidecar_or_a_huge_one_is_refused(one_rank, tmp_path, monkeypatch):
    path = _sharded(one_rank, tmp_path)
    sidecar = path / "tunespec-run.json"
    text = sidecar.read_text()
    sidecar.write_text(text.replace('"world": 1', '"world": 1 '))  # same content: digest still holds
    net, _, _ = tunespec.resume(path, fresh(one_rank, 1), tunespec.StageRunner(RECIPE))
    sidecar.write_text(text.replace('"world": 1', '"world": 2'))
    _refused(one_rank, path, "changed or damaged after it was written")
    monkeypatch.setattr(tunespec.lifecycle.run_files, "MAX_SIDECAR_BYTES", 100)
    sidecar.write_text(text)
    _refused(one_rank, path, "more than the 100 a checkpoint may have")
