"""Deprecated location of the Lightning callback: use ``tunespec.integrations.lightning``."""

import warnings

from tunespec.integrations.lightning import StageCallback

warnings.warn("tunespec.backends.lightning is deprecated; import StageCallback from "
              "tunespec.integrations.lightning", DeprecationWarning, stacklevel=2)

__all__ = ["StageCallback"]
