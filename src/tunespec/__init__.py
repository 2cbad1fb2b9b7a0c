"""tunespec: one declarative fine-tuning spec for PyTorch and MXNet Gluon.

Importing tunespec imports neither torch nor mxnet; a backend is loaded when a
model of its framework is planned.
"""

from .api import apply, optimizer, plan, scheduler
from .backend_api import FrameworkFacts
from .cache import FrozenPrefix, cache_frozen
from .cards import Card, register_card
from .checkpoint import resume, save_checkpoint
from .groups_report import ModelGroups, groups
from .errors import MissingFrameworkError, SpecError, StalePlanError, TuneSpecWarning
from .importers import from_mmengine, from_timm
from .init import InitReport, InitSpec, initialize
from .loading import LoadReport, load
from .naming import NameMap
from .plan import Plan, VerifyReport
from .port import PortReport, port
from .registry import register_backend, unregister_backend
from .sharding import shard
from .recipe import LRSchedule, OptimizerSpec, Recipe, load_recipe, load_spec
from .spec import Rule, Spec
from .stages import Schedule, Stage, StageRunner, StagesSpec

__all__ = [
    "FrozenPrefix", "cache_frozen",
    "Card", "MissingFrameworkError", "NameMap", "Plan", "PortReport", "Rule", "Spec", "SpecError",
    "StalePlanError", "TuneSpecWarning", "VerifyReport", "apply", "load_spec", "optimizer", "plan",
    "port", "register_card", "OptimizerSpec", "Recipe", "LRSchedule", "load_recipe", "scheduler",
    "LoadReport", "load", "InitReport", "InitSpec", "initialize",
    "Schedule", "Stage", "StageRunner", "StagesSpec", "resume", "save_checkpoint", "shard", "from_timm",
    "from_mmengine",
    "FrameworkFacts", "register_backend", "unregister_backend", "groups", "ModelGroups",
]
__version__ = "0.1.0"
