"""One rank of a 2-process gloo DDP run with a frozen backbone and an unfreeze stage.

Run by tests/test_distributed.py as ``python ddp_worker.py OUT_DIR [--no-rewrap]`` with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; writes rank<N>.npz with the weights it ends with.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

import tunespec
from tunespec.backends.torch import BACKEND

RECIPE = {"preset": "heads", "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
          "stages": [{"at_epoch": 1, "preset": "5+", "lr_factor": 0.5}]}


def arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {t.canonical: t.handle.detach().numpy().copy() for t in BACKEND.listing(model).tensors}


def main() -> None:
    out, rank = sys.argv[1], int(os.environ["RANK"])
    if "--no-rewrap" in sys.argv:  # the control: what happens when DDP is not re-wrapped
        type(BACKEND).rewrap = lambda self, model: model
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same initial weights on both ranks
    net = torchvision.models.resnet18(weights=None, num_classes=5)
    initial = arrays(net)
    schedule = tunespec.StageRunner(RECIPE)
    net, opt = schedule.start(net)  # applied before wrapping: DDP registers only trainable tensors
    model = DDP(net)
    reduced: list[int] = []

    def count(state, bucket):  # how many gradient elements each step all-reduces
        reduced.append(bucket.buffer().numel())
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, count)
    names = sorted(d.name for d in tunespec.plan(model, RECIPE).trainable)  # through 'module.'
    per_epoch = []
    rng = np.random.default_rng(rank)  # each rank sees different data
    for epoch in range(2):
        reduced.clear()
        for _ in range(2):
            x = torch.from_numpy(rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
            y = torch.from_numpy(rng.integers(0, 5, 4))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        per_epoch.append(sum(reduced) // 2)
        before = model
        model, opt = schedule.step(epoch, model, opt)
        if model is not before:
            model.register_comm_hook(None, count)
    schedule.plan.verify().raise_if_changed()
    np.savez(os.path.join(out, f"rank{rank}.npz"), **{f"w:{k}": v for k, v in arrays(net).items()},
             **{f"init:{k}": v for k, v in initial.items()}, reduced=np.array(per_epoch),
             trainable0=np.array(names))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
