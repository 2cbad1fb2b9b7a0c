"""tunespec: one declarative fine-tuning spec for PyTorch and MXNet Gluon.

Importing tunespec imports neither torch nor mxnet; a backend is loaded when a
model of its framework is planned.
"""

from tunespec.api import apply, optimizer, plan, scheduler
from tunespec.backend_api import FrameworkFacts
from tunespec.cache import FrozenPrefix, cache_frozen
from tunespec.cards import Card, register_card
from tunespec.checkpoint import resume, save_checkpoint
from tunespec.errors import MissingFrameworkError, SpecError, StalePlanError, TuneSpecWarning
from tunespec.importers import from_mmengine, from_timm
from tunespec.init import InitReport, InitSpec, initialize
from tunespec.loading import LoadReport, load
from tunespec.naming import NameMap
from tunespec.plan import Plan, VerifyReport
from tunespec.port import PortReport, port
from tunespec.registry import register_backend, unregister_backend
from tunespec.sharding import shard
from tunespec.recipe import LRSchedule, OptimizerSpec, Recipe, load_recipe, load_spec
from tunespec.spec import Rule, Spec
from tunespec.stages import Schedule, Stage, StageRunner, StagesSpec

__all__ = [
    "FrozenPrefix", "cache_frozen",
    "Card", "MissingFrameworkError", "NameMap", "Plan", "PortReport", "Rule", "Spec", "SpecError",
    "StalePlanError", "TuneSpecWarning", "VerifyReport", "apply", "load_spec", "optimizer", "plan",
    "port", "register_card", "OptimizerSpec", "Recipe", "LRSchedule", "load_recipe", "scheduler",
    "LoadReport", "load", "InitReport", "InitSpec", "initialize",
    "Schedule", "Stage", "StageRunner", "StagesSpec", "resume", "save_checkpoint", "shard", "from_timm",
    "from_mmengine",
    "FrameworkFacts", "register_backend", "unregister_backend",
]
__version__ = "0.1.0"
