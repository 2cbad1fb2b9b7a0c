"""A stage's ramp against Lightning's own BackboneFinetuning: per-epoch lrs equal bit for bit."""

from __future__ import annotations

import pytest

from frameworks import needs

torch = needs("torch")
pl = needs("lightning.pytorch")
from lightning.pytorch.callbacks import BackboneFinetuning  # noqa: E402

import tunespec  # noqa: E402

EPOCHS, UNFREEZE, LR = 9, 2, 0.03


class Net(pl.LightningModule):
    """Lightning's documented shape: a ``backbone`` the callback freezes, and a head."""

    def __init__(self, record: list | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 6))
        self.head = torch.nn.Linear(6, 2)
        self.record = record

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=LR, momentum=0.9)

    def on_train_epoch_start(self):  # runs after the callbacks' hook: the lrs this epoch trains with
        self.record.append(lrs(self, self.trainer.optimizers[0]))


def lrs(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float | None]:
    """Every parameter's lr in ``optimizer`` (None: not trained)."""
    of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: of.get(id(p)) if p.requires_grad else None for n, p in module.named_parameters()}


def per_epoch(growth: float | list[float]):
    """Lightning's lambda_func for a constant growth or a list: the k-th growth (at epoch
    UNFREEZE + k, where Lightning calls lambda_func(epoch + 1)) is the list's k-th entry, the
    last one repeating."""
    if not isinstance(growth, list):
        return lambda _: growth
    return lambda epoch: growth[min(epoch - UNFREEZE - 2, len(growth) - 1)]


def lightning_run(growth: float | list[float], ratio: float) -> list[dict[str, float | None]]:
    record: list = []
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 2)),
                                       batch_size=4)
    callback = BackboneFinetuning(unfreeze_backbone_at_epoch=UNFREEZE, lambda_func=per_epoch(growth),
                                  backbone_initial_ratio_lr=ratio)
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[callback], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_train_batches=1)
    trainer.fit(Net(record), data)
    return record


def tunespec_run(growth: float | list[float], ratio: float) -> list[dict[str, float | None]]:
    net = Net()
    recipe = {"freeze": [r"backbone\..*"], "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9},
              "stages": [{"at_epoch": UNFREEZE, "train": [".*"], "ramp": {"start": ratio, "growth": growth}}]}
    runner = tunespec.StageRunner(recipe)
    net, opt = runner.start(net)
    record = []
    for epoch in range(EPOCHS):
        record.append(lrs(net, opt))
        net, opt = runner.step(epoch, net, opt)
    return record


@pytest.mark.parametrize("growth, ratio", [(1.5, 0.1), (2.0, 0.05)])
def test_ramp_equals_backbone_finetuning_every_epoch(growth, ratio):
    theirs, ours = lightning_run(growth, ratio), tunespec_run(growth, ratio)
    assert len(theirs) == EPOCHS
    assert ours == theirs  # float ==, every parameter, every epoch
    backbone = [r["backbone.0.weight"] for r in ours]
    assert backbone[:UNFREEZE] == [None] * UNFREEZE and backbone[UNFREEZE] == LR * ratio
    assert backbone[UNFREEZE] < backbone[UNFREEZE + 1] and backbone[-1] == LR  # grew up to the head's


@pytest.mark.parametrize("growth, ratio", [
    ([1.5, 2.0, 3.0, 1.2, 1.1, 1.05], 0.05),      # a ramp that speeds up, then slows down
    ([4.0, 0.5, 3.0, 0.9, 2.0, 1.0], 0.1),        # back down after reaching the head's lr
    ([1.1, 1.3], 0.2),                            # the last entry repeats
])
def test_a_growth_per_epoch_equals_a_varying_lambda_func(growth, ratio):
    theirs, ours = lightning_run(growth, ratio), tunespec_run(growth, ratio)
    assert ours == theirs  # float ==, every parameter, every epoch
    backbone = [r["backbone.0.weight"] for r in ours]
    assert len(set(backbone[UNFREEZE:])) > 2


@pytest.mark.parametrize("growth, message", [
    ([], "growth"), ([1.5, 0.0], r"growth\[1\]"), ([1.5, float("nan")], r"growth\[1\]"), (["2"], r"growth\[0\]"),
    ([1.5] * 10001, "growth"), ([1.5, 0.9], "last entry"),
])
def test_bad_growth_lists_are_spec_errors(growth, message):
    with pytest.raises(tunespec.SpecError, match=message):
        tunespec.load_recipe({"stages": [{"at_epoch": 1, "train": [".*"], "ramp": {"start": 0.1, "growth": growth}}]})


def test_a_growth_list_is_per_epoch_only():
    with pytest.raises(tunespec.SpecError, match="per epoch"):
        tunespec.load_recipe({"stages": [{"at_epoch": 1, "train": [".*"],
                                          "ramp": {"start": 0.1, "growth": [2.0, 3.0], "per": "step"}}]})
