"""Everything a failed public call must leave as it was, captured as plain comparable values.

``state_of(model, optimizer, schedule, lr_scheduler)`` returns a dict of weights (bytes),
trainability, multipliers, norm-layer modes (training flag and tunespec's frozen-statistics
state), optimizer groups and per-parameter state, lr-scheduler state and stage-schedule state.
Hostile tests take it before a call that must fail and assert it is equal afterwards.
"""

from __future__ import annotations

import hashlib
from typing import Any

try:
    import numpy as np
except ModuleNotFoundError:  # the base install: no framework, so no tensor to snapshot either
    np = None


def _digest(array: Any) -> str:
    a = np.ascontiguousarray(np.asarray(array))
    return f"{a.dtype}{a.shape}:{hashlib.sha256(a.tobytes()).hexdigest()}"


def _plain(value: Any) -> Any:
    """A value made comparable: tensors and arrays become digests, containers recurse."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if np is not None and isinstance(value, np.ndarray):
        return _digest(value)
    mod = type(value).__module__
    if mod.startswith("torch"):
        if hasattr(value, "detach"):
            return _digest(value.detach().cpu().numpy())
        return repr(value)
    if mod.startswith("mxnet"):
        if hasattr(value, "asnumpy"):
            return _digest(value.asnumpy())
        return repr(value)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(type(value))


def _torch_model(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"tensors": {}, "modules": {}}
    for name, p in model.named_parameters(remove_duplicate=False):
        out["tensors"][name] = (_digest(p.detach().cpu().numpy()), bool(p.requires_grad),
                                None if p.grad is None else _digest(p.grad.detach().cpu().numpy()))
    for name, b in model.named_buffers(remove_duplicate=False):
        out["tensors"][name] = (_digest(b.detach().cpu().numpy()),)
    for name, m in model.named_modules(remove_duplicate=False):
        hooks = sorted(type(h).__name__ + repr(sorted(vars(h).items()) if hasattr(h, "__dict__") else "")
                       for h in m._forward_pre_hooks.values())
        out["modules"][name] = (type(m).__name__, bool(m.training), hooks)
    return out


def _mxnet_model(model: Any) -> dict[str, Any]:
    import mxnet as mx

    mx.nd.waitall()  # oneDNN rewrites weights asynchronously after inference
    out: dict[str, Any] = {"tensors": {}, "blocks": {}}
    for name, p in model._collect_params_with_prefix().items():
        data = None if p._data is None else _digest(p.data(p.list_ctx()[0]).asnumpy())
        out["tensors"][name] = (data, p.grad_req, float(p.lr_mult), float(p.wd_mult), str(p.dtype))

    def walk(block: Any, path: str) -> None:
        kwargs = block.__dict__.get("_kwargs")
        out["blocks"][path] = (type(block).__name__, _plain(dict(kwargs)) if isinstance(kwargs, dict) else None,
                               bool(getattr(block, "_active", False)))
        for key, child in block._children.items():
            walk(child, f"{path}.{key}" if path else key)

    walk(model, "")
    return out


def _torch_optimizer(opt: Any) -> dict[str, Any]:
    index = {}
    groups = []
    for g in opt.param_groups:
        ids = []
        for p in g["params"]:
            index.setdefault(id(p), len(index))
            ids.append(index[id(p)])
        groups.append({"params": ids, **{k: _plain(v) for k, v in g.items() if k != "params"}})
    state = {index.get(id(p), repr(id(p))): _plain(s) for p, s in opt.state.items()}
    return {"type": type(opt).__name__, "groups": groups, "state": state, "n_params": len(index)}


def _mxnet_trainer(trainer: Any) -> dict[str, Any]:
    import mxnet as mx

    mx.nd.waitall()
    o = trainer._optimizer
    attrs = {k: _plain(v) for k, v in sorted(vars(o).items())
             if k not in ("param_dict", "lr_scheduler", "idx2name") and not callable(v)}
    states = []
    for u in trainer._updaters:
        states.append({str(k): _plain(v) for k, v in sorted(u.states.items(), key=lambda kv: str(kv[0]))})
    sched = o.lr_scheduler
    return {"type": type(o).__name__, "params": [p.name for p in trainer._params],
            "param2idx": dict(trainer._param2idx), "optimizer": attrs, "states": states,
            "lr_scheduler": None if sched is None else _plain(
                {k: v for k, v in vars(sched).items() if not callable(v)})}


def _lr_scheduler(sched: Any) -> Any:
    if sched is None:
        return None
    if hasattr(sched, "state_dict"):
        return _plain({k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"})
    return _plain({k: v for k, v in vars(sched).items() if not callable(v)})


def _schedule(schedule: Any) -> Any:
    if schedule is None:
        return None
    return {"state": _plain(schedule.state_dict()),
            "plan": None if schedule.plan is None else id(schedule.plan),
            "factors": _plain(dict(sorted(schedule.lrs.factors.items()))),
            "best_state": _plain(schedule.best_state),
            "lr_scheduler": id(schedule.lr_scheduler) if schedule.lr_scheduler is not None else None}


def state_of(model: Any, optimizer: Any = None, schedule: Any = None, lr_scheduler: Any = None) -> dict[str, Any]:
    """All of a run's mutable state, as plain values (equal before and after a refused call)."""
    mod = type(model).__module__
    if hasattr(model, "named_parameters"):
        out: dict[str, Any] = {"model": _torch_model(model)}
    elif hasattr(model, "collect_params"):
        out = {"model": _mxnet_model(model)}
    else:
        raise TypeError(f"state_of: unknown model type {mod}.{type(model).__name__}")
    if optimizer is not None:
        out["optimizer"] = _torch_optimizer(optimizer) if hasattr(optimizer, "param_groups") \
            else _mxnet_trainer(optimizer)
    out["lr_scheduler"] = _lr_scheduler(lr_scheduler)
    out["schedule"] = _schedule(schedule)
    return out


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Assert two ``state_of`` results are equal, naming the first difference."""
    def diff(a: Any, b: Any, path: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in a or k not in b:
                    return f"{path}.{k}: present only {'after' if k in b else 'before'}"
                d = diff(a[k], b[k], f"{path}.{k}")
                if d:
                    return d
            return None
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                d = diff(x, y, f"{path}[{i}]")
                if d:
                    return d
            return None
        return None if a == b else f"{path}: {a!r} -> {b!r}"

    d = diff(before, after, "state")
    assert d is None, f"a refused call changed the run: {d}"
