"""Model cards: named layer groups, ordered layers and presets for a model family, found from
the model's class. One module per zoo registers its cards; :mod:`.base` has the card type.
"""

from __future__ import annotations

from tunespec.planning.cards.base import (ABOVE_BLOCKS, HEAD_GROUPS, LAST_K, RESNET, STAGES, Card, _backbone, _CARDS, _derived_presets,
                   _resnet_body, _type_name, card_for, preset_rules, register_card)
from tunespec.recipe.layer_decay import Layer
from tunespec.planning.cards import gluoncv, huggingface, timm, torchvision  # noqa: F401  (each registers its cards)

__all__ = ["ABOVE_BLOCKS", "Card", "HEAD_GROUPS", "LAST_K", "Layer", "RESNET", "STAGES", "card_for", "preset_rules",
           "register_card"]
