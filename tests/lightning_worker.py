"""One Lightning fit with StageCallback on 2 CPU processes (gloo), a frozen backbone and an
unfreeze stage at epoch 1.

Run by tests/test_lightning_strategies.py as
``python lightning_worker.py OUT_DIR STRATEGY [--resume CKPT] [--no-rewrap]`` (STRATEGY: ddp,
ddp_spawn or fsdp); Lightning's launcher starts rank 1 by running this script again (ddp, fsdp)
or spawns it (ddp_spawn). Each rank writes rank<N>.npz: its final weights (whole tensors), the
initial ones, per epoch the gradient elements DDP all-reduced per step (DDP) and the parameters
that had gradients, and the parameters with optimizer state. The uninterrupted run saves a
Lightning checkpoint after every epoch in OUT_DIR/ckpt.
"""

from __future__ import annotations

import contextlib
import os
import sys

import lightning.pytorch as pl
import numpy as np
import torch
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from tunespec.integrations.lightning import StageCallback

RECIPE = {"preset": "heads", "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
          "schedule": {"type": "multistep", "milestones": [3], "gamma": 0.5},
          "stages": [{"at_epoch": 1, "preset": "5+", "lr_factor": 0.5}]}
EPOCHS = 3


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU, for the tests: Lightning refuses accelerator="cpu" for
    exactly FSDPStrategy (a subclass passes), and passes FSDP ``device_id=None`` on CPU, which
    torch's FSDP reads as "find an accelerator"; this subclass names the CPU instead. Wrapping,
    sharding, the optimizer and checkpoints are Lightning's own code."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import torch.distributed.fsdp as fsdp

        real = fsdp.FullyShardedDataParallel

        class OnCPU(real):  # type: ignore[misc, valid-type]
            def __init__(self, module, device_id=None, **kwargs):
                super().__init__(module, device_id=torch.device("cpu"), **kwargs)

        fsdp.FullyShardedDataParallel = OnCPU
        try:
            return super()._setup_model(model)
        finally:
            fsdp.FullyShardedDataParallel = real


class Module(pl.LightningModule):
    def __init__(self, stages: StageCallback):
        super().__init__()
        torch.manual_seed(0)  # the same initial weights on every rank and in every run
        self.net = torchvision.models.resnet18(weights=None, num_classes=5)
        self.stages = stages

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return self.stages.optimizers()


@contextlib.contextmanager
def whole(trainer: pl.Trainer):
    if isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(trainer.strategy.model):
            yield
    else:
        yield


class Probe(pl.Callback):
    """Records what the test checks: reduced gradient elements, gradients, optimizer state, weights."""

    def __init__(self, out: str, initial: dict[str, np.ndarray] | None):
        self.out, self.initial = out, initial
        self.wrapper: int | None = None
        self.reduced: dict[int, list[int]] = {}
        self.grads: dict[int, set[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        model = trainer.strategy.model
        if isinstance(model, DistributedDataParallel) and id(model) != self.wrapper:
            self.wrapper = id(model)  # a new wrapper after a stage change: count its buckets too

            def count(state, bucket):
                self.reduced.setdefault(trainer.current_epoch, []).append(bucket.buffer().numel())
                return allreduce_hook(state, bucket)

            model.register_comm_hook(None, count)

    def on_after_backward(self, trainer, pl_module):
        names = {n for n, p in pl_module.net.named_parameters() if p.grad is not None}
        self.grads.setdefault(trainer.current_epoch, set()).update(names)

    def on_train_end(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        names = {id(p): n for n, p in pl_module.net.named_parameters()}
        state = sorted(names[id(p)] for p in opt.state if opt.state[p])
        with whole(trainer):
            final = {k: v.detach().clone().numpy() for k, v in pl_module.net.state_dict().items()}
        stages = next(c for c in trainer.callbacks if isinstance(c, StageCallback))
        arrays = {f"w:{k}": v for k, v in final.items()}
        arrays.update({f"init:{k}": v for k, v in (self.initial or {}).items()})
        for epoch, counts in self.reduced.items():
            arrays[f"reduced:{epoch}"] = np.array(counts)
        for epoch, grads in self.grads.items():
            arrays[f"grads:{epoch}"] = np.array(sorted(grads))
        np.savez(os.path.join(self.out, f"rank{trainer.global_rank}.npz"), **arrays, state=np.array(state),
                 index=stages.runner.index, history=np.array([h[1] for h in stages.runner.history]),
                 groups=np.array([len(g["params"]) for g in opt.param_groups]),
                 lrs=np.array([g["lr"] for g in opt.param_groups]))


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32, generator=g),
                                          torch.randint(0, 5, (16,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)  # 2 steps per epoch on each of 2 ranks


def main() -> None:
    out, name = sys.argv[1], sys.argv[2]
    resume = sys.argv[sys.argv.index("--resume") + 1] if "--resume" in sys.argv else None
    if "--no-rewrap" in sys.argv:  # the control: keep the DDP wrapper built for stage 0
        StageCallback._after_change = lambda self, trainer, added: None
    torch.set_num_threads(1)
    stages = StageCallback(RECIPE, model_attr="net")
    module = Module(stages)
    initial = None if resume else {k: v.numpy().copy() for k, v in module.net.state_dict().items()}
    callbacks: list[pl.Callback] = [stages, Probe(out, initial)]
    if not resume:
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), filename="{epoch}",
                                         save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True))
    strategy = CPUFSDPStrategy(state_dict_type="full") if name == "fsdp" else name
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=2, strategy=strategy,
                         callbacks=callbacks, logger=False, enable_checkpointing=not resume,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=out)
    trainer.fit(module, loader(), ckpt_path=resume)


if __name__ == "__main__":
    main()
