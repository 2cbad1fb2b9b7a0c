"""Gluon Trainers over the parameters the core planned, lr schedules, stage regrouping, rollback."""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon

from tunespec.backend_api import LRState, LRTable, OptimizerExport, excerpt
from tunespec.errors import SpecError

from . import fused_rules, update_rules  # noqa: F401  (register tunespec's optimizers with MXNet)
from .update_rules import GLUON_OPTIMIZERS, ScheduleAdapter

_TRAINER_OPTIONS = ("kvstore", "compression_params", "update_on_kvstore")


def _prepare_trainer(trainer: gluon.Trainer) -> None:
    """Make a Trainer safe on a parameter server.

    With ``update_on_kvstore=False`` on ``dist_sync``, Trainer.step puts the parameters on the
    kvstore and pushes the first gradients in one go; with PyPI's MXNet 1.9.1 the first gradient
    sum that came back was then wrong in 2 of 5 two-worker runs in a row here (the same wrong
    value each time; the workers then disagree or agree on wrong weights). Putting the parameters
    on the kvstore first, waiting for the engine and passing a barrier made 10 of 10 runs right.
    Every worker builds its Trainer (and changes stage) at the same point of the script, so the
    barrier is met by all. Parameters whose shapes are not known yet keep MXNet's lazy
    initialisation.
    """
    _index_multipliers(trainer)
    kvstore = trainer._kvstore_params["kvstore"]
    kind = kvstore if isinstance(kvstore, str) else getattr(kvstore, "type", "")
    if "dist" not in kind or trainer._kvstore_params["update_on_kvstore"] is not False:
        return
    if any(p._deferred_init or p._data is None for p in trainer._params):
        return
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    mx.nd.waitall()
    trainer._kvstore._barrier()


def _index_multipliers(trainer: gluon.Trainer) -> None:
    """Copy each Parameter's lr_mult/wd_mult into the optimizer's per-index tables.

    Locally MXNet reads the multipliers from ``optimizer.param_dict``; but a Trainer that updates
    on a dist kvstore pickles the optimizer to the servers without ``param_dict`` (MXNet drops it),
    and the servers would then use 1.0 for every parameter. The per-index tables travel along.
    """
    optimizer = trainer._optimizer
    optimizer.lr_mult = {i: p.lr_mult for i, p in enumerate(trainer._params)}
    optimizer.wd_mult = {i: p.wd_mult for i, p in enumerate(trainer._params)}


def _check_initialized(params: Sequence[gluon.Parameter]) -> None:
    """A Trainer over parameters nobody initialised fails deep inside MXNet with a RuntimeError;
    say what to call instead (deferred initialisation, shapes still unknown, is fine)."""
    bare = [p.name for p in params if p._data is None and not p._deferred_init]
    if bare:
        raise SpecError(f"optimizer: {len(bare)} trainable Gluon parameter(s) are not initialised "
                        f"({', '.join(bare[:3])}{' ...' if len(bare) > 3 else ''}): call "
                        f"net.initialize() (or net.load_parameters(...)) before building the Trainer")


