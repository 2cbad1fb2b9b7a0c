"""Checkpoint files: torch files (weights_only unless opted in), safetensors, run checkpoints."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunespec.backend_api import (RUN_LAYOUT, decode_tree, encode_tree, excerpt, first_line, read_safetensors_file,
                                  regular_file, write_checked)
from tunespec.errors import SpecError

from .listing import _unwrap

_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                       torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
                       torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_TORCH_DTYPES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def _torch_entry(t: torch.Tensor) -> tuple[str, tuple[int, ...], Any]:
    """(dtype code, shape, bytes) of a tensor for tunespec.recipe.files' safetensors codec."""
    t = t.detach().cpu().contiguous()
    if t.dtype not in _SAFETENSORS_DTYPES:
        raise SpecError(f"save_checkpoint: cannot store a {t.dtype} tensor")
    flat = t.reshape(-1)
    data = flat.view(torch.int16) if t.dtype == torch.bfloat16 else flat
    return _SAFETENSORS_DTYPES[t.dtype], tuple(t.shape), data.numpy().tobytes()


def _torch_tensor(dtype: str, shape: tuple[int, ...], data: Any) -> torch.Tensor:
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    target = _TORCH_DTYPES[dtype]
    raw = torch.int16 if target == torch.bfloat16 else target
    if not memoryview(data).nbytes:
        return torch.empty(shape, dtype=target)
    t = torch.frombuffer(bytearray(data), dtype=raw).reshape(shape)
    return t.view(torch.bfloat16) if target == torch.bfloat16 else t


def _scheduler_state(lr_scheduler: Any) -> dict[str, Any]:
    """An lr scheduler's state_dict; LambdaLR's per-group lambdas (functions) carry no state."""
    state = dict(lr_scheduler.state_dict())
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None if not v else v for v in state["lr_lambdas"]]
    return state


def _check_optimizer_structure(opt: Any, sched: Any) -> None:
    """The shape of an optimizer state_dict (a crafted file could have anything in it)."""
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict)
            and isinstance(opt.get("param_groups"), list)):
        raise ValueError("optimizer state is not {state, param_groups}")
    for g in opt["param_groups"]:
        if not (isinstance(g, dict) and isinstance(g.get("params"), list)
                and all(type(i) is int for i in g["params"])):
            raise ValueError("a param group without a list of parameter indices")
    if not all(type(i) is int and isinstance(s, dict) and all(isinstance(k, str) for k in s)
               for i, s in opt["state"].items()):
        raise ValueError("optimizer state is not per parameter index")
    if sched is not None and not (isinstance(sched, dict) and all(isinstance(k, str) for k in sched)):
        raise ValueError("lr scheduler state is not a mapping")


def _same_setting(saved: Any, live: Any) -> bool:
    if isinstance(saved, (list, tuple)) and isinstance(live, (list, tuple)):
        return len(saved) == len(live) and all(_same_setting(a, b) for a, b in zip(saved, live, strict=True))
    if isinstance(live, torch.Tensor) or isinstance(saved, torch.Tensor):
        return True  # tensor-valued settings (capturable lr) follow the state
    return saved == live or (saved != saved and live != live)



