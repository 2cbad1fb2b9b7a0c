"""Importers: a peer's fine-tuning configuration as an ordinary tunespec recipe (a plain mapping,
printable as YAML) that reproduces the peer's per-parameter settings."""

from .gluoncv import from_gluoncv
from .mmengine import from_mmengine

__all__ = ["from_gluoncv", "from_mmengine"]
