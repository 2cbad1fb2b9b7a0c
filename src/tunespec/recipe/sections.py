"""The one table of a recipe's sections besides the spec's own keys (what each describes).

Each section is read by the module of the recipe layer that owns it (:mod:`tunespec.recipe.recipe`
maps them); this table imports nothing, so the spec can name every section it does not read.
"""

from __future__ import annotations

from typing import Mapping

RECIPE_SECTIONS: Mapping[str, str] = {
    "optimizer": "optimizer name, lr, weight_decay, semantics and options",
    "schedule": "lr schedule: constant, step, multistep, cosine, onecycle, with linear warmup",
    "stages": "staged unfreezing: later specs switched to at an epoch, step or plateau",
    "init": "re-initialise parameters: seed and rules {match/layer, method, arguments}",
}
SECTION_KEYS: tuple[str, ...] = tuple(RECIPE_SECTIONS)
