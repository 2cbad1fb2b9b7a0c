"""Importers: a peer's fine-tuning settings as an ordinary tunespec recipe (a dict, printable as
YAML), reproducing the peer parameter for parameter."""

from .gluoncv import from_gluoncv
from .mmengine import from_mmengine
from .timm import from_timm

__all__ = ["from_gluoncv", "from_mmengine", "from_timm"]
