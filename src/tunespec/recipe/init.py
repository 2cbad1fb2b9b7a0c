"""The ``init`` recipe section: which parameters to re-initialise, and how
(:func:`tunespec.lifecycle.init.initialize` draws and writes the values).

```yaml
init:
  seed: 0
  rules:
    - {match: 'fc\\.weight', method: normal, std: 0.01}
    - {match: 'fc\\.bias', method: zeros}
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from tunespec.errors import SpecError
from tunespec.recipe import validate as V
from tunespec.recipe.selectors import SELECTORS
from tunespec.recipe.spec import check_keys, check_pattern

METHODS: dict[str, dict[str, Any]] = {  # method -> its arguments and their defaults
    "zeros": {}, "ones": {}, "constant": {"value": None},
    "normal": {"mean": 0.0, "std": 1.0}, "uniform": {"low": 0.0, "high": 1.0},
    "xavier_uniform": {"gain": 1.0}, "xavier_normal": {"gain": 1.0},
    "kaiming_uniform": {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
    "kaiming_normal": {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
}
NONLINEARITIES = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu")
# A rule's ``layer`` is a layer kind (tunespec.recipe.selectors.SELECTORS: conv, linear, norm, ...),
# the same vocabulary spec rules take; any other value is the owning layer's class name.
RULE_KEYS = ("match", "layer", "method")


@dataclass(frozen=True)
class InitRule:
    match: str | None
    layer: str | None
    method: str
    args: Mapping[str, Any]
    origin: str

    @classmethod
    def from_dict(cls, data: Any, origin: str) -> "InitRule":
        data = V.mapping(data, origin, "{match: 'fc\\..*', method: zeros}")
        method = V.choice(data.get("method"), f"{origin}.method", tuple(METHODS))
        allowed = RULE_KEYS + tuple(METHODS[method])
        for key in data:
            if key not in allowed:
                raise SpecError(f"{origin}: {method} takes no {V.excerpt(key)}{V.suggestion(key, allowed)}; "
                                f"its keys are {', '.join(allowed)}")
        if data.get("match") is None and data.get("layer") is None:
            raise SpecError(f"{origin}: give match (a regex or '@group') and/or layer "
                            f"({', '.join(SELECTORS)} or a layer class name)")
        match = None if data.get("match") is None else check_pattern(data["match"], f"{origin}.match")
        layer = data.get("layer")
        if layer is not None:
            V.string(layer, f"{origin}.layer", max_length=200)
        args = {k: data.get(k, default) for k, default in METHODS[method].items()}
        for key, value in args.items():
            if key == "mode":
                V.choice(value, f"{origin}.mode", ("fan_in", "fan_out"))
            elif key == "nonlinearity":
                V.choice(value, f"{origin}.nonlinearity", NONLINEARITIES)
            else:  # values, means, bounds and gains are drawn in float64: keep them far from overflow
                low = 0.0 if key in ("std", "gain") else -1e30
                args[key] = V.number(value, f"{origin}.{key}", minimum=low, maximum=1e30)
        if method == "uniform" and args["low"] > args["high"]:
            raise SpecError(f"{origin}: uniform with low {args['low']:g} > high {args['high']:g} is not "
                            f"a distribution; swap them")
        return cls(match, layer, method, args, origin)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.method}({args})"


@dataclass(frozen=True)
class InitSpec:
    rules: tuple[InitRule, ...]
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Any, recipe: Mapping[str, Any] | None = None) -> "InitSpec":
        if isinstance(data, (list, tuple)):
            data = {"rules": data}
        if not isinstance(data, Mapping):
            raise V.fail("init", "{seed: 0, rules: [...]} or a list of rules", data)
        check_keys(data, "init", ("seed", "rules"))
        V.tree(data, "init")
        seed = V.number(data.get("seed", 0), "init.seed", minimum=0, maximum=2**64 - 1, integer=True)
        rules = V.sequence(data.get("rules"), "init.rules", what="a list of rules", max_length=10_000,
                           nonempty=True)
        return cls(tuple(InitRule.from_dict(r, f"init.rules[{i}]") for i, r in enumerate(rules)), seed)
