"""Importers: a peer's fine-tuning configuration as an ordinary tunespec recipe (a plain mapping,
printable as YAML) that reproduces the peer's per-parameter settings."""

from .mmengine import from_mmengine

__all__ = ["from_mmengine"]
