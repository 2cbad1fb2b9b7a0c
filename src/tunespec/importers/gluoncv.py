"""GluonCV's native parameter patterns as a tunespec recipe.

GluonCV's training scripts and the Gluon Q&A select parameters with regexes on Gluon's prefixed
names, matched at the start (``re.match``) by ``collect_params(pattern)``: Faster R-CNN's
``train_patterns`` (the Trainer gets only those), ``collect_params('(?!dense).*')
.setattr('grad_req', 'null')`` (freeze what matches) and ``--no-wd`` (``'.*beta|.*gamma|.*bias'``
get ``wd_mult`` 0). The recipe keeps each pattern as written in a rule's ``native`` key; the
core matches it against the native names the backend reports when the recipe is planned.
"""

from __future__ import annotations

from typing import Any

from tunespec.recipe import validate as V
from tunespec.errors import SpecError

NO_WD_PATTERN = ".*beta|.*gamma|.*bias"  # GluonCV's train scripts, --no-wd


def from_gluoncv(train_patterns: str | None = None, freeze_patterns: str | None = None,
                 no_wd: bool = False) -> dict[str, Any]:
    """A recipe doing what GluonCV does with these patterns.

    ``train_patterns``: only matching parameters train (``Trainer(net.collect_params(p))``);
    ``freeze_patterns``: matching parameters are frozen (``collect_params(p).setattr('grad_req',
    'null')``); ``no_wd``: ``--no-wd``, no weight decay on norm parameters and biases.
    """
    rules: list[dict[str, Any]] = []
    recipe: dict[str, Any] = {}
    if train_patterns is not None:
        recipe["freeze"] = [".*"]
        rules.append({"native": V.regex(train_patterns, "train_patterns"), "trainable": True})
    if freeze_patterns is not None:
        rules.append({"native": V.regex(freeze_patterns, "freeze_patterns"), "trainable": False})
    if V.boolean(no_wd, "no_wd"):
        rules.append({"native": NO_WD_PATTERN, "wd_mult": 0.0})
    if not rules:
        raise SpecError("from_gluoncv: give train_patterns, freeze_patterns and/or no_wd=True")
    recipe["rules"] = rules
    return recipe
