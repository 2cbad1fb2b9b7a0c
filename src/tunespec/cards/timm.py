"""Cards for timm models."""

from __future__ import annotations
