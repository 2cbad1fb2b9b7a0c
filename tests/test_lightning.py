"""The Lightning callback: a recipe's stages in a lightning.Trainer fit."""

from __future__ import annotations

import pytest

from frameworks import TorchHarness, needs

torch = needs("torch")
pl = needs("lightning.pytorch")
import numpy as np  # noqa: E402

import torchvision  # noqa: E402

from tunespec import SpecError  # noqa: E402
from tunespec.integrations.lightning import StageCallback  # noqa: E402

RECIPE = {"preset": "heads", "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
          "schedule": {"type": "multistep", "milestones": [5], "gamma": 0.5},
          "stages": {"mode": "min", "then": [{"on_plateau": 1, "preset": "4+", "lr_factor": 0.1}]}}


class Module(pl.LightningModule):
    def __init__(self, stages: StageCallback):
        super().__init__()
        torch.manual_seed(0)
        self.net = torchvision.models.resnet18(weights=None, num_classes=5)
        self.stages = stages
        self.val_losses = iter([1.0, 2.0, 3.0])  # epoch 1 does not improve: the plateau stage starts

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, _):
        self.log("val_loss", next(self.val_losses))

    def configure_optimizers(self):
        return self.stages.optimizers()


def loader(n: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(n)
    data = torch.utils.data.TensorDataset(torch.randn(4 * n, 3, 32, 32, generator=g),
                                          torch.randint(0, 5, (4 * n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def fit(stages: StageCallback, epochs: int) -> Module:
    module = Module(stages)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[stages], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module, loader(3), loader(1))
    return module


def test_plateau_stage_in_a_lightning_fit():
    h = TorchHarness()
    stages = StageCallback(RECIPE, monitor="val_loss", model_attr="net")
    module = Module(stages)
    before = h.arrays(module.net)
    module = fit(stages, 3)
    after = h.arrays(module.net)
    schedule = stages.runner
    assert schedule.stage.name == "4+" and schedule.history == [(1, "4+")]
    schedule.plan.verify().raise_if_changed()
    assert not np.array_equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])
    assert np.array_equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    opt = stages._optimizer
    assert [len(g["params"]) for g in opt.param_groups] == [2, 30]
    # 9 steps: milestone 5 halves both groups, the new one at a tenth of the lr
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0005)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)


def test_missing_monitor_is_refused():
    stages = StageCallback(RECIPE, monitor="val_acc", model_attr="net")
    with pytest.raises(SpecError, match="'val_acc' was not logged .*val_loss"):
        fit(stages, 1)
    with pytest.raises(SpecError, match="has not set up yet"):
        StageCallback(RECIPE).load_state_dict({"schedule": {"index": 1}})


AT_EPOCH = {**RECIPE, "stages": [{"at_epoch": 1, "preset": "4+", "lr_factor": 0.1}]}


def checkpointed_fit(stages: StageCallback, epochs: int, out, ckpt_path=None) -> Module:
    module = Module(stages)
    # ModelCheckpoint's default with validation every epoch: it saves at the epoch's end, after
    # the callback's stage change (tests/test_lightning_strategies.py says save_on_train_epoch_end)
    saves = [] if ckpt_path is not None else [
        pl.callbacks.ModelCheckpoint(dirpath=out, filename="{epoch}", save_top_k=-1)]
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[stages, *saves], accelerator="cpu", logger=False,
                         enable_checkpointing=ckpt_path is None, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader(2), loader(1), ckpt_path=ckpt_path)
    return module


def test_resume_after_a_stage_change_matches_the_uninterrupted_fit(tmp_path):
    """Lightning builds the optimizer of stage 0, then gives the callback its state: the callback
    replays the stage change so the saved optimizer state (momentum of the new group) fits."""
    h = TorchHarness()
    stages = StageCallback(AT_EPOCH, model_attr="net")
    uninterrupted = h.arrays(checkpointed_fit(stages, 3, tmp_path).net)
    resumed_stages = StageCallback(AT_EPOCH, model_attr="net")
    resumed = checkpointed_fit(resumed_stages, 3, tmp_path, ckpt_path=tmp_path / "epoch=1.ckpt")
    assert resumed_stages.runner.index == 1 and resumed_stages.runner.history == [(0, "4+")]
    assert [len(g["params"]) for g in resumed_stages._optimizer.param_groups] == [2, 30]
    after = h.arrays(resumed.net)
    assert [k for k in after if not np.array_equal(after[k], uninterrupted[k])] == []
    resumed_stages.runner.plan.verify().raise_if_changed()
    other = {**AT_EPOCH, "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9}}
    with pytest.raises(SpecError, match="optimizer.lr differs"):
        checkpointed_fit(StageCallback(other, model_attr="net"), 3, tmp_path,
                         ckpt_path=tmp_path / "epoch=1.ckpt")
