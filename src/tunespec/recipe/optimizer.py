"""The ``optimizer`` recipe section: name, lr, weight decay, semantics and options.

Read without asking any backend: the options of the update rules themselves (sgd, adam, adamw)
are checked here, a semantics name and the options a framework adds when an optimizer is made
(:mod:`tunespec.planning.optimizers`).

```python
from tunespec.recipe.optimizer import OptimizerSpec
opt = OptimizerSpec.from_dict({"name": "sgd", "lr": 0.01, "momentum": 0.9})
assert opt.options == {"momentum": 0.9} and opt.semantics is None
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from tunespec.recipe import validate as V


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float | None = None
    weight_decay: float = 0.0
    # None: the semantics every backend shares, decided when the optimizer is made (a recipe is
    # read without asking the backends; tunespec.planning.optimizers checks the name then)
    semantics: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> "OptimizerSpec":
        """Validate a whole optimizer section: name, lr, weight_decay, semantics and options.

        The options of the optimizers in :func:`tunespec.recipe.validate.optimizer_tables` are checked
        here; another name is left to the backend, which knows its framework's optimizers.
        """
        data = dict(V.mapping(data, "optimizer", "{name: sgd, lr: 0.01}"))
        V.tree(data, "optimizer")
        name = V.string(data.pop("name", "sgd"), "optimizer.name", max_length=100)
        lr = data.pop("lr", None)
        if lr is not None:
            lr = V.number(lr, "optimizer.lr", minimum=0.0, min_exclusive=True, maximum=V.MAX_FACTOR)
        wd = V.number(data.pop("weight_decay", 0.0), "optimizer.weight_decay", minimum=0.0,
                      maximum=V.MAX_FACTOR)
        semantics = data.pop("semantics", None)
        if semantics is not None:
            semantics = V.string(semantics, "optimizer.semantics", max_length=100)
        options = V.check_optimizer(name, data, "optimizer")
        return cls(name, lr, wd, semantics, options)
