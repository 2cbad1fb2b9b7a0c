"""Hostile checkpoints given to the Lightning integration: no file runs code inside tunespec.

Under ``FSDPStrategy`` the StageCallback reads its own state from the checkpoint before Lightning
loads the optimizer state (tunespec.integrations.lightning, ``_replay_before_loading``). That read
uses ``torch.load(weights_only=True)``: a crafted ``.ckpt`` file, or a checkpoint directory holding
a crafted ``meta.pt``, is refused with a SpecError before anything changes, even where Lightning's
own loader would refuse the directory before reading anything. Unpickling them would create a
marker file; the tests assert it was never created, and that the run is as it was
(tests/snapshot.py). Lightning's own loading of a full ``.ckpt`` unpickles (docs/lifecycle.md says
so); tunespec adds nothing to it.
"""

from __future__ import annotations

import os

import pytest

from frameworks import needs
from snapshot import assert_unchanged, state_of

torch = needs("torch")
pl = needs("lightning.pytorch")

from lightning.pytorch.strategies import FSDPStrategy  # noqa: E402

from tunespec import SpecError  # noqa: E402
from tunespec.integrations.lightning import StageCallback  # noqa: E402

RECIPE = {"freeze": [r"0\..*"], "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
          "stages": [{"at_epoch": 1, "freeze": [], "lr_factor": 0.5}]}


class Marker:
    """Unpickling this creates a file: proof that a reader ran code from a checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted(tmp_path, kind):
    """A checkpoint whose unpickling creates tmp_path/'ran'."""
    marker = tmp_path / "ran"
    payload = {"callbacks": {"StageCallback": {"schedule": {"index": 0}}}, "epoch": 1,
               "hyper_parameters": Marker(marker)}
    if kind == "ckpt":
        path = tmp_path / "epoch=1.ckpt"
        torch.save(payload, path)
    elif kind == "meta_only":  # Lightning refuses this directory before reading meta.pt
        path = tmp_path / "sharded.ckpt"
        path.mkdir()
        torch.save(payload, path / "meta.pt")
    elif kind == "meta_in_callbacks":  # the code sits inside the callback's own state
        path = tmp_path / "sharded.ckpt"
        path.mkdir()
        torch.save({"callbacks": {"StageCallback": {"schedule": Marker(marker)}}}, path / "meta.pt")
        (path / ".metadata").write_bytes(b"")
    return path, marker


def runner(callback):
    """The callback's StageRunner (named ``runner`` after the rename, ``schedule`` before)."""
    return getattr(callback, "runner", None) or callback.schedule


def started(allow_pickle=False):
    """A callback with stage 0 started on a small network, and its hook on an FSDP strategy (what
    ``setup`` does under FSDPStrategy), without a process group."""
    callback = StageCallback(RECIPE, allow_pickle=allow_pickle)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    _, callback._optimizer = runner(callback).start(net)
    strategy = FSDPStrategy()
    callback._replay_before_loading(strategy)
    return callback, net, strategy


def snapshot(callback, net):
    return state_of(net, callback._optimizer, runner(callback), runner(callback).lr_scheduler)


@pytest.mark.parametrize("kind", ["ckpt", "meta_only", "meta_in_callbacks"])
def test_a_crafted_checkpoint_runs_no_code_in_the_fsdp_resume_path(tmp_path, kind):
    path, marker = crafted(tmp_path, kind)
    callback, net, strategy = started()
    before = snapshot(callback, net)
    with pytest.raises(SpecError, match="only unpickling can read.*allow_pickle=True"):
        strategy.load_checkpoint(path)
    assert not marker.exists()
    assert_unchanged(before, snapshot(callback, net))
    assert runner(callback).index == 0 and not callback._replayed


def test_allow_pickle_is_the_opt_in(tmp_path):
    """With allow_pickle=True the file is unpickled (trusted checkpoints only): the marker appears."""
    path, marker = crafted(tmp_path, "ckpt")
    callback, _, _ = started(allow_pickle=True)
    assert callback._saved_state(path) == {"schedule": {"index": 0}}
    assert marker.exists()
    with pytest.raises(SpecError, match="allow_pickle: expected true or false"):
        StageCallback(RECIPE, allow_pickle="yes")


@pytest.mark.parametrize("kind", ["fifo", "not_a_dict", "garbage", "no_callbacks", "directory_meta"])
def test_a_careless_checkpoint_path_is_a_spec_error_naming_it(tmp_path, kind):
    path = tmp_path / "x.ckpt"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
    elif kind == "not_a_dict":
        torch.save([1, 2, 3], path)
    elif kind == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind == "no_callbacks":
        torch.save({"epoch": 1, "callbacks": ["x"]}, path)
    else:
        path.mkdir()
        (path / "meta.pt").mkdir()
    callback, net, strategy = started()
    before = snapshot(callback, net)
    with pytest.raises(SpecError, match=r"StageCallback: resume: .*x.ckpt"):
        strategy.load_checkpoint(path)
    assert_unchanged(before, snapshot(callback, net))


def test_a_real_checkpoint_of_a_fit_is_read_without_pickle(tmp_path):
    """What Lightning writes for a run with the callback loads with weights_only: the opt-in is
    needed only for checkpoints holding other objects."""

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return stages.optimizers()

    stages = StageCallback(RECIPE, model_attr="net")
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    saves = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1,
                                         save_on_train_epoch_end=True)
    trainer = pl.Trainer(max_epochs=2, callbacks=[stages, saves], accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    callback, _, _ = started()
    state = callback._saved_state(tmp_path / "epoch=1.ckpt")
    assert state["schedule"]["index"] == 1 and state["spec"] == runner(stages).stage.spec.to_dict()
