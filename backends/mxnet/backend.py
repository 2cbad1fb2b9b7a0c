"""MXNet Gluon backend (MXNet 1.9.x): lists a ``gluon.Block``'s parameters and executes a plan.

One class per job, each in its own module (the same module names in every backend): listing,
execute, optimizers (plus fused_rules and update_rules: torch's rules as MXNet optimizers, on its
fused operators and in full precision), checkpoints, graph (cached prefixes), distributed
(parameter servers), zoo (GluonCV import shim, models for the CLI).
"""

from __future__ import annotations

from typing import Any

from mxnet import gluon

from .facts import FACTS
from .checkpoints import MXNetCheckpoints
from .distributed import MXNetDistributed
from .execute import MXNetExecute
from .graph import MXNetGraph
from .listing import MXNetListing, SymbolNorm
from .optimizers import MXNetOptimizers
from .update_rules import ScheduleAdapter, TorchAdam, TorchAdamW, TorchSGD
from .zoo import build_model, import_gluoncv


class MXNetBackend(MXNetListing, MXNetExecute, MXNetOptimizers, MXNetCheckpoints, MXNetGraph,
                   MXNetDistributed):
    name = "mxnet"
    facts = FACTS

    def owns(self, model: Any) -> bool:
        return isinstance(model, gluon.Block)

    def build_model(self, zoo: str, name: str, input_size: int | None = None) -> gluon.Block:
        """ModelZoo: a GluonCV model without weights, initialised, shapes inferred by one forward."""
        return build_model(zoo, name, input_size)


BACKEND = MXNetBackend()

__all__ = ["BACKEND", "MXNetBackend", "ScheduleAdapter", "SymbolNorm", "TorchAdam", "TorchAdamW",
           "TorchSGD", "build_model", "import_gluoncv"]
