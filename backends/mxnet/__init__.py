"""MXNet Gluon backend (MXNet 1.9.x): lists a ``gluon.Block``'s parameters and executes a plan.

One class per job, each in its own module (the same module names in every backend): listing,
execute, optimizers (plus fused_rules and update_rules: torch's rules as MXNet optimizers, on MXNet's
fused operators and in full precision), checkpoints, graph
(cached prefixes), distributed (parameter servers), zoo (GluonCV import shim, models for the CLI).
"""

from __future__ import annotations

from typing import Any

from mxnet import gluon

from .checkpoints import MXNetCheckpoints
from .distributed import MXNetDistributed
from .execute import MXNetExecute
from .graph import MXNetGraph
from .listing import MXNetListing, SymbolNorm
from .optimizers import MXNetOptimizers
from .fused_rules import FusedTorchAdam, FusedTorchAdamW, FusedTorchSGD
from .update_rules import ScheduleAdapter, TorchAdam, TorchAdamW, TorchSGD
from .zoo import build_model, import_gluoncv


class MXNetBackend(MXNetListing, MXNetExecute, MXNetOptimizers, MXNetCheckpoints, MXNetGraph,
                   MXNetDistributed):
    name = "mxnet"

    def owns(self, model: Any) -> bool:
        return isinstance(model, gluon.Block)


BACKEND = MXNetBackend()

__all__ = ["BACKEND", "FusedTorchAdam", "FusedTorchAdamW", "FusedTorchSGD", "MXNetBackend", "ScheduleAdapter",
           "SymbolNorm", "TorchAdam", "TorchAdamW", "TorchSGD", "build_model", "import_gluoncv"]