class TorchCheckpoints:
    """Framework calls for loading, saving and resuming; what to load is decided in the core."""

    def read_checkpoint(self, path: str, allow_pickle: bool) -> Any:
        """A torch file, read with ``weights_only=True`` unless the caller opted into pickle."""
        regular_file(path, "load", None)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except Exception as exc:
            first = first_line(exc)
            if not allow_pickle and "weights_only" in str(exc).lower():
                raise SpecError(f"{path}: this checkpoint needs pickle to load ({excerpt(first, 200)}); "
                                f"unpickling can run arbitrary code, so tunespec refuses it. If you trust "
                                f"the file, pass allow_pickle=True") from None
            raise SpecError(f"{path}: not a torch checkpoint ({type(exc).__name__}: {excerpt(first, 200)})") from None
        return obj.state_dict() if isinstance(obj, nn.Module) else obj

    def read_safetensors(self, path: str) -> dict[str, torch.Tensor]:
        return read_safetensors_file(path, "safetensors.torch", "not a valid safetensors file", device="cpu")

    def to_numpy(self, value: Any) -> Any:
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        return value.numpy()

    def save_run(self, path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler: Any, meta: str, best: dict[str, Any] | None) -> None:
        """One safetensors file: model, best weights and optimizer tensors; the rest as JSON."""
        model_state = _unwrap(model).state_dict()
        entries = RUN_LAYOUT.pack({k: _torch_entry(t) for k, t in model_state.items()},
                                  None if best is None else {k: _torch_entry(torch.from_numpy(v))
                                                             for k, v in best.items()})
        state = {"model": list(model_state), "best": None if best is None else list(best),
                 "optimizer": encode_tree(optimizer.state_dict(), self.is_tensor,
                                          RUN_LAYOUT.namer(entries, RUN_LAYOUT.optimizer, _torch_entry)),
                 "lr_scheduler": None if lr_scheduler is None else encode_tree(
                     _scheduler_state(lr_scheduler), self.is_tensor,
                     RUN_LAYOUT.namer(entries, RUN_LAYOUT.scheduler, _torch_entry))}
        write_checked(path, entries, RUN_LAYOUT.metadata(meta, state))

    def load_run(self, tensors: dict[str, Any], metadata: dict[str, str], path: str) -> dict[str, Any]:
        """The run's state as torch tensors and plain values; a SpecError for anything malformed."""
        try:
            arrays = {k: _torch_tensor(*v) for k, v in tensors.items()}
            state, model, best = RUN_LAYOUT.unpack(arrays, metadata)
            best = None if best is None else {k: v.numpy() for k, v in best.items()}
            opt = decode_tree(state["optimizer"], arrays.__getitem__)
            sched = None if state["lr_scheduler"] is None else decode_tree(state["lr_scheduler"],
                                                                         arrays.__getitem__)
            _check_optimizer_structure(opt, sched)
        except (KeyError, TypeError, ValueError, RuntimeError, RecursionError) as exc:
            raise SpecError(f"resume: {path!r} is not a complete tunespec run checkpoint "
                            f"({type(exc).__name__}: {excerpt(str(exc))})") from None
        return {"model": model, "best": best, "optimizer": opt, "lr_scheduler": sched}

    def check_run_model(self, run: dict[str, Any], model: nn.Module) -> None:
        """The model has exactly the saved tensors, with the saved shapes and dtypes."""
        live = _unwrap(model).state_dict()
        saved = run["model"]
        odd = sorted(set(live) ^ set(saved))
        if odd:
            raise SpecError(f"resume: the model's tensors differ from the saved run's ({', '.join(odd[:4])}"
                            f"{', ...' if len(odd) > 4 else ''}); resume into the architecture the run used")
        for k, t in live.items():
            if tuple(t.shape) != tuple(saved[k].shape) or t.dtype != saved[k].dtype:
                raise SpecError(f"resume: tensor {k!r} is {tuple(t.shape)} {t.dtype} in this model but "
                                f"{tuple(saved[k].shape)} {saved[k].dtype} in the checkpoint; resume into "
                                f"the architecture the run used")

    def check_run_optimizer(self, run: dict[str, Any], optimizer: torch.optim.Optimizer,
                            lr_scheduler: Any) -> None:
        """Groups, their sizes and settings and every state tensor's shape, before loading any."""
        saved = run["optimizer"]
        groups = saved["param_groups"]
        live = optimizer.param_groups
        if len(groups) != len(live) or any(not isinstance(g, dict) or len(g.get("params", ())) != len(l["params"])
                                           for g, l in zip(groups, live, strict=True)):
            raise SpecError("resume: the optimizer's parameter groups differ from the saved ones; build it "
                            "from the run's recipe (pass the run's Schedule)")
        for i, (g, l) in enumerate(zip(groups, live, strict=True)):
            for key, value in l.items():
                if key in ("params", "lr", "initial_lr", "param_names") or key not in g:
                    continue
                if not _same_setting(g[key], value):
                    raise SpecError(f"resume: optimizer group {i} has {key}={excerpt(value)}, the run used "
                                    f"{excerpt(g[key])}; build the optimizer from the run's recipe")
        params = {}
        for g, l in zip(groups, live, strict=True):
            params.update(zip(g["params"], l["params"], strict=True))
        for index, s in saved["state"].items():
            if index not in params or not isinstance(s, dict):
                raise SpecError(f"resume: the saved optimizer state names parameter {excerpt(index)}, "
                                f"which the optimizer does not have")
            for key, value in s.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                    raise SpecError(f"resume: saved optimizer state {key!r} of parameter {index} is "
                                    f"{tuple(value.shape)}, the parameter is {tuple(params[index].shape)}")
        if lr_scheduler is not None and run["lr_scheduler"] is not None:
            odd = sorted(set(run["lr_scheduler"]) - set(lr_scheduler.state_dict()))
            if odd:  # load_state_dict would set them as attributes of the scheduler
                raise SpecError(f"resume: the saved lr-scheduler state has entries this "
                                f"{type(lr_scheduler).__name__} does not ({', '.join(map(excerpt, odd[:4]))})")

    def load_run_state(self, run: dict[str, Any], model: nn.Module,
                       optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> None:
        try:
            optimizer.load_state_dict(run["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise SpecError(f"resume: the optimizer does not match the saved one ({excerpt(str(exc))}); "
                            f"build it from the run's recipe (pass the run's Schedule)") from None
        _unwrap(model).load_state_dict(run["model"])
        if lr_scheduler is not None and run["lr_scheduler"] is not None:
            lr_scheduler.load_state_dict(run["lr_scheduler"])

    @staticmethod
    def is_tensor(value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def load_file(self, model: nn.Module, path: str, allow_pickle: bool = False) -> None:
        """A whole state_dict into ``model``: every key and shape checked before any is copied
        (torch's own load_state_dict copies what matches before it reports the rest)."""
        state = self.read_checkpoint(path, allow_pickle)
        live = _unwrap(model).state_dict()
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise SpecError(f"{path}: not a state_dict of named tensors; use tunespec.load(model, path, "
                            f"key=...) for training checkpoints")
        odd = sorted(set(live) ^ set(state))
        if odd:
            raise SpecError(f"{path}: its keys differ from the model's ({', '.join(map(excerpt, odd[:4]))}); "
                            f"use tunespec.load for partial loading")
        for k, t in live.items():
            if tuple(state[k].shape) != tuple(t.shape):
                raise SpecError(f"{path}: {k!r} is {tuple(state[k].shape)} in the file, {tuple(t.shape)} "
                                f"in the model")
            if not (state[k].dtype.is_floating_point or state[k].dtype in _SAFETENSORS_DTYPES):
                raise SpecError(f"{path}: {k!r} has dtype {state[k].dtype}, not a number type")
        _unwrap(model).load_state_dict(state)

    def save_file(self, model: nn.Module, path: str) -> None:
        torch.save(_unwrap(model).state_dict(), path)

