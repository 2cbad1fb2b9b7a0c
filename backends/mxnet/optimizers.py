"""Gluon Trainers over the parameters the core planned, lr schedules, stage regrouping, rollback."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import mxnet as mx
from mxnet import gluon

from tunespec.backend_api import LRState, LRTable
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

    def optimizer_backup(self, trainer: gluon.Trainer) -> Any:
        """What a failed resume puts back: the Trainer's parameter table and the optimizer state."""
        o = trainer._optimizer
        return {"params": list(trainer._params), "param2idx": dict(trainer._param2idx),
                "param_dict": dict(o.param_dict), "to_init": list(trainer._params_to_init),
                "contexts": trainer._contexts,
                "updaters": [(u.states, u.states_synced) for u in trainer._updaters],
                "optimizer": {k: v for k, v in vars(o).items() if k not in ("param_dict",)},
                "counts": {k: dict(v) for k, v in o._all_index_update_counts.items()},
                "lr_mult": dict(o.lr_mult), "wd_mult": dict(o.wd_mult)}

    def optimizer_restore(self, trainer: gluon.Trainer, backup: Any) -> None:
        o = trainer._optimizer
        trainer._params[:] = backup["params"]
        trainer._param2idx.clear()
        trainer._param2idx.update(backup["param2idx"])
        o.param_dict = backup["param_dict"]
        trainer._params_to_init[:] = backup["to_init"]
        trainer._contexts = backup["contexts"]
        for u, (states, synced) in zip(trainer._updaters, backup["updaters"], strict=True):
            u.states, u.states_synced = states, synced
        vars(o).update(backup["optimizer"])
        for k, v in backup["counts"].items():
            o._all_index_update_counts[k].clear()
            o._all_index_update_counts[k].update(v)
        o.lr_mult, o.wd_mult = backup["lr_mult"], backup["wd_mult"]

