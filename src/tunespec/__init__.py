"""tunespec: one declarative fine-tuning spec for PyTorch and MXNet Gluon.

Importing tunespec imports neither torch nor mxnet; a backend is loaded when a
model of its framework is planned.
"""

from .api import apply, optimizer, plan
from .cards import Card, register_card
from .errors import MissingFrameworkError, SpecError, StalePlanError, TuneSpecWarning
from .plan import Plan, VerifyReport
from .spec import Rule, Spec, load_spec

__all__ = [
    "Card", "MissingFrameworkError", "Plan", "Rule", "Spec", "SpecError", "StalePlanError",
    "TuneSpecWarning", "VerifyReport", "apply", "load_spec", "optimizer", "plan", "register_card",
]
__version__ = "0.1.0"
