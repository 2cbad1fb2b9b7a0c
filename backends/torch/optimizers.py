"""torch optimizers over the groups the core computed, lr schedules, stage regrouping, rollback."""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tunespec.backend_api import LRGroup, LRState, LRTable, OptimizerExport, excerpt
from tunespec.errors import SpecError

# optimizer -> steps taken since install_lrs gave it an lr scheduler (see lr_state)
_STEPS: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def _count_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    _STEPS[optimizer] = _STEPS.get(optimizer, 0) + 1


class TorchOptimizers:
    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, torch.optim.Optimizer)

    def optimizer_handles(self, optimizer: torch.optim.Optimizer) -> list[Any]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    def build_optimizer(self, groups: Sequence[dict], name: Any, lr: float | None,
                        weight_decay: float, semantics: str = "portable",
                        **options: Any) -> torch.optim.Optimizer:
        cls = _optimizer_class(name)
        accepted = inspect.signature(cls.__init__).parameters
        groups = [dict(g) for g in groups]
        if "weight_decay" not in accepted:
            if weight_decay:
                raise SpecError(f"{cls.__name__} takes no weight_decay; pass weight_decay=0 or "
                                f"pick an optimizer that has it")
            for g in groups:
                g.pop("weight_decay", None)
        defaults = dict(options)
        if lr is not None:
            defaults["lr"] = lr
        if "weight_decay" in accepted:
            defaults["weight_decay"] = weight_decay
        return cls(groups, **defaults)

    def optimizer_options(self, name: Any, semantics: str = "portable") -> frozenset[str] | None:
        """The keyword options the optimizer class takes (None: it takes any, through **kwargs)."""
        params = inspect.signature(_optimizer_class(name).__init__).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return None
        return frozenset(k for k, p in params.items()
                         if k not in ("self", "params") and p.kind != p.VAR_POSITIONAL)

    # --- rolling back a stage change --------------------------------------------------------
    def optimizer_snapshot(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> Any:
        """What install_lrs changes: the groups (the same dict objects, so
        references stay valid), the per-parameter state mapping and the lr scheduler's lists."""
        if lr_scheduler is not None and not isinstance(lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise SpecError(f"lr_scheduler: expected a torch lr scheduler (schedule.lr_scheduler), got "
                            f"{type(lr_scheduler).__name__}")
        groups = [(g, {**g, "params": list(g["params"])}) for g in optimizer.param_groups]
        sched = None
        if lr_scheduler is not None:
            sched = {k: list(v) if isinstance(v, list) else v for k, v in vars(lr_scheduler).items()
                     if k in ("base_lrs", "lr_lambdas", "_last_lr", "last_epoch", "_step_count")}
        return groups, dict(optimizer.state), sched

    def optimizer_rollback(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any, saved: Any) -> None:
        groups, state, sched = saved
        for group, content in groups:
            group.clear()
            group.update(content)
        optimizer.param_groups[:] = [g for g, _ in groups]
        optimizer.state.clear()
        optimizer.state.update(state)
        if lr_scheduler is not None and sched is not None:
            for key, value in sched.items():
                setattr(lr_scheduler, key, list(value) if isinstance(value, list) else value)


    def lr_state(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any = None) -> LRState:
        """Base lr and decay, the steps the lr scheduler counted, the optimizer steps counted since
        install_lrs gave it a scheduler, and each group with the keys tunespec put on it; a group's
        initial lr is the lr scheduler's base lr for it (its own ``initial_lr`` without one)."""
        base = list(lr_scheduler.base_lrs) if lr_scheduler is not None else []
        groups = tuple(LRGroup(tuple(g["params"]), tuple(g.get("param_names", ())), g.get("lr_mult", 1.0),
                               g.get("wd_mult", 1.0), g.get("lr_factor", 1.0), g.get("ramp"), g["lr"],
                               base[i] if i < len(base) else g.get("initial_lr"))
                       for i, g in enumerate(optimizer.param_groups))
        return LRState(optimizer.defaults.get("lr"), optimizer.defaults.get("weight_decay"),
                       0 if lr_scheduler is None else lr_scheduler.last_epoch, _STEPS.get(optimizer), groups)

    def install_lrs(self, optimizer: torch.optim.Optimizer, table: LRTable, lr_scheduler: Any = None) -> Any:
        """The table as param groups (existing groups get their new parameter lists, state follows
        each parameter; new groups are appended; parameters that left lose their state) plus one
        LambdaLR with a factor per group."""
        if table.groups:
            self._regroup(optimizer, table, lr_scheduler)
        if lr_scheduler is None and table.factor is not None:
            factors = [g.factor or table.factor for g in table.groups] if table.groups else table.factor
            lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
            if optimizer not in _STEPS:  # counts optimizer steps, to catch a scheduler never stepped
                _STEPS[optimizer] = 0
                optimizer.register_step_post_hook(_count_step)
        return lr_scheduler

    @staticmethod
    def _regroup(optimizer: torch.optim.Optimizer, table: LRTable, lr_scheduler: Any) -> None:
        kept = len(optimizer.param_groups)
        for group, new in zip(optimizer.param_groups, table.groups[:kept], strict=False):
            group["params"] = list(new.params)
            if "param_names" in group:
                group["param_names"] = list(new.names)
        for p in table.removed:
            optimizer.state.pop(p, None)
        for new in table.groups[kept:]:
            group = {"params": list(new.params), "lr_mult": new.lr_mult, "wd_mult": new.wd_mult,
                     "lr_factor": new.lr_factor, "param_names": list(new.names)}
            for key in ("lr", "ramp", "weight_decay"):
                if getattr(new, key) is not None:
                    group[key] = getattr(new, key)
            optimizer.add_param_group(group)
        for i, new in enumerate(table.groups):
            group = optimizer.param_groups[i]
            if new.lr is not None:
                group["lr"] = new.lr
            if lr_scheduler is not None:
                if i >= len(lr_scheduler.base_lrs):
                    lr_scheduler.base_lrs.append(new.initial_lr)
                    if hasattr(lr_scheduler, "lr_lambdas"):
                        lr_scheduler.lr_lambdas.append(new.factor or table.factor or lr_scheduler.lr_lambdas[0])
                    lr_scheduler._last_lr.append(group["lr"])
                else:
                    if new.initial_lr is not None:
                        lr_scheduler.base_lrs[i] = new.initial_lr
                    if new.factor is not None and hasattr(lr_scheduler, "lr_lambdas"):
                        lr_scheduler.lr_lambdas[i] = new.factor
                    if new.lr is not None:
                        lr_scheduler._last_lr[i] = group["lr"]
            if new.initial_lr is not None:
                group["initial_lr"] = new.initial_lr

    # --- export / import: run checkpoints and rollbacks -------------------------------------
    def export_optimizer(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any, names: Mapping[Any, str],
                         host: bool = True) -> OptimizerExport:
        """Each parameter's group settings (with its group's index) and state; the lr scheduler's
        state_dict as the optimizer-level state. ``host``: tensors as numpy (this rank's part of a
        sharded one); otherwise the tensors themselves."""
        convert = _to_host if host else _as_is
        hyper: dict[str, Any] = {}
        state: dict[str, Any] = {}
        native: dict[str, str] = {}  # the groups' own parameter names, where torch keeps them
        for i, group in enumerate(optimizer.param_groups):
            settings = {k: convert(v) for k, v in group.items() if k not in ("params", "param_names")}
            settings["group"] = i  # one dict per group, shared by its parameters (stored once)
            param_names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                name = names[p]
                hyper[name] = settings
                if param_names is not None:
                    native[name] = param_names[j]
                own = optimizer.state.get(p)
                if own:
                    state[name] = {k: convert(v) for k, v in own.items()}
        common: dict[str, Any] = {"param_names": native}
        if lr_scheduler is not None:
            common["lr_scheduler"] = {k: _tree(v, convert) for k, v in _scheduler_state(lr_scheduler).items()}
        state[""] = common
        return OptimizerExport(type(optimizer).__name__, {}, hyper, state, frozenset({"lr", "initial_lr"}))

    def import_optimizer(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any, exported: OptimizerExport,
                         handles: Mapping[str, Any]) -> None:
        """Rebuild the groups from the export, then let torch's own ``load_state_dict`` cast the
        state as it would (dtype and device of each parameter, ``step`` where it keeps it)."""
        groups: dict[int, dict[str, Any]] = {}
        common = exported.state.get("", {})
        native = (common.get("param_names") or {}) if isinstance(common, Mapping) else {}
        if not isinstance(native, Mapping):
            raise SpecError("resume: the saved optimizer's parameter names are not a mapping")
        for name, h in exported.hyper.items():
            i = h.get("group")
            if type(i) is not int or i < 0:
                raise SpecError(f"resume: the saved optimizer settings of {name!r} name no parameter group")
            group = groups.get(i)
            if group is None:
                group = groups[i] = {k: _from_host(v, None) for k, v in h.items() if k != "group"}
                group["params"] = []
                if name in native:
                    group["param_names"] = []
            group["params"].append(handles[name])
            if "param_names" in group:
                group["param_names"].append(native.get(name))
        if sorted(groups) != list(range(len(groups))):
            raise SpecError("resume: the saved optimizer's parameter groups are not numbered 0, 1, ...")
        sched = common.get("lr_scheduler") if isinstance(common, Mapping) else None
        if lr_scheduler is not None and sched is not None:
            odd = sorted(set(sched) - set(lr_scheduler.state_dict()))
            if odd:  # load_state_dict would set them as attributes of the scheduler
                raise SpecError(f"resume: the saved lr-scheduler state has entries this "
                                f"{type(lr_scheduler).__name__} does not ({', '.join(map(excerpt, odd[:4]))})")
        layout = [groups[i] for i in range(len(groups))]
        index = {id(p): k for k, p in enumerate(p for g in layout for p in g["params"])}
        state = {}
        for name, own in exported.state.items():
            if name == "":
                continue
            p = handles[name]
            if not isinstance(own, Mapping) or id(p) not in index:
                raise SpecError(f"resume: the saved optimizer state names parameter {excerpt(name)}, which "
                                f"the optimizer does not have")
            state[index[id(p)]] = {k: _from_host(v, p) for k, v in own.items()}
        saved = {"state": state,
                 "param_groups": [dict({k: v for k, v in g.items() if k != "params"},
                                       params=[index[id(p)] for p in g["params"]]) for g in layout]}
        optimizer.param_groups[:] = [dict(g) for g in layout]
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise SpecError(f"resume: the optimizer does not match the saved one ({excerpt(str(exc))}); "
                            f"build it from the run's recipe (pass the run's StageRunner)") from None
        if lr_scheduler is not None and sched is not None:
            lr_scheduler.load_state_dict({k: _tree(v, lambda x: _from_host(x, None)) for k, v in sched.items()})


def _as_is(value: Any) -> Any:
    return value


def _to_host(value: Any) -> Any:
    """A tensor as numpy (this rank's part of a sharded one; bfloat16 as float32), else itself."""
    if not isinstance(value, torch.Tensor):
        return value
    t = value.detach()
    t = (t.to_local() if hasattr(t, "device_mesh") else t).cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _from_host(value: Any, param: Any) -> Any:
    """A numpy array as a tensor (a DTensor laid out like ``param`` where that is one), else itself."""
    if not isinstance(value, np.ndarray):
        return value
    t = torch.from_numpy(value)
    if param is not None and t.dim() > 0 and hasattr(param, "device_mesh"):
        from torch.distributed.tensor import DTensor

        t = DTensor.from_local(t.to(param.device), param.device_mesh, param.placements, run_check=False,
                               shape=param.shape, stride=param.stride())  # shards may be uneven
    return t


def _tree(value: Any, convert: Any) -> Any:
    """``convert`` applied to the leaves of a scheduler state (lists copied: schedulers mutate theirs)."""
    if isinstance(value, list):
        return [_tree(v, convert) for v in value]
    if isinstance(value, tuple):
        return tuple(_tree(v, convert) for v in value)
    if isinstance(value, dict):
        return {k: _tree(v, convert) for k, v in value.items()}
    return convert(value)


def _scheduler_state(lr_scheduler: Any) -> dict[str, Any]:
    """An lr scheduler's state_dict; LambdaLR's per-group lambdas (functions) carry no state."""
    state = dict(lr_scheduler.state_dict())
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None if not v else v for v in state["lr_lambdas"]]
    return state


def _optimizer_class(name: Any) -> type:
    if isinstance(name, type) and issubclass(name, torch.optim.Optimizer):
        return name
    if isinstance(name, str):
        table = {k.lower(): v for k, v in vars(torch.optim).items()
                 if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)}
        if name.lower() in table:
            return table[name.lower()]
        raise SpecError(f"unknown torch optimizer {name[:40]!r}; use a torch.optim class or one of "
                        f"{', '.join(sorted(table))}")
    raise SpecError(f"optimizer must be a name like 'sgd' or a torch.optim.Optimizer class, got "
                    f"{type(name).__name__}")


