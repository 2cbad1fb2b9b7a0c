"""PyTorch backend: lists an ``nn.Module``'s tensors and executes a plan on it.

One class per job, each in its own module (the same module names in every backend): listing,
execute, optimizers, checkpoints, graph (cached prefixes), distributed, sharding (FSDP2), zoo
(models for the CLI).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .facts import FACTS
from .checkpoints import TorchCheckpoints
from .distributed import TorchDistributed
from .execute import FrozenStats, TorchExecute
from .graph import TorchGraph
from .listing import TorchListing
from .optimizers import TorchOptimizers
from .sharding import TorchSharding
from .zoo import build_model


class TorchBackend(TorchListing, TorchExecute, TorchOptimizers, TorchSharding, TorchCheckpoints, TorchGraph,
                   TorchDistributed):
    name = "torch"
    facts = FACTS

    def owns(self, model: Any) -> bool:
        return isinstance(model, nn.Module)

    def build_model(self, zoo: str, name: str, input_size: int | None = None) -> nn.Module:
        """ModelZoo: a torchvision model without weights (torch models need no shape-inferring forward)."""
        return build_model(zoo, name)


BACKEND = TorchBackend()

__all__ = ["BACKEND", "FrozenStats", "TorchBackend", "build_model"]
