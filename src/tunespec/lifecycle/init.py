"""Re-initialising selected parameters (a new head) the same way everywhere, as the ``init``
recipe section (:mod:`tunespec.recipe.init`) says.

```yaml
init:
  seed: 0
  rules:
    - {match: 'fc\\.weight', method: normal, std: 0.01}
    - {match: 'fc\\.bias', method: zeros}
    - {layer: conv, match: '.*\\.weight', method: kaiming_normal, mode: fan_out, nonlinearity: relu}
```

Values are drawn here, in float64, from a generator seeded by the seed and the tensor's canonical
name, then written by the backend: torch and Gluon get identical values (not just the same
distribution), and a tensor's values do not depend on which other tensors a recipe selects.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tunespec.dispatch import backend_for
from tunespec.errors import SpecError
from tunespec.listing import TensorInfo
from tunespec.planning.cards import card_for
from tunespec.planning.layer_kinds import check_layouts, fans, layer_mask
from tunespec.planning.matching import Matcher
from tunespec.recipe.init import InitRule, InitSpec
from tunespec.recipe.recipe import Recipe, load_recipe
from tunespec.recipe.selectors import SELECTORS
from tunespec.recipe.validate import excerpt

@dataclass
class InitReport:
    """Which initialisation each re-initialised tensor got (canonical name -> description)."""

    initialised: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "\n".join([f"init: {len(self.initialised)} tensors"] +
                         [f"  {n}: {d}" for n, d in self.initialised.items()])


def _fans(t: TensorInfo, origin: str, layouts: Mapping[str, Sequence[str]] | None) -> tuple[int, int]:
    """Fan-in and fan-out from the weight layout the backend declares for the tensor's layer kind."""
    if t.shape is None or len(t.shape) < 2 or 0 in t.shape:
        raise SpecError(f"{origin}: {t.canonical!r} has shape {t.shape}; fan-based methods need a "
                        f"weight of 2 or more known dimensions (use normal, uniform or constant)")
    layout = None if layouts is None else layouts.get(t.layer_kind, layouts.get("default"))
    if layout is None:
        raise SpecError(f"{origin}: the backend declares no weight layout for {t.layer_kind} layers, so "
                        f"{t.canonical!r} has no fan-in; use normal, uniform or constant")
    return fans(t.shape, layout)


def _gain(nonlinearity: str, a: float) -> float:
    return {"relu": math.sqrt(2.0), "tanh": 5.0 / 3, "selu": 0.75,
            "leaky_relu": math.sqrt(2.0 / (1 + a * a))}.get(nonlinearity, 1.0)


def distribution(rule: InitRule, t: TensorInfo,
                 layouts: Mapping[str, Sequence[str]] | None = None) -> tuple[str, float, float]:
    """('normal', mean, std), ('uniform', low, high) or ('constant', value, 0) for one tensor
    (``layouts``: the backend's weight layouts per layer kind, for fan-based methods)."""
    m, a = rule.method, rule.args
    if m in ("zeros", "ones", "constant"):
        return "constant", {"zeros": 0.0, "ones": 1.0}.get(m, a.get("value")), 0.0
    if m == "normal":
        return "normal", float(a["mean"]), float(a["std"])
    if m == "uniform":
        return "uniform", float(a["low"]), float(a["high"])
    fan_in, fan_out = _fans(t, rule.origin, layouts)
    if m.startswith("xavier"):
        std = a["gain"] * math.sqrt(2.0 / (fan_in + fan_out))
    else:
        fan = fan_in if a["mode"] == "fan_in" else fan_out
        std = _gain(a["nonlinearity"], a["a"]) / math.sqrt(fan)
    if m.endswith("normal"):
        return "normal", 0.0, std
    bound = math.sqrt(3.0) * std  # a uniform distribution on [-b, b] has std b / sqrt(3)
    return "uniform", -bound, bound


