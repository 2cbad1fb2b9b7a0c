"""Integrations with training frameworks built on a backend (Lightning on torch).

They are not backends: they drive tunespec's public lifecycle (stages, checkpoints) from another
library's callbacks, so they may import any of tunespec, while backends see only the protocol.
"""
