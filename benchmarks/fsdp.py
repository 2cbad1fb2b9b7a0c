"""Sharded fine-tuning memory (torch FSDP2 through ``tunespec.shard``), two gloo CPU ranks.

Per rank, after three Adam steps of layer4+fc fine-tuning of a ResNet-18: the bytes of gradients
plus optimizer state held for frozen parameters (target 0) and for trainable ones, against the
same run under unsharded DDP (target about 1/world: each rank holds its shard of both). The
figures are counted from the tensors themselves (local shards of DTensors), so they are exact and
do not depend on the machine's load. Rows report the largest rank.

Run alone: python benchmarks/fsdp.py (or through run.py --only fsdp).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from common import SPEC_L4, Context, row

FAMILY = "fsdp"
WORLD = 2
SIZE = 32  # px: memory of gradients and state does not depend on the input size


def rows(ctx: Context) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": str(ctx.threads)}
        procs = [subprocess.Popen([sys.executable, __file__, "--rank-worker", out],
                                  env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(WORLD)]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        if any(p.returncode for p in procs):
            sys.stderr.write("\n".join(logs))
            raise RuntimeError("an fsdp benchmark rank failed")
        found = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(WORLD)]
    frozen = max(f["fsdp"]["frozen"] for f in found)
    share = max(f["fsdp"]["trainable"] / f["ddp"]["trainable"] for f in found)
    extra = {"framework": "torch", "device": f"cpu, {WORLD} gloo ranks"}
    return [
        row("torch FSDP2: gradient + Adam state bytes per rank, frozen parameters", frozen, "B", 0, **extra),
        row("torch FSDP2: the same, trainable parameters (largest rank)",
            max(f["fsdp"]["trainable"] for f in found), "B", **extra),
        row("torch DDP (unsharded): the same, trainable parameters", found[0]["ddp"]["trainable"], "B",
            **extra),
        row(f"torch FSDP2 / DDP, trainable gradient + state bytes per rank (target ~1/{WORLD})", share, "x",
            1.05 / WORLD, **extra),
        row("torch DDP (unsharded): frozen parameters", max(f["ddp"]["frozen"] for f in found), "B", 0,
            **extra)]


def _held(model, opt) -> dict[str, int]:
    """Bytes of gradient + optimizer state this rank holds, for frozen and trainable parameters."""
    def local(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    out = {"frozen": 0, "trainable": 0}
    for p in model.parameters():
        held = (local(p.grad) if p.grad is not None else 0) + sum(
            local(v) for v in opt.state.get(p, {}).values() if hasattr(v, "numel") and v.dim() > 0)
        out["trainable" if p.requires_grad else "frozen"] += held
    return out


def rank_worker(out: str) -> None:
    import torch
    import torch.distributed as dist
    import torchvision

    import tunespec

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(rank))
    y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(rank))

    def train(model, opt) -> dict[str, int]:
        for _ in range(3):
            opt.zero_grad(set_to_none=False)  # gradients stay allocated: what a step holds at its peak
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return _held(model, opt)

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    opt = tunespec.optimizer(net, SPEC_L4, "adam", lr=1e-3)
    ddp = train(torch.nn.parallel.DistributedDataParallel(net), opt)

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    from torch.distributed.device_mesh import init_device_mesh

    # a CPU mesh (fully_shard's default is the accelerator's), to compare with DDP on the CPU
    plan = tunespec.shard(net, SPEC_L4, mesh=init_device_mesh("cpu", (WORLD,)))
    fsdp = train(net, plan.optimizer("adam", lr=1e-3))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"ddp": ddp, "fsdp": fsdp}))
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rank-worker"]:
        rank_worker(sys.argv[2])
    else:
        from common import fmt

        for r in rows(Context()):
            print(f"{r['figure']:80} {fmt(r['value'], r['unit']):>14}")
