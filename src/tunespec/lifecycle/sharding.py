"""Plan-aware sharding: which module subtrees become sharded units, decided here.

A sharded data-parallel wrapper (PyTorch FSDP2's ``fully_shard``) gathers, reduces and frees the
parameters of one *unit* (a module subtree) together. A unit that mixes frozen and trainable
parameters is what fine-tuning under FSDP gets wrong: FSDP1 refuses it outright, and unfreezing
part of a unit mid-run changes what the unit communicates. So the units come from the plan:

* the **largest subtrees whose parameters are all frozen or all trainable** become units (a
  frozen backbone stage is one unit, the head another), in model order;
* with a recipe that has ``stages``, "uniform" means uniform in **every** stage, so a later
  stage that unfreezes ``layer4`` turns whole units trainable and never splits one;
* a subtree that holds only part of a tied (shared) parameter cannot be a unit: the unit holding
  it is the smallest subtree that contains every place it is used;
* a module whose subtree is mixed becomes a unit for what is left once its uniform parts are
  units (its own parameters) when that is uniform; units come children first, as the wrapper
  needs them, siblings in model order;
* the root is the last unit and holds the rest. If the rest mixes frozen and trainable
  parameters, no choice of units is uniform: strict specs refuse it (naming the modules),
  ``strict: false`` warns and shards anyway.

The backend only applies its wrapper to the module paths it is given (children before the root).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

from tunespec.dispatch import backend_for, check_backend_name
from tunespec.errors import SpecError, TuneSpecWarning
from tunespec.listing import gc_paused
from tunespec.planning.plan import Plan, remember_applied, model_lock
from tunespec.recipe.recipe import Recipe, load_recipe
from tunespec.recipe.spec import Spec
from tunespec.recipe import validate
from tunespec.recipe.validate import excerpt

ROOT = ""


@dataclass(frozen=True)
class Units:
    """The sharded units (module paths, root ``''`` last) and, where the root unit cannot be
    uniform, the modules whose own parameters mix frozen and trainable ones."""

    paths: tuple[str, ...]
    mixed: tuple[str, ...] = ()

    @property
    def uniform(self) -> bool:
        return not self.mixed


def _parts(path: str) -> tuple[str, ...]:
    return tuple(path.split(".")) if path else ()


def _module_parts(name: str) -> tuple[str, ...]:
    return _parts(name)[:-1]


def _common(paths: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    paths = list(paths)
    first = paths[0]
    n = len(first)
    for p in paths[1:]:
        n = min(n, len(p))
        for i in range(n):
            if p[i] != first[i]:
                n = i
                break
    return first[:n]


def shard_units(params: Sequence[tuple[str, Sequence[str], Hashable]]) -> Units:
    """The units for parameters given as ``(canonical name, aliases, key)``.

    ``key`` is what must be uniform within a unit: the trainability (or, across stages, the
    tuple of trainabilities). A pure function of names and keys, so any backend shares it.
    """
    keys: dict[tuple[str, ...], set[Hashable]] = {}  # module -> keys of the params in its subtree
    split: set[tuple[str, ...]] = set()  # modules holding only part of a tied parameter
    owners: list[tuple[tuple[str, ...], Hashable]] = []
    seen: set[tuple[str, ...]] = set()  # modules met so far (children listed in model order)
    children: dict[tuple[str, ...], list[tuple[str, ...]]] = {}

    def note(module: tuple[str, ...]) -> None:
        for depth in range(len(module) + 1):
            m = module[:depth]
            if m not in seen:
                seen.add(m)
                if depth:
                    children.setdefault(module[:depth - 1], []).append(m)

    for name, aliases, key in params:
        places = [_module_parts(name)] + [_module_parts(a) for a in aliases]
        owner = _common(places)
        for place in places:
            note(place)
            for depth in range(len(owner) + 1, len(place) + 1):
                split.add(place[:depth])
        for depth in range(len(owner) + 1):
            keys.setdefault(owner[:depth], set()).add(key)
        owners.append((owner, key))

    own: dict[tuple[str, ...], set[Hashable]] = {}  # module -> keys of the params it owns directly
    for owner, key in owners:
        own.setdefault(owner, set()).add(key)
    units: list[tuple[str, ...]] = []

    def visit(module: tuple[str, ...]) -> set[Hashable]:
        """Make units in ``module``'s subtree (children first); the keys of what is left over."""
        if module not in keys:
            return set()  # no parameter is owned in this subtree (parts of tied ones may be)
        if module and module not in split and len(keys[module]) == 1:
            units.append(module)
            return set()
        left = set(own.get(module, ()))
        for child in children.get(module, ()):
            left |= visit(child)
        if module and module not in split and len(left) == 1:
            units.append(module)  # a mixed subtree whose leftover (its own parameters) is uniform
            return set()
        return left

    rest = visit(())
    mixed: tuple[str, ...] = ()
    if len(rest) > 1:
        def covered(owner: tuple[str, ...]) -> bool:
            return any(owner[:len(u)] == u for u in units)

        by_module: dict[tuple[str, ...], set[Hashable]] = {}
        for owner, key in owners:
            if not covered(owner):
                by_module.setdefault(owner, set()).add(key)
        named = [m for m, ks in by_module.items() if len(ks) > 1] or list(by_module)
        mixed = tuple(".".join(m) or "(the model itself)" for m in named)
    return Units(tuple(".".join(u) for u in units) + (ROOT,), mixed)


