"""The errors and warnings tunespec raises.

Every error is raised before the model is touched, so catching one leaves the
model exactly as it was.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A spec, a rule or its use on a model is wrong; the message names the fix."""


class StalePlanError(SpecError):
    """The model's parameters changed after planning (e.g. GluonCV ``reset_class``)."""


class MissingFrameworkError(ImportError):
    """The framework a backend needs is not installed."""


class TuneSpecWarning(UserWarning):
    """Something in the spec probably does not do what was meant (non-strict mode)."""
