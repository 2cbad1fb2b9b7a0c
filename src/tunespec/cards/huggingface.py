"""Cards for Hugging Face transformers models."""

from __future__ import annotations