def _stage_specs(recipe: Recipe) -> list[Spec]:
    section = recipe.sections.get("stages")
    return [recipe.spec] + [stage.spec for stage in (section.stages if section else ())]


def plan_units(model: Any, specs: Sequence[Spec], backend: Any) -> tuple[Units, Plan]:
    """The units for ``model`` under every spec in ``specs`` (stage 0 first); nothing changes."""
    with gc_paused():
        listing = backend.listing(model)
        plans = [Plan.make(model, s, backend, listing) for s in specs]
    ls = listing
    columns = [p._decided.trainable for p in plans]
    params = [(ls.names[row], ls.aliases.get(row, ()), tuple(bool(c[i]) for c in columns))
              for i, row in enumerate(ls.param_rows)]
    return shard_units(params), plans[0]


def _sharding_backend(be: Any) -> Any:
    if not callable(getattr(be, "shard", None)):
        raise SpecError(f"shard: the {be.name} backend cannot shard a model (it has no sharded data "
                        f"parallelism); train this model unsharded, or with the framework's own data "
                        f"parallelism")
    return be


def shard(model: "Plan | Any", spec: Any = None, *, mesh: Any = None,
          reshard_after_forward: bool | None = None, backend: str | None = None, strict: bool | None = None,
          **options: Any) -> Plan:
    """Shard ``model`` so that every unit has uniform trainability, then apply the spec.

    ``model`` is a model (with ``spec``: a spec, recipe or path) or a :class:`Plan` (its model and
    spec). With a recipe that has ``stages``, units are uniform in every stage. ``mesh``,
    ``reshard_after_forward`` (None: the wrapper's own default) and ``options`` go to the
    backend's sharding call (torch: ``fully_shard``, every unit alike). Returns the plan of the
    sharded model, applied: build its optimizer with ``plan.optimizer(...)`` (or start a
    :class:`tunespec.Schedule` on the model), which then holds the sharded parameters. Everything
    is checked before the model is sharded; sharding itself cannot be undone.
    """
    if isinstance(model, Plan):
        if spec is not None:
            raise SpecError("shard: given a plan, leave spec out (the plan's spec is used)")
        recipe = Recipe(model.spec)
        be, model = model.backend, model.model
    else:
        if spec is None:
            raise SpecError("shard: give the spec (or recipe) to shard by, or pass a plan")
        check_backend_name(backend, "shard: backend")
        recipe = load_recipe(spec)
        be = backend_for(model, backend)
    if strict is not None and not isinstance(strict, bool):
        raise SpecError(f"shard: strict must be True, False or None (the spec's own), got {excerpt(strict)}")
    be = _sharding_backend(be)
    if reshard_after_forward is not None:
        validate.boolean(reshard_after_forward, "shard: reshard_after_forward")
    specs = [s.with_strict(strict) for s in _stage_specs(recipe)]
    with model_lock(model):
        be.check_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, **options)
        units, _ = plan_units(model, specs, be)
        if not units.uniform:
            message = (f"shard: no sharded units can keep frozen and trainable parameters apart: "
                       f"{', '.join(units.mixed[:4])}{' ...' if len(units.mixed) > 4 else ''} hold(s) "
                       f"both directly, so the root unit mixes them. Freeze or train each of these "
                       f"modules' own parameters together")
            if specs[0].strict:
                raise SpecError(message + ", or set strict: false to shard with a mixed root unit")
            warnings.warn(message, TuneSpecWarning, stacklevel=2)
        be.shard(model, units.paths, mesh=mesh, reshard_after_forward=reshard_after_forward, **options)
        # The wrapper replaced the parameter objects: plan (and apply) on the sharded ones.
        with gc_paused():
            plan = Plan.make(model, specs[0], be)
        plan.apply()
        remember_applied(model, plan)
        return plan