class MXNetOptimizers:
    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, gluon.Trainer)

    def optimizer_handles(self, trainer: gluon.Trainer) -> list[Any]:
        return list(trainer._params)

    def build_optimizer(self, groups: Sequence[dict], name: Any, lr: float | None,
                        weight_decay: float, semantics: str = "portable", **options: Any) -> gluon.Trainer:
        params = [p for g in groups for p in g["params"]]
        _check_initialized(params)
        trainer_options = {k: options.pop(k) for k in _TRAINER_OPTIONS if k in options}
        opt = self._optimizer_name(name, semantics)
        optimizer_params = {"wd": weight_decay, **options}
        if lr is not None:
            optimizer_params["learning_rate"] = lr
        trainer = gluon.Trainer(params, opt, optimizer_params, **trainer_options)
        _prepare_trainer(trainer)  # for parameter servers (see there)
        return trainer

    def optimizer_options(self, name: Any, semantics: str = "portable") -> frozenset[str] | None:
        """The options a Trainer with this optimizer takes: the registered optimizer's ``__init__``
        keywords up its class chain (MXNet passes **kwargs on to the base Optimizer), the Trainer's
        own and tunespec's ``weight_decay``; None if some class takes arbitrary keywords."""
        opt = self._optimizer_name(name, semantics)
        names = set(_TRAINER_OPTIONS) | {"weight_decay"}
        # The Trainer sets the first three itself; tunespec sets the others from lr, weight_decay
        # and tunespec.scheduler, so passing them as options would bypass the plan's multipliers.
        internal = {"param_idx2name", "param_dict", "sym", "learning_rate", "wd", "lr_scheduler",
                    "begin_num_update"}
        for cls in mx.optimizer.Optimizer.opt_registry[opt].__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters
            names.update(k for k, p in params.items()
                         if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                return frozenset(names - internal)
            if cls is mx.optimizer.Optimizer:
                break
        return None

    @staticmethod
    def _optimizer_name(name: Any, semantics: str) -> str:
        if not isinstance(name, str):
            raise SpecError(f"Gluon optimizers are named by string ('sgd', 'adam', 'adamw', ...), "
                            f"got {type(name).__name__}")
        opt = GLUON_OPTIMIZERS.get(semantics, {}).get(name.lower(), name.lower())
        if opt not in mx.optimizer.Optimizer.opt_registry:
            raise SpecError(f"unknown MXNet optimizer {name[:40]!r}; registered: "
                            f"{', '.join(sorted(mx.optimizer.Optimizer.opt_registry))}, adamw")
        return opt

    def optimizer_snapshot(self, trainer: gluon.Trainer, lr_scheduler: Any) -> Any:
        """What install_lrs changes on a Trainer (local kvstores: a dist
        kvstore's server state cannot be taken back, which is why install_lrs refuses to grow one)."""
        o = trainer._optimizer
        if lr_scheduler is not None and lr_scheduler is not o.lr_scheduler:
            raise SpecError(f"lr_scheduler: a Gluon Trainer steps its own lr scheduler, so another one "
                            f"({type(lr_scheduler).__name__}) would have no effect; leave lr_scheduler out")
        return {"params": list(trainer._params), "param2idx": dict(trainer._param2idx),
                "param_dict": dict(o.param_dict), "to_init": list(trainer._params_to_init),
                "contexts": trainer._contexts, "lr_mult": dict(o.lr_mult), "wd_mult": dict(o.wd_mult),
                "lr_scheduler": o.lr_scheduler, "states": [dict(u.states) for u in trainer._updaters],
                "multipliers": dict(getattr(o.lr_scheduler, "multipliers", {}))}

    def optimizer_rollback(self, trainer: gluon.Trainer, lr_scheduler: Any, saved: Any) -> None:
        o = trainer._optimizer
        trainer._params[:] = saved["params"]
        trainer._param2idx.clear()
        trainer._param2idx.update(saved["param2idx"])
        o.param_dict.clear()
        o.param_dict.update(saved["param_dict"])
        trainer._params_to_init[:] = saved["to_init"]
        trainer._contexts = saved["contexts"]
        o.lr_mult, o.wd_mult, o.lr_scheduler = saved["lr_mult"], saved["wd_mult"], saved["lr_scheduler"]
        if isinstance(o.lr_scheduler, ScheduleAdapter):
            o.lr_scheduler.multipliers.clear()
            o.lr_scheduler.multipliers.update(saved["multipliers"])
        for updater, states in zip(trainer._updaters, saved["states"], strict=True):
            updater.states.clear()
            updater.states.update(states)

    def lr_state(self, trainer: gluon.Trainer, lr_scheduler: Any = None) -> LRState:
        """A Trainer keeps no groups (multipliers live on the Parameters) and steps its own lr
        scheduler with every update, so its count is the optimizer's."""
        o = trainer._optimizer
        base = o.lr_scheduler.base_lr if o.lr_scheduler is not None else o.lr
        return LRState(base, o.wd, o.num_update, None, ())

    def install_lrs(self, trainer: gluon.Trainer, table: LRTable, lr_scheduler: Any = None) -> Any:
        """Parameters new to the Trainer are appended under new indices: the others keep their
        index, so their updater (and kvstore) state stays theirs. Parameters that left stay listed;
        Gluon skips grad_req='null'. The constant multipliers live on the Parameters (``lr_mult``,
        set by the core through ``set_param``): here they are copied into the optimizer's
        per-index tables, and per-step ones (``mult_at``) go to tunespec's lr scheduler."""
        optimizer = trainer._optimizer
        if lr_scheduler is None and table.factor is not None:
            base = optimizer.lr_scheduler.base_lr if optimizer.lr_scheduler else optimizer.lr
            optimizer.lr_scheduler = ScheduleAdapter(table.factor, base)
        if not table.groups:
            return optimizer.lr_scheduler if table.factor is not None else lr_scheduler
        new = [p for p in table.added if p.name not in trainer._param2idx]
        if new and trainer._kv_initialized and trainer._update_on_kvstore:
            raise SpecError("a stage adds parameters to a Trainer that updates on the kvstore "
                            "(update_on_kvstore=True, the default for dist kvstores and several devices); "
                            "MXNet cannot add them without resetting the kvstore's optimizer state. Build "
                            "the Trainer with update_on_kvstore=False (tunespec.optimizer(..., "
                            "update_on_kvstore=False)): the kvstore then only sums gradients")
        for p in new:
            index = len(trainer._params)
            trainer._param2idx[p.name] = index
            trainer._params.append(p)
            optimizer.param_dict[index] = p
            trainer._params_to_init.append(p)  # goes on the kvstore in _prepare_trainer or Trainer.step
        trainer._contexts = trainer._check_contexts()
        adapter = optimizer.lr_scheduler
        stepped = {p: g.mult_at for g in table.groups if g.mult_at is not None for p in g.params}
        if stepped and not isinstance(adapter, ScheduleAdapter):
            raise SpecError("a per-step ramp grows through tunespec's lr scheduler, and this Trainer has "
                            "another; build it with tunespec (StageRunner.start)")
        if isinstance(adapter, ScheduleAdapter):
            for p in table.removed:
                adapter.multipliers.pop(p, None)
            adapter.multipliers.update(stepped)
        _prepare_trainer(trainer)
        return lr_scheduler

    # --- export / import: run checkpoints and rollbacks -------------------------------------
    def export_optimizer(self, trainer: gluon.Trainer, lr_scheduler: Any, names: Mapping[Any, str],
                         host: bool = True) -> OptimizerExport:
        """Per parameter (Trainer index order): its multipliers, updater state and update counts;
        the optimizer's counters and its lr scheduler's scalars as the optimizer-level state.
        ``host=False`` also keeps, by reference, what only a rollback needs (every updater's
        tables, the optimizer's attributes)."""
        if host and trainer._update_on_kvstore:
            raise SpecError("save_checkpoint: this Trainer keeps its optimizer state on the kvstore "
                            "(update_on_kvstore=True); build it with update_on_kvstore=False to checkpoint it")
        if host:
            mx.nd.waitall()  # see MXNetExecute.tensor_bytes
        convert = _to_host if host else _as_is
        o = trainer._optimizer
        states = trainer._updaters[0].states
        hyper: dict[str, Any] = {}
        state: dict[str, Any] = {}
        for i, p in enumerate(trainer._params):
            name = names[p]
            hyper[name] = {"lr_mult": o.lr_mult.get(i, p.lr_mult), "wd_mult": o.wd_mult.get(i, p.wd_mult)}
            own: dict[str, Any] = {}
            if i in states:
                own["value"] = convert(states[i])
            counts = [[k, v[i]] for k, v in o._all_index_update_counts.items() if i in v]
            if counts:
                own["counts"] = counts
            if own:
                state[name] = own
        current = next((k for k, v in o._all_index_update_counts.items() if v is o._index_update_count), None)
        common: dict[str, Any] = {"current": current, "num_update": o.num_update,
                                  "begin_num_update": o.begin_num_update, "rescale_grad": o.rescale_grad,
                                  "lr_scheduler": _scheduler_scalars(o.lr_scheduler)}
        if not host:
            common["rollback"] = {
                "to_init": list(trainer._params_to_init), "contexts": trainer._contexts,
                "updaters": [(u.states, u.states_synced) for u in trainer._updaters],
                "optimizer": {k: v for k, v in vars(o).items() if k != "param_dict"},
                "counts": {k: dict(v) for k, v in o._all_index_update_counts.items()},
                "lr_mult": dict(o.lr_mult), "wd_mult": dict(o.wd_mult)}
        state[""] = common
        settings = _optimizer_settings(o)
        rules = next((name for name, table in GLUON_OPTIMIZERS.items() if type(o).__name__.lower() in table.values()),
                     None)
        if rules is not None:
            settings["semantics"] = rules  # whose update rules these are (named in a refusal)
        return OptimizerExport(type(o).__name__, settings, hyper, state)

    def import_optimizer(self, trainer: gluon.Trainer, lr_scheduler: Any, exported: OptimizerExport,
                         handles: Mapping[str, Any]) -> None:
        """The Trainer's parameter table in the export's order, the updater state on every
        context, the update counts and counters; a malformed state is a SpecError."""
        o = trainer._optimizer
        params = [handles[n] for n in exported.hyper]
        common = exported.state.get("", {})
        rollback = common.get("rollback") if isinstance(common, Mapping) else None
        if rollback is None:
            try:
                values, counts, counters = _checked_state(exported, common, len(params))
            except (ValueError, TypeError, KeyError) as exc:
                raise SpecError(f"resume: the checkpoint is not a complete tunespec run checkpoint "
                                f"({excerpt(str(exc))})") from None
        if [id(p) for p in trainer._params] != [id(p) for p in params]:
            trainer._params[:] = params
            trainer._param2idx.clear()
            trainer._param2idx.update({p.name: i for i, p in enumerate(params)})
            o.param_dict.clear()
            o.param_dict.update(dict(enumerate(params)))
        if rollback is not None:
            trainer._params_to_init[:] = rollback["to_init"]
            trainer._contexts = rollback["contexts"]
            for u, (states, synced) in zip(trainer._updaters, rollback["updaters"], strict=True):
                u.states, u.states_synced = states, synced
            vars(o).update(rollback["optimizer"])
            for k, v in rollback["counts"].items():
                o._all_index_update_counts.setdefault(k, {}).clear()
                o._all_index_update_counts[k].update(v)
            o.lr_mult, o.wd_mult = rollback["lr_mult"], rollback["wd_mult"]
            return
        for updater, ctx in zip(trainer._updaters, trainer._contexts, strict=True):
            updater.states = {i: _to_context(v, ctx) for i, v in values.items()}
            updater.states_synced = dict.fromkeys(updater.states, False)  # as Updater.set_states
        o._all_index_update_counts = counts
        current = common["current"]
        o._index_update_count = o._all_index_update_counts.setdefault(current if current is not None else 0, {})
        o.num_update, o.begin_num_update, o.rescale_grad = counters
        if o.lr_scheduler is not None and common["lr_scheduler"]:
            for key, value in common["lr_scheduler"].items():
                if key in vars(o.lr_scheduler) and _is_scalar(value):
                    setattr(o.lr_scheduler, key, value)


# Optimizer attributes that change while training: restored from the checkpoint, never compared.
_OPTIMIZER_STATE = ("num_update", "begin_num_update", "rescale_grad")
# Settings that change speed, never results: not compared on resume (aggregate_num: how many
# parameters one multi-tensor update takes, from MXNET_OPTIMIZER_AGGREGATION_SIZE).
_SPEED_ONLY = ("aggregate_num",)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _optimizer_settings(o: mx.optimizer.Optimizer) -> dict[str, Any]:
    """The optimizer's scalar settings (lr, wd, momentum, betas, clipping...), compared on resume."""
    return {k: v for k, v in sorted(vars(o).items())
            if not k.startswith("_") and k not in _OPTIMIZER_STATE + _SPEED_ONLY and _is_scalar(v)}


def _scheduler_scalars(sched: Any) -> dict[str, Any] | None:
    if sched is None:
        return None
    return {k: v for k, v in vars(sched).items() if _is_scalar(v) and not (isinstance(v, float) and v != v)}


def _as_is(value: Any) -> Any:
    return value


def _to_host(value: Any) -> Any:
    """Updater state (NDArrays, tuples of them, None, the fused SGD's [buffer, lr scale]) as numpy."""
    if isinstance(value, mx.nd.NDArray):
        return value.asnumpy()
    if isinstance(value, tuple):
        return tuple(_to_host(v) for v in value)
    if isinstance(value, list):
        return [_to_host(v) for v in value]
    return value


def _state_value(value: Any) -> None:
    """Arrays, None, tuples of them, or the fused SGD's ``[buffer, lr scale]`` (fused_rules)."""
    if value is None or isinstance(value, np.ndarray):
        return
    if isinstance(value, tuple):
        for v in value:
            _state_value(v)
        return
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], np.ndarray)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool)
            and math.isfinite(value[1]) and value[1] > 0):
        return
    raise ValueError(f"updater state entry {excerpt(value)} is not arrays")


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is not an integer")
    return value