def sample(kind: str, a: float, b: float, shape: tuple[int, ...], seed: int, name: str) -> Any:
    """float64 values from a generator seeded by (seed, name): the same in every framework."""
    import numpy as np  # only here: importing tunespec stays free of numpy

    stream = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng([seed, stream])
    if kind == "normal":
        return rng.normal(a, b, shape)
    if kind == "uniform":
        return rng.uniform(a, b, shape)
    return np.full(shape, a, dtype=np.float64)


def initialize(model: Any, init: "InitSpec | Recipe | Mapping[str, Any] | str | Path",
               seed: int | None = None, backend: str | None = None, strict: bool = True) -> InitReport:
    """Re-initialise the parameters ``init``'s rules select (the last matching rule wins).

    All or nothing: every rule, shape and distribution is checked and every value drawn before
    the first write, and a write that still fails puts back the tensors already written.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise SpecError(f"initialize: seed must be an integer >= 0, got {excerpt(seed)}")
    if not isinstance(strict, bool):
        raise SpecError(f"initialize: strict must be True or False, got {excerpt(strict)}")
    if backend is not None and not isinstance(backend, str):
        raise SpecError(f"initialize: backend must be a backend's name or None, got {excerpt(backend)}")
    groups: dict[str, str] = {}
    if not isinstance(init, InitSpec):
        recipe = load_recipe(init)
        groups = dict(recipe.spec.groups)
        if "init" not in recipe.sections:
            raise SpecError("initialize: the recipe has no init section")
        init = recipe.sections["init"]
    be = backend_for(model, backend)
    listing = be.listing(model)
    card = card_for((listing.model_type, *listing.base_types), listing.param_names())
    groups = {**(card.groups if card else {}), **groups}
    params = listing.params
    matcher = Matcher(listing)
    chosen: dict[int, InitRule] = {}
    for rule in init.rules:
        hits = set(matcher.select(rule.match, groups, rule.origin)) if rule.match else set(range(len(params)))
        if rule.layer in SELECTORS:
            mask = layer_mask(rule.layer, listing.layer_kinds, listing.layer_norms, rule.origin)
            rows, layers = listing.param_rows, listing.layers
            hits = {i for i in hits if mask[layers[rows[i]]]}
        elif rule.layer is not None:
            hits = {i for i in hits if params[i].layer_type == rule.layer}
        if not hits and strict:
            what = " ".join(filter(None, [rule.match and f"match {rule.match!r}",
                                          rule.layer and f"layer {rule.layer!r}"]))
            types = sorted({t.layer_type for t in params})
            raise SpecError(f"{rule.origin}: {what} selects no parameter of {listing.model_type} "
                            f"(layer types: {', '.join(types[:8])}); fix the rule or pass strict=False")
        for i in hits:
            chosen[i] = rule
    plans = []
    layouts = be.facts.weight_layouts or None
    if layouts is not None:
        check_layouts(layouts, be.name)
    for i in sorted(chosen):  # every distribution is checked before anything is written
        t = params[i]
        if t.shape is None or 0 in t.shape:
            raise SpecError(f"init: {t.canonical!r} has no shape yet; initialise the model first")
        plans.append((t, chosen[i], distribution(chosen[i], t, layouts)))
    report = InitReport()
    base = init.seed if seed is None else seed
    values = [(t, sample(kind, a, b, tuple(t.shape), base, t.canonical)) for t, _, (kind, a, b) in plans]
    _write_all(be, values)
    for t, rule, _ in plans:
        report.initialised[t.canonical] = rule.describe()
    return report


def _write_all(be: Any, values: list[tuple[TensorInfo, Any]]) -> None:
    """Write every tensor, or (if one write fails) none: the written ones get their old values back."""
    old = [(t, be.read(t.handle)) for t, _ in values]
    done = 0
    try:
        for t, value in values:
            be.write(t.handle, value)
            done += 1
    except BaseException:
        for t, value in old[:done]:
            be.write(t.handle, value)
        raise
