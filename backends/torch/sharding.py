"""FSDP2 (``fully_shard``) on the units the core chose, and where a sharded model's shards live.

Sharded run checkpoints are the core's (``tunespec.run_files``): each rank writes a file of its
own parts (``read(handle, local=True)`` and its optimizer export), so nothing here reads or
writes them; ``process_group`` only says which rank this is and reduces an all-ranks-ok flag.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from tunespec.backend_api import ProcessGroup, excerpt
from tunespec.errors import SpecError

from .listing import _unwrap, _wrapper_attr

_OWN_OPTIONS = ("module", "mesh", "reshard_after_forward", "ignored_params")


def _fully_shard() -> Any:
    from torch.distributed.fsdp import fully_shard

    return fully_shard


def _module_at(model: nn.Module, path: str) -> nn.Module:
    """The module at a canonical path, seeing through wrappers as the listing does."""
    module = model
    for part in path.split(".") if path else ():
        while (attr := _wrapper_attr(module)) is not None:
            module = getattr(module, attr)
        module = module._modules[part]
    return _unwrap(module)


class TorchSharding:
    # --- sharding -------------------------------------------------------------------------
    def check_shard(self, model: nn.Module, mesh: Any = None, reshard_after_forward: bool | None = None,
                    **options: Any) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise SpecError("shard: torch.distributed is not initialised; call "
                            "torch.distributed.init_process_group(...) on every rank first")
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise SpecError("shard: the model is wrapped in DistributedDataParallel; shard the bare "
                            "model instead (sharding replaces data parallelism)")
        if self.is_sharded(model):
            raise SpecError("shard: the model is already sharded; shard a fresh model once")
        accepted = [k for k in inspect.signature(_fully_shard()).parameters if k not in _OWN_OPTIONS]
        for key in options:
            if key == "ignored_params":
                raise SpecError("shard: ignored_params would leave parameters out of the units the plan "
                                "chose; freeze them in the spec instead (frozen units hold no gradients "
                                "and no optimizer state)")
            if key not in accepted:
                raise SpecError(f"shard: unknown option {excerpt(key, 40)}; fully_shard takes "
                                f"{', '.join(accepted)} (and mesh, reshard_after_forward)")

    def shard(self, model: nn.Module, units: Sequence[str], **options: Any) -> None:
        fully_shard = _fully_shard()
        modules = [_module_at(model, path) for path in units]  # every path resolved first
        for module in modules:
            fully_shard(module, **options)

    def is_sharded(self, model: nn.Module) -> bool:
        from torch.distributed.fsdp import FSDPModule

        return any(isinstance(m, FSDPModule) for m in _unwrap(model).modules())

    def process_group(self, model: nn.Module) -> ProcessGroup | None:
        """Where a sharded model's shards live: this rank of the default process group (run
        checkpoints are written by the core, one file per rank)."""
        if not self.is_sharded(model):
            return None

        def all_ok(ok: bool) -> bool:
            flag = torch.tensor([0 if ok else 1], device=_collective_device())
            dist.all_reduce(flag)
            return int(flag.item()) == 0

        return ProcessGroup(dist.get_rank(), dist.get_world_size(), all_ok)


def _collective_device() -> torch.device:
    """The device the default process group's backend reduces on (NCCL: the current GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
