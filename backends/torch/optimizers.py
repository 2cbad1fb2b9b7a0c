"""torch optimizers over the groups the core computed, lr schedules, stage regrouping, rollback."""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tunespec.backend_api import OptimizerExport, excerpt
from tunespec.errors import SpecError


class TorchOptimizers:
    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, torch.optim.Optimizer)

    def optimizer_handles(self, optimizer: torch.optim.Optimizer) -> list[Any]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    def build_optimizer(self, groups: Sequence[dict], name: Any, lr: float | None,
                        weight_decay: float, semantics: str = "torch",
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

    def optimizer_options(self, name: Any, semantics: str = "torch") -> frozenset[str] | None:
        """The keyword options the optimizer class takes (None: it takes any, through **kwargs)."""
        params = inspect.signature(_optimizer_class(name).__init__).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return None
        return frozenset(k for k, p in params.items()
                         if k not in ("self", "params") and p.kind != p.VAR_POSITIONAL)

    def attach_schedule(self, optimizer: torch.optim.Optimizer, factor: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # --- rolling back a stage change --------------------------------------------------------
    def optimizer_snapshot(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> Any:
        """What restage_optimizer / attach_schedule change: the groups (the same dict objects, so
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


    def optimizer_groups(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any = None) -> list[dict]:
        """Each group's parameters, the keys tunespec put on it, its lr and its initial lr (the lr
        scheduler's base lr for it; the group's own ``initial_lr`` without a scheduler)."""
        base = list(lr_scheduler.base_lrs) if lr_scheduler is not None else []
        return [{"params": list(g["params"]), "lr_mult": g.get("lr_mult", 1.0), "wd_mult": g.get("wd_mult", 1.0),
                 "lr_factor": g.get("lr_factor", 1.0), "ramp": g.get("ramp"), "lr": g["lr"],
                 "initial_lr": base[i] if i < len(base) else g.get("initial_lr")}
                for i, g in enumerate(optimizer.param_groups)]

    def lr_state(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> dict[str, Any]:
        return {"lr": optimizer.defaults.get("lr"), "weight_decay": optimizer.defaults.get("weight_decay"),
                "step": 0 if lr_scheduler is None else lr_scheduler.last_epoch}

    def restage_optimizer(self, optimizer: torch.optim.Optimizer, layout: Sequence[dict],
                          added: Sequence[Any], removed: Sequence[Any], lr_scheduler: Any) -> None:
        """Install the layout the core computed: the existing groups get their new parameter lists
        (state is per parameter, so it follows them), groups past them are appended, the state of
        parameters that left is dropped. Where a layout group gives ``lr``, ``initial_lr`` (the lr
        scheduler's base lr) or ``factor`` (its lr factor function), they are installed as given."""
        kept = len(optimizer.param_groups)
        for group, new in zip(optimizer.param_groups, layout[:kept], strict=False):
            group["params"] = list(new["params"])
            if "param_names" in group:
                group["param_names"] = list(new["param_names"])
        for p in removed:
            optimizer.state.pop(p, None)
        for new in layout[kept:]:
            group = {"params": list(new["params"]), "lr": new["lr"], "lr_mult": new["lr_mult"],
                     "wd_mult": new["wd_mult"], "lr_factor": new["lr_factor"],
                     "param_names": list(new["param_names"])}
            if new.get("ramp") is not None:
                group["ramp"] = new["ramp"]
            if new.get("weight_decay") is not None:
                group["weight_decay"] = new["weight_decay"]
            optimizer.add_param_group(group)
        for i, new in enumerate(layout):
            group = optimizer.param_groups[i]
            if "lr" in new:
                group["lr"] = new["lr"]
            if lr_scheduler is None:
                continue
            if i >= len(lr_scheduler.base_lrs):
                lr_scheduler.base_lrs.append(new["initial_lr"])
                if hasattr(lr_scheduler, "lr_lambdas"):
                    lr_scheduler.lr_lambdas.append(new.get("factor") or lr_scheduler.lr_lambdas[0])
                lr_scheduler._last_lr.append(group["lr"])
            else:
                if new.get("initial_lr") is not None:
                    lr_scheduler.base_lrs[i] = new["initial_lr"]
                if new.get("factor") is not None and hasattr(lr_scheduler, "lr_lambdas"):
                    lr_scheduler.lr_lambdas[i] = new["factor"]
                if "lr" in new:
                    lr_scheduler._last_lr[i] = group["lr"]
            if new.get("initial_lr") is not None:
                group["initial_lr"] = new["initial_lr"]

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


