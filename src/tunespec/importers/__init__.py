"""Importers: a peer's fine-tuning settings as an ordinary tunespec recipe (a dict, printable as
YAML), reproducing the peer parameter for parameter."""

from .timm import from_timm

__all__ = ["from_timm"]
