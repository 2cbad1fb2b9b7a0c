"""tunespec: one declarative fine-tuning spec for PyTorch and MXNet Gluon.

Importing tunespec imports neither torch nor mxnet; a backend is loaded when a
model of its framework is planned.
"""

from .api import apply, optimizer, plan, scheduler
from .cards import Card, register_card
from .errors import MissingFrameworkError, SpecError, StalePlanError, TuneSpecWarning
from .naming import NameMap
from .plan import Plan, VerifyReport
from .port import PortReport, port
from .recipe import OptimizerSpec, Recipe, Schedule, load_recipe, load_spec
from .spec import Rule, Spec

__all__ = [
    "Card", "MissingFrameworkError", "NameMap", "Plan", "PortReport", "Rule", "Spec", "SpecError",
    "StalePlanError", "TuneSpecWarning", "VerifyReport", "apply", "load_spec", "optimizer", "plan",
    "port", "register_card", "OptimizerSpec", "Recipe", "Schedule", "load_recipe", "scheduler",
]
__version__ = "0.1.0"
