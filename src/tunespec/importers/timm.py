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

# fnmatch's tokens, scanned as fnmatch scans them: a '[' starts a set only if a ']' closes it after
# an optional '!' and an optional first ']', taken without backtracking (a lookahead's capture
# is atomic), so '[!]' is the literal text '[!]' there and here.
_GLOB = re.compile(r"\*|\?|\[(?=(!?))\1(?=(\]?))\2[^\]]*\]")


def glob_regex(pattern: str, where: str = "pattern") -> str:
    """The regex that fullmatches what ``fnmatch.fnmatchcase(name, pattern)`` matches.

    A character set is translated by fnmatch itself (ranges, '!' negation, escaping, reversed
    ranges such as ``[z-a]`` that match nothing); a pattern that can match no name at all is a
    SpecError rather than a rule that silently does nothing.
    """
    out, at = [], 0
    for m in _GLOB.finditer(pattern):
        out.append(re.escape(pattern[at:m.start()]))
        token = m.group()
        if token == "*":
            out.append(".*")
        elif token == "?":
            out.append(".")
        else:
            translated = fnmatch.translate(token)  # '(?s:SET)\\Z'
            body = translated[len("(?s:"):-len(")\\Z")]
            if body == "(?!)":
                raise SpecError(f"{where}: {V.excerpt(pattern)} matches no name: {token} is an empty "
                                f"character range (fnmatch reads a reversed range as empty); write the "
                                f"range low to high, e.g. [a-z]")
            out.append(body)
        at = m.end()
    out.append(re.escape(pattern[at:]))
    return "".join(out)


def _model_names(model: Any) -> list[tuple[str, str, int | None]]:
    """(canonical, native, ndim) of each parameter, read through the model's backend."""
    listing = backend_for(model).listing(model)
    return [(t.canonical, t.native, t.ndim) for t in listing.params]


def _no_decay_rules(patterns: list[tuple[str, str]], names: list[tuple[str, str, int | None]] | None) -> list[str]:
    """Regexes for timm's no-weight-decay patterns; with a model, only those that match, and the
    exact canonical names where a model wrapper makes them differ from the native ones."""
    out: list[str] = []
    for where, pattern in patterns:
        regex = glob_regex(pattern, where)
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
              layer_decay: float | None = None, filter_bias_and_bn: bool = True,
              layer_decay_min_scale: float = 0.0, layer_decay_no_opt_scale: float | None = None) -> dict[str, Any]:
    """A recipe giving every parameter the lr scale and weight decay timm's optimizer factory gives.

    ``model`` (optional) adds its ``no_weight_decay()`` names, as ``create_optimizer_v2`` does,
    keeps only rules that match its parameters (so the recipe plans under ``strict``), and is
    planned with the recipe, so a model whose layers no card knows fails here. Pass the lr and
    optimizer name to ``tunespec.optimizer``; the recipe's ``optimizer`` section holds the weight
    decay. ``layer_decay_min_scale`` becomes ``layer_decay.min_scale``; ``layer_decay_no_opt_scale``
    becomes ``layer_decay.freeze_below`` with ``bn: train`` (timm only stops those layers' gradients,
    their BatchNorm statistics still move); given the model, either is left out where timm's would
    change nothing.

    Example::

        recipe = tunespec.from_timm(model, weight_decay=0.05, layer_decay=0.75)
        opt = tunespec.optimizer(model, recipe, "adamw", lr=1e-3)
    """
    wd = V.number(weight_decay, "from_timm: weight_decay", minimum=0.0, maximum=V.MAX_FACTOR)
    V.boolean(filter_bias_and_bn, "from_timm: filter_bias_and_bn")
    patterns = _patterns(no_weight_decay_list, "from_timm: no_weight_decay_list")
    names = None
    if model is not None:
        names = _model_names(model)
        own = getattr(model, "no_weight_decay", None)
        if callable(own):
            seen = {p for _, p in patterns}
            patterns += [(w, p) for w, p in _patterns(own(), "model.no_weight_decay()", sort=True)
                         if p not in seen]
    floor = V.number(layer_decay_min_scale, "from_timm: layer_decay_min_scale", minimum=0.0, maximum=1.0)
    no_opt = None if layer_decay_no_opt_scale is None else V.number(
        layer_decay_no_opt_scale, "from_timm: layer_decay_no_opt_scale", minimum=0.0, maximum=1.0) or None
    recipe: dict[str, Any] = {}
    if layer_decay is not None:
        recipe["layer_decay"] = {"rate": V.number(layer_decay, "from_timm: layer_decay", minimum=0.0,
                                                  min_exclusive=True, maximum=1.0)}
    elif floor or no_opt is not None:
        raise SpecError("from_timm: layer_decay_min_scale and layer_decay_no_opt_scale bound layer_decay's "
                        "scales; give layer_decay too")
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
        planned = plan(model, recipe)  # a model no card orders, a rule matching nothing: fail here
        if floor or no_opt is not None:  # keep only bounds that change a scale of this model
            smallest = min(d.lr_mult for d in planned.decisions)  # layer 0's: rate ** (L - 1)
            floor = floor if floor > smallest else 0.0
            no_opt = no_opt if no_opt is not None and max(floor, smallest) < no_opt else None
    _bounds(recipe, floor, no_opt)
    if model is not None and no_opt is not None and rules:
        frozen = _frozen_by_bounds(model, recipe)
        rules = {k: v for k, v in rules.items() if _matches(k, [n for n in names if n[0] not in frozen])}
        if rules:
            recipe["wd_mult"] = rules
        else:
            recipe.pop("wd_mult", None)
    if model is not None and (floor or no_opt is not None):
        plan(model, recipe)
    return recipe


def _patterns(value: Any, where: str, sort: bool = False) -> list[tuple[str, str]]:
    """(where, pattern) for each of timm's no-weight-decay names: a list, tuple or set of strings
    (a model's ``no_weight_decay()`` returns a set, so it is sorted for a stable recipe)."""
    if isinstance(value, str):
        raise SpecError(f"{where}: expected a list of names or fnmatch patterns, not one string; "
                        f"write [{value[:40]!r}]")
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise SpecError(f"{where}: expected a list of names or fnmatch patterns (e.g. ['pos_embed', "
                        f"'*.gamma']), got {V.excerpt(value)}")
    V.sequence(list(value), where)  # bounded length
    items = [V.string(p, f"{where}[{i}]", max_length=1000) for i, p in enumerate(value)]
    if sort:
        items = sorted(items)
    return [(f"{where}[{i}]", p) for i, p in enumerate(items)]


def _frozen_by_bounds(model: Any, recipe: dict[str, Any]) -> set[str]:
    """Canonical names freeze_below freezes: timm leaves them out, so no rule need reach them."""
    bare = {k: v for k, v in recipe.items() if k != "wd_mult"}
    return {d.name for d in plan(model, bare).frozen}


def _bounds(recipe: dict[str, Any], floor: float, no_opt: float | None) -> None:
    """timm's scale bounds in the recipe's layer_decay section."""
    if floor:
        recipe["layer_decay"]["min_scale"] = floor
    if no_opt is not None:
        recipe["layer_decay"]["freeze_below"] = no_opt
        recipe["bn"] = "train"  # timm sets requires_grad only; statistics keep moving in train()


def _matches(rule: str, names: list[tuple[str, str, int | None]]) -> bool:
    if rule == "@1d":
        return any(ndim is not None and ndim <= 1 for _, _, ndim in names)
    return any(re.fullmatch(rule, c) for c, _, _ in names)
