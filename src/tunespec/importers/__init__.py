"""Importers: a peer's fine-tuning settings as an ordinary tunespec recipe (a dict, printable as
YAML), reproducing the peer parameter for parameter."""

from tunespec.importers.gluoncv import from_gluoncv
from tunespec.importers.mmengine import from_mmengine
from tunespec.importers.timm import from_timm

__all__ = ["from_gluoncv", "from_mmengine", "from_timm"]
