"""One rank of a 2-process gloo FSDP2 run: plan-aware sharding, a stage that unfreezes layer4,
a sharded checkpoint (one file per rank) mid-stage and a resume from it in a fresh model.

Run by tests/test_fsdp.py as ``python fsdp_worker.py OUT_DIR`` with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT set; writes rank<N>.npz (weights, checks) and rank<N>.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import tunespec
from tunespec.backends.torch import BACKEND

RECIPE = {"freeze": [".*"], "train": [r"fc\..*"], "bn": "freeze_frozen",
          "optimizer": {"name": "adam", "lr": 0.01},
          "stages": [{"at_epoch": 1, "freeze": [".*"], "train": [r"(layer4|fc)\..*"], "lr_factor": 0.5}]}
STEPS, SAVE_AT = 2, (1, 1)  # steps per epoch; the checkpoint is taken after epoch 1's first step


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2))
        self.layer3 = nn.Sequential(Block(16, 16, 1))
        self.layer4 = nn.Sequential(Block(16, 32, 2))
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def batch(rank: int, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + 10 * epoch + step)  # each rank its own data
    return torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, rank: int, epoch: int, step: int) -> None:
    x, y = batch(rank, epoch, step)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def full(model: nn.Module) -> dict[str, np.ndarray]:
    """Every tensor by canonical name, gathered (BACKEND.read gathers a sharded one)."""
    return {t.canonical: BACKEND.read(t.handle) for t in BACKEND.listing(model).tensors}


def fresh() -> tuple[nn.Module, tunespec.Plan]:
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)  # the same initial weights on both ranks
    net = SmallResNet()
    # A CPU mesh: fully_shard's default is the accelerator's, which would move the model to a GPU
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return net, tunespec.shard(net, RECIPE, mesh=mesh)


def run(model: nn.Module, opt: torch.optim.Optimizer, schedule: tunespec.StageRunner, rank: int,
        start: tuple[int, int], ckpt: Path | None, log: dict) -> tuple[nn.Module, torch.optim.Optimizer]:
    for epoch in range(start[0], 3):
        for step in range(start[1] if epoch == start[0] else 0, STEPS):
            train_step(model, opt, rank, epoch, step)
            if ckpt is not None and (epoch, step) == SAVE_AT:
                tunespec.save_checkpoint(ckpt, model, opt, schedule, epoch=epoch, extra={"step": step})
            if (epoch, step) == (1, 0):
                log["grads_stage1"] = {n: p.grad is not None for n, p in model.named_parameters()}
                log["state_stage1"] = sorted(n for n, p in model.named_parameters() if opt.state.get(p))
        if epoch == 0:
            log["grads_stage0"] = {n: p.grad is not None for n, p in model.named_parameters()}
            log["state_stage0"] = sorted(n for n, p in model.named_parameters() if opt.state.get(p))
        model, opt = schedule.step(epoch, model, opt)
    return model, opt


def main() -> None:
    out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
    dist.init_process_group("gloo")
    log: dict = {}
    unsharded = sorted(t.canonical for t in BACKEND.listing(SmallResNet()).tensors)

    net, plan = fresh()
    log["names_equal"] = sorted(t.canonical for t in plan.listing.tensors) == unsharded
    log["fsdp_modules"] = sorted(n for n, m in net.named_modules()
                                 if type(m).__name__.startswith("FSDP"))
    log["dtensor_params"] = all(type(p).__name__ == "DTensor" or hasattr(p, "device_mesh")
                                for p in net.parameters())
    initial = full(net)
    schedule = tunespec.StageRunner(RECIPE, steps_per_epoch=STEPS)
    net, opt = schedule.start(net)
    schedule.plan.check(opt)  # the optimizer holds the sharded parameters
    ckpt = out / "ckpt"
    net, opt = run(net, opt, schedule, rank, (0, 0), ckpt, log)
    log["verify"] = schedule.plan.verify().ok
    final = full(net)
    local = {n: p.to_local().detach().numpy().copy() for n, p in net.named_parameters()}
    # write() keeps this rank's slice of a whole array; read() gathers it back
    w = net.layer2[0].conv1.weight
    BACKEND.write(w, final["layer2.0.conv1.weight"] + 1)
    log["write_read"] = bool(np.array_equal(BACKEND.read(w), final["layer2.0.conv1.weight"] + 1))
    BACKEND.write(w, final["layer2.0.conv1.weight"])
    log["write_restored"] = bool(np.array_equal(w.to_local().detach().numpy(),
                                                local["layer2.0.conv1.weight"]))

    # A damaged shard is refused before anything changes, on every rank; nothing read is a pickle.
    if rank == 0:
        assert not [p for p in ckpt.iterdir() if p.suffix not in (".safetensors", ".json")]
        shutil.copytree(ckpt, out / "damaged")
        data = next((out / "damaged").glob("rank*.safetensors"))
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 1
        data.write_bytes(bytes(raw))
    dist.barrier()
    net2, _ = fresh()
    schedule2 = tunespec.StageRunner(RECIPE, steps_per_epoch=STEPS)
    try:
        tunespec.resume(out / "damaged", net2, schedule2)
        log["damaged"] = "accepted"
    except tunespec.SpecError as exc:
        log["damaged"] = str(exc)
    log["damaged_left_unstarted"] = schedule2.plan is None
    try:
        tunespec.resume(ckpt, SmallResNet(), tunespec.StageRunner(RECIPE, steps_per_epoch=STEPS))
        log["unsharded_into"] = "accepted"
    except tunespec.SpecError as exc:
        log["unsharded_into"] = str(exc)
    net2, opt2, meta = tunespec.resume(ckpt, net2, schedule2)
    log["resumed_meta"] = meta
    log["resumed_stage"] = schedule2.index
    net2, opt2 = run(net2, opt2, schedule2, rank, (SAVE_AT[0], SAVE_AT[1] + 1), None, {})
    log["resumed_verify"] = schedule2.plan.verify().ok
    resumed = full(net2)
    local2 = {n: p.to_local().detach().numpy().copy() for n, p in net2.named_parameters()}
    log["resume_identical"] = all(np.array_equal(final[k], resumed[k]) for k in final) and all(
        np.array_equal(local[k], local2[k]) for k in local)

    np.savez(out / f"rank{rank}.npz", **{f"w:{k}": v for k, v in final.items()},
             **{f"init:{k}": v for k, v in initial.items()})
    (out / f"rank{rank}.json").write_text(json.dumps(log))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