def _checked_state(exported: OptimizerExport, common: Any, n: int) -> tuple[dict, dict, tuple]:
    """(updater states by index, update counts, counters) of a saved export, every field checked."""
    if not isinstance(common, Mapping):
        raise ValueError("optimizer-level state is not a mapping")
    values: dict[int, Any] = {}
    counts: dict[int, dict[int, int]] = {}
    index = {name: i for i, name in enumerate(exported.hyper)}
    for name, own in exported.state.items():
        if name == "":
            continue
        if name not in index or not isinstance(own, Mapping) or not set(own) <= {"value", "counts"}:
            raise ValueError(f"state of {excerpt(name)} malformed")
        i = index[name]
        if "value" in own:
            _state_value(own["value"])
            values[i] = own["value"]
        for pair in own.get("counts", ()):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError("update counts malformed")
            counts.setdefault(_integer(pair[0], "a context"), {})[i] = _integer(pair[1], "an update count")
    if common["current"] is not None:
        _integer(common["current"], "the current update-count context")
    rescale = common["rescale_grad"]
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not math.isfinite(rescale):
        raise ValueError("rescale_grad is not a number")
    if common["lr_scheduler"] is not None and not isinstance(common["lr_scheduler"], Mapping):
        raise ValueError("lr scheduler state malformed")
    counters = (_integer(common["num_update"], "num_update"),
                _integer(common["begin_num_update"], "begin_num_update"), float(rescale))
    return values, counts, counters


def _to_context(value: Any, ctx: Any) -> Any:
    """A saved updater state (arrays, tuples of them, None) as NDArrays on ``ctx``."""
    if isinstance(value, np.ndarray):
        return mx.nd.array(value, ctx=ctx, dtype=value.dtype)
    if isinstance(value, tuple):
        return tuple(_to_context(v, ctx) for v in value)
    if isinstance(value, list):  # fused SGD: [buffer, lr scale]
        return [_to_context(value[0], ctx), float(value[1])]
    return value
