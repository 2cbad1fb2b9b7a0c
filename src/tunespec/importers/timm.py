"""``from_timm``: timm's weight-decay and layer-decay parameter groups as a recipe.

timm's ``create_optimizer_v2(model, ..., weight_decay, layer_decay, filter_bias_and_bn)`` builds
its groups with ``param_groups_weight_decay`` (no decay for 1-d tensors, names ending in
``.bias`` and the model's ``no_weight_decay()`` names) or, given ``layer_decay``,
``param_groups_layer_decay`` (no decay for 1-d tensors and those names; lr scaled by
``layer_decay ** (L - 1 - layer)`` over the layers of ``model.group_matcher()``). The recipe
says the same with ``wd_mult`` rules and ``layer_decay`` (whose layers the model card gives;
timm's cards reproduce ``group_matcher``). timm's ``no_weight_decay`` entries are
``fnmatch`` patterns on parameter names; they become regexes.
"""

from __future__ import annotations

import re
from typing import Any, Collection
import fnmatch

from tunespec.recipe import validate as V
from tunespec.errors import SpecError
from tunespec.dispatch import backend_for
from tunespec.planning.make import plan

_GLOB = re.compile(r"\*|\?|\[!?\]?[^\]]*\]")


def glob_regex(pattern: str) -> str:
    """The regex that fullmatches what ``fnmatch.fnmatchcase(name, pattern)`` matches."""
    out, at = [], 0
    for m in _GLOB.finditer(pattern):
        out.append(re.escape(pattern[at:m.start()]))
        token = m.group()
        if token == "*":
            out.append(".*")
        elif token == "?":
            out.append(".")
        else:
            body = token[1:-1]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
        at = m.end()
    out.append(re.escape(pattern[at:]))
    return "".join(out)


def _model_names(model: Any) -> list[tuple[str, str, int | None]]:
    """(canonical, native, ndim) of each parameter, read through the model's backend."""
    listing = backend_for(model).listing(model)
    return [(t.canonical, t.native, t.ndim) for t in listing.params]


def _no_decay_rules(patterns: list[str], names: list[tuple[str, str, int | None]] | None) -> list[str]:
    """Regexes for timm's no-weight-decay patterns; with a model, only those that match, and the
    exact canonical names where a model wrapper makes them differ from the native ones."""
    out: list[str] = []
    for pattern in patterns:
        regex = glob_regex(pattern)
        if names is None:
            out.append(regex)
            continue
        native = {c for c, n, _ in names if fnmatch.fnmatchcase(n, pattern)}
        canonical = {c for c, _, _ in names if re.fullmatch(regex, c)}
        if not native:
            continue  # timm's list names a tensor this model does not have: no rule to write
        out.append(regex if native == canonical else "|".join(map(re.escape, sorted(native))))
    return out


def from_timm(model: Any = None, weight_decay: float = 0.0, no_weight_decay_list: Collection[str] = (),
              layer_decay: float | None = None, filter_bias_and_bn: bool = True) -> dict[str, Any]:
    """A recipe giving every parameter the lr scale and weight decay timm's optimizer factory gives.

    ``model`` (optional) adds its ``no_weight_decay()`` names, as ``create_optimizer_v2`` does,
    keeps only rules that match its parameters (so the recipe plans under ``strict``), and is
    planned with the recipe, so a model whose layers no card knows fails here. Pass the lr and
    optimizer name to ``tunespec.optimizer``; the recipe's ``optimizer`` section holds the weight
    decay.
    """
    wd = V.number(weight_decay, "from_timm: weight_decay", minimum=0.0, maximum=V.MAX_FACTOR)
    V.boolean(filter_bias_and_bn, "from_timm: filter_bias_and_bn")
    if isinstance(no_weight_decay_list, str):
        raise SpecError("from_timm: no_weight_decay_list is a list of names or patterns, not one string; "
                        "write ['pos_embed']")
    patterns = [V.string(p, f"from_timm: no_weight_decay_list[{i}]", max_length=1000)
                for i, p in enumerate(no_weight_decay_list)]
    names = None
    if model is not None:
        names = _model_names(model)
        own = getattr(model, "no_weight_decay", None)
        if callable(own):
            patterns += [p for p in sorted(own()) if p not in patterns]
    recipe: dict[str, Any] = {}
    if layer_decay is not None:
        recipe["layer_decay"] = {"rate": V.number(layer_decay, "from_timm: layer_decay", minimum=0.0,
                                                  min_exclusive=True, maximum=1.0)}
    rules: dict[str, float] = {}
    if wd:  # timm gives every group weight decay 0 when weight_decay is 0: nothing to exempt
        if filter_bias_and_bn:
            rules["@1d"] = 0.0
            if layer_decay is None:  # only param_groups_weight_decay exempts '.bias' by name
                rules[r".*\.bias"] = 0.0
        for regex in _no_decay_rules(patterns, names):
            rules.setdefault(regex, 0.0)
        if names is not None:
            rules = {k: v for k, v in rules.items() if _matches(k, names)}
    if rules:
        recipe["wd_mult"] = rules
    recipe["optimizer"] = {"weight_decay": wd}
    if model is not None:
        plan(model, recipe)  # a model no card orders, a rule matching nothing: fail here, not later
    return recipe


def _matches(rule: str, names: list[tuple[str, str, int | None]]) -> bool:
    if rule == "@1d":
        return any(ndim is not None and ndim <= 1 for _, _, ndim in names)
    return any(re.fullmatch(rule, c) for c, _, _ in names)
