"""tunespec: one declarative fine-tuning spec for PyTorch and MXNet Gluon.

``import tunespec`` imports nothing else: each public name below is loaded the first time it is
used (a module ``__getattr__``), so the first ``tunespec.plan(...)`` pays for planning, and a
backend is loaded only when a model of its framework is planned.

```python
import tunespec
assert "plan" in dir(tunespec) and "recipe" not in dir(tunespec)
spec = tunespec.Spec.from_dict({"freeze": [".*"], "train": [r"fc\\..*"]})
```
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it. The folders are the layers: recipe/ (reading and
# validation), planning/ (the Plan), lifecycle/ (applying, stages, checkpoints, weights).
_WHERE = {  # no typing import: the bare import stays a few milliseconds
    **dict.fromkeys(["MissingFrameworkError", "SpecError", "StalePlanError", "TuneSpecWarning"], "errors"),
    **dict.fromkeys(["Rule", "Spec"], "recipe.spec"),
    **dict.fromkeys(["Recipe", "load_recipe", "load_spec"], "recipe.recipe"),
    "OptimizerSpec": "recipe.optimizer",
    "LRSchedule": "recipe.schedule",
    **dict.fromkeys(["Stage", "StagesSpec"], "recipe.stages"),
    "InitSpec": "recipe.init",
    **dict.fromkeys(["FrameworkFacts"], "backend_api"),
    **dict.fromkeys(["register_backend", "unregister_backend"], "registry"),
    "plan": "planning.make",
    **dict.fromkeys(["Plan", "VerifyReport"], "planning.plan"),
    "NameMap": "planning.naming",
    **dict.fromkeys(["Card", "register_card"], "planning.cards"),
    **dict.fromkeys(["apply", "optimizer", "scheduler"], "lifecycle.apply"),
    **dict.fromkeys(["Schedule", "StageRunner"], "lifecycle.stages"),
    **dict.fromkeys(["resume", "save_checkpoint"], "lifecycle.checkpoint"),
    **dict.fromkeys(["LoadReport", "load"], "lifecycle.loading"),
    **dict.fromkeys(["PortReport", "port"], "lifecycle.port"),
    **dict.fromkeys(["InitReport", "initialize"], "lifecycle.init"),
    **dict.fromkeys(["FrozenPrefix", "cache_frozen"], "lifecycle.cache"),
    "shard": "lifecycle.sharding",
    **dict.fromkeys(["from_mmengine", "from_timm"], "importers"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> object:
    """Load a public name on first use and keep it (later look-ups are plain attributes)."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'tunespec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tunespec.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
