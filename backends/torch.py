"""PyTorch backend: lists an ``nn.Module``'s tensors and executes a plan on it.

Frozen BatchNorm statistics use a picklable forward pre-hook that puts the layer
in eval mode before each forward, so the layer stays frozen after ``model.train()``,
``copy.deepcopy``, pickling and ``torch.compile``, and ``state_dict`` keys never change.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from tunespec.cache import GraphNode
from tunespec.errors import MissingFrameworkError, SpecError
from tunespec.files import decode_tree, encode_tree, excerpt, regular_file, write_checked
from tunespec.listing import Listing, ListingBuilder, class_names

# Wrapper classes and the attribute under which they hold the wrapped model.
_WRAPPERS = {
    "torch.nn.parallel.distributed.DistributedDataParallel": "module",
    "torch.nn.parallel.data_parallel.DataParallel": "module",
    "torch._dynamo.eval_frame.OptimizedModule": "_orig_mod",
    "torch.distributed.fsdp.fully_sharded_data_parallel.FullyShardedDataParallel": "_fsdp_wrapped_module",
    "torch.distributed.algorithms._checkpoint.checkpoint_wrapper.CheckpointWrapper":
        "_checkpoint_wrapped_module",
}
_NORMS = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _wrapper_attr(module: nn.Module) -> str | None:
    return _module_kind(type(module))[2]


def _unwrap(model: nn.Module) -> nn.Module:
    while (attr := _wrapper_attr(model)) is not None:
        model = getattr(model, attr)
    return model


def _shape(t: torch.Tensor) -> tuple[int, ...] | None:
    if type(t) not in _PLAIN_TENSORS and isinstance(t, nn.parameter.UninitializedTensorMixin):
        return None
    return t.shape  # torch.Size, a tuple


_PLAIN_TENSORS = (nn.Parameter, torch.Tensor)
_KINDS: dict[type, tuple[bool, bool, str | None]] = {}


def _module_kind(cls: type) -> tuple[bool, bool, str | None]:
    """(is a norm layer, has running statistics, wrapped-model attribute), cached per class."""
    kind = _KINDS.get(cls)
    if kind is None:
        attr = next((_WRAPPERS[k] for k in (f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__)
                     if k in _WRAPPERS), None)
        kind = _KINDS[cls] = (issubclass(cls, _NORMS), issubclass(cls, _NormBase), attr)
    return kind


class _Setting:
    """A parameter's trainability, and the gradient that freezing it drops (so a rolled-back
    apply gives it back). Equal when the trainability is: gradients come and go with training."""

    __slots__ = ("requires_grad", "grad")

    def __init__(self, requires_grad: bool, grad: Any):
        self.requires_grad, self.grad = requires_grad, grad

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Setting) and other.requires_grad == self.requires_grad

    __hash__ = None  # type: ignore[assignment]


class FrozenStats:
    """Forward pre-hook that keeps a norm layer in eval mode (uses, never updates, its statistics)."""

    def __init__(self, was_training: bool = True):
        self.was_training = was_training

    def __call__(self, module: nn.Module, args: Any) -> None:
        module.training = False


# --- fine-tuning lifecycle: checkpoints, init, stages, resume, DDP --------------------------------


_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                       torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
                       torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_TORCH_DTYPES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def _torch_entry(t: torch.Tensor) -> tuple[str, tuple[int, ...], Any]:
    """(dtype code, shape, bytes) of a tensor for tunespec.files' safetensors codec."""
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


class _TorchLifecycle:
    """Framework calls for the lifecycle; what to load, initialise, move or re-wrap is decided in
    tunespec.loading, tunespec.init, tunespec.stages and tunespec.checkpoint."""

    def read_checkpoint(self, path: str, allow_pickle: bool) -> Any:
        """A torch file, read with ``weights_only=True`` unless the caller opted into pickle."""
        regular_file(path, "load", None)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if not allow_pickle and "weights_only" in str(exc).lower():
                raise SpecError(f"{path}: this checkpoint needs pickle to load ({excerpt(first, 200)}); "
                                f"unpickling can run arbitrary code, so tunespec refuses it. If you trust "
                                f"the file, pass allow_pickle=True") from None
            raise SpecError(f"{path}: not a torch checkpoint ({type(exc).__name__}: {excerpt(first, 200)})") from None
        return obj.state_dict() if isinstance(obj, nn.Module) else obj

    def read_safetensors(self, path: str) -> dict[str, torch.Tensor]:
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingFrameworkError("reading .safetensors needs the safetensors package; "
                                        "pip install 'tunespec[safetensors]'") from None
        regular_file(path, "load", None)
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # SafetensorError, and OSError/ValueError from a damaged header
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SpecError(f"{path}: not a valid safetensors file ({type(exc).__name__}: "
                            f"{excerpt(first, 200)})") from None

    def to_numpy(self, value: Any) -> Any:
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        return value.numpy()

    def optimizer_groups(self, optimizer: torch.optim.Optimizer) -> list[dict]:
        return [{"params": list(g["params"]), "lr_mult": g.get("lr_mult", 1.0), "wd_mult": g.get("wd_mult", 1.0),
                 "lr_factor": g.get("lr_factor", 1.0)} for g in optimizer.param_groups]

    def restage_optimizer(self, optimizer: torch.optim.Optimizer, layout: Sequence[dict],
                          added: Sequence[Any], removed: Sequence[Any], lr_scheduler: Any) -> None:
        """Give the existing groups their new parameter lists (state is per parameter, so it follows
        them), drop the state of parameters that left, and append the new groups; an lr scheduler
        gets a base lr for each new group and the new group starts at the current schedule factor."""
        kept = len(optimizer.param_groups)
        for group, new in zip(optimizer.param_groups, layout[:kept], strict=True):
            group["params"] = list(new["params"])
            if "param_names" in group:
                group["param_names"] = list(new["param_names"])
        for p in removed:
            optimizer.state.pop(p, None)
        base_lr = optimizer.defaults["lr"]
        base_wd = optimizer.defaults.get("weight_decay")
        scale = 1.0
        if lr_scheduler is not None and lr_scheduler.base_lrs[0]:
            scale = optimizer.param_groups[0]["lr"] / lr_scheduler.base_lrs[0]
        for new in layout[kept:]:
            lr = base_lr * new["lr_mult"] * new["lr_factor"]
            group = {"params": list(new["params"]), "lr": lr * scale, "lr_mult": new["lr_mult"],
                     "wd_mult": new["wd_mult"], "lr_factor": new["lr_factor"],
                     "param_names": list(new["param_names"])}
            if base_wd is not None:
                group["weight_decay"] = base_wd * new["wd_mult"]
            optimizer.add_param_group(group)
            if lr_scheduler is not None:
                optimizer.param_groups[-1]["initial_lr"] = lr
                lr_scheduler.base_lrs.append(lr)
                if hasattr(lr_scheduler, "lr_lambdas"):
                    lr_scheduler.lr_lambdas.append(lr_scheduler.lr_lambdas[0])
                lr_scheduler._last_lr.append(lr * scale)

    def is_distributed_wrapper(self, model: nn.Module) -> bool:
        return isinstance(model, nn.parallel.DistributedDataParallel)

    def rewrap(self, model: nn.Module) -> nn.Module:
        """A new DDP wrapper with the old one's settings: DDP fixes at construction which parameters
        it all-reduces (those with requires_grad), so a changed set needs a new wrapper."""
        return nn.parallel.DistributedDataParallel(
            model.module, device_ids=model.device_ids, output_device=model.output_device,
            broadcast_buffers=model.broadcast_buffers, process_group=model.process_group,
            bucket_cap_mb=model.bucket_bytes_cap / (1024 * 1024),
            find_unused_parameters=model.find_unused_parameters,
            gradient_as_bucket_view=model.gradient_as_bucket_view, static_graph=model.static_graph)

    def save_run(self, path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler: Any, meta: str, best: dict[str, Any] | None) -> None:
        """One safetensors file: model, best weights and optimizer tensors; the rest as JSON."""
        entries: dict[str, Any] = {}

        def add(prefix: str) -> Any:
            def store(t: torch.Tensor) -> str:
                name = f"{prefix}/{len([k for k in entries if k.startswith(prefix + '/')])}"
                entries[name] = _torch_entry(t)
                return name
            return store

        model_state = _unwrap(model).state_dict()
        for k, t in model_state.items():
            entries[f"model/{k}"] = _torch_entry(t)
        for k, v in (best or {}).items():
            entries[f"best/{k}"] = _torch_entry(torch.from_numpy(v))
        state = {"model": list(model_state), "best": None if best is None else list(best),
                 "optimizer": encode_tree(optimizer.state_dict(), self.is_tensor, add("opt")),
                 "lr_scheduler": None if lr_scheduler is None else encode_tree(
                     _scheduler_state(lr_scheduler), self.is_tensor, add("sched"))}
        write_checked(path, entries, {"tunespec.run": meta, "tunespec.state": json.dumps(state)})

    def load_run(self, tensors: dict[str, Any], metadata: dict[str, str], path: str) -> dict[str, Any]:
        """The run's state as torch tensors and plain values; a SpecError for anything malformed."""
        try:
            state = json.loads(metadata["tunespec.state"])
            arrays = {k: _torch_tensor(*v) for k, v in tensors.items()}
            model = {k: arrays.pop(f"model/{k}") for k in state["model"]}
            best = None if state["best"] is None else {k: arrays.pop(f"best/{k}").numpy() for k in state["best"]}
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

    def optimizer_backup(self, optimizer: torch.optim.Optimizer) -> Any:
        """What a failed resume puts back: groups (as lists) and per-parameter state."""
        return ([dict(g, params=list(g["params"])) for g in optimizer.param_groups],
                {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                 for p, s in optimizer.state.items()})

    def optimizer_restore(self, optimizer: torch.optim.Optimizer, backup: Any) -> None:
        groups, state = backup
        optimizer.param_groups[:] = [dict(g, params=list(g["params"])) for g in groups]
        optimizer.state.clear()
        optimizer.state.update(state)

    @staticmethod
    def is_tensor(value: Any) -> bool:
        return isinstance(value, torch.Tensor)

# --- cached frozen prefix: trace a forward pass, cut it in two ------------------------------------

_F = torch.nn.functional
_RANDOM_FUNCTIONS = {_F.dropout, _F.dropout1d, _F.dropout2d, _F.dropout3d, _F.alpha_dropout,
                     _F.feature_alpha_dropout, torch.dropout, torch.bernoulli, torch.rand, torch.rand_like,
                     torch.randn, torch.randn_like, torch.randint}


class _TorchCachedPrefix:
    """Framework calls for cache_frozen; whether the cut is clean and the prefix frozen is decided
    in tunespec.cache."""

    def trace_split(self, model: nn.Module, split: str) -> tuple[list[GraphNode], Any]:
        """Trace ``model`` with torch.fx, keeping module ``split`` as one call, into core graph nodes."""
        import torch.fx

        root = _unwrap(model)
        try:
            root.get_submodule(split)
        except AttributeError:
            children = ", ".join(repr(n) for n, _ in root.named_children())
            raise SpecError(f"cache_frozen: {type(root).__name__} has no module {split!r}; its children "
                            f"are {children}") from None

        class SplitTracer(torch.fx.Tracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return qualname == split or super().is_leaf_module(m, qualname)

        try:
            graph = SplitTracer().trace(root)
        except Exception as exc:
            raise SpecError(f"cache_frozen: torch.fx cannot trace {type(root).__name__} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); the cut needs a traceable "
                            f"forward") from None
        index = {node: i for i, node in enumerate(graph.nodes)}
        nodes = []
        for node in graph.nodes:
            tensors: tuple[Any, ...] = ()
            random = False
            if node.op == "call_module":
                module = root.get_submodule(node.target)
                tensors = (*module.parameters(), *module.buffers())
                random = isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
            elif node.op == "get_attr":
                value = root
                for part in node.target.split("."):
                    value = getattr(value, part)
                tensors = (value,) if isinstance(value, torch.Tensor) else ()
            elif node.op == "call_function":
                random = node.target in _RANDOM_FUNCTIONS
            nodes.append(GraphNode(node.name, tuple(index[n] for n in node.all_input_nodes), tensors,
                                   is_input=node.op == "placeholder",
                                   in_split=node.op == "call_module" and node.target == split, random=random))
        return nodes, (root, graph)

    def cut_at(self, traced: Any, entry: int, prefix: frozenset[int]) -> tuple[Any, Any]:
        """Two GraphModules sharing the model's modules: the prefix up to node ``entry``, and the rest
        with that node's value as its only input."""
        import torch.fx

        root, graph = traced
        order = list(graph.nodes)
        front, back = torch.fx.Graph(), torch.fx.Graph()
        env_front: dict[Any, Any] = {}
        env_back = {order[entry]: back.placeholder("features")}
        for i, node in enumerate(order):
            if i in prefix:
                env_front[node] = front.node_copy(node, env_front.__getitem__)
            elif node.op != "placeholder":
                env_back[node] = back.node_copy(node, env_back.__getitem__)
        front.output(env_front[order[entry]])
        return torch.fx.GraphModule(root, front), torch.fx.GraphModule(root, back)

    def run_frozen(self, prefix: nn.Module, x: Any) -> Any:
        with torch.no_grad():
            return prefix(x)

class TorchBackend(_TorchLifecycle, _TorchCachedPrefix):
    name = "torch"

    def owns(self, model: Any) -> bool:
        return isinstance(model, nn.Module)

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

    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, torch.optim.Optimizer)

    def listing(self, model: nn.Module) -> Listing:
        found = ListingBuilder()
        add, layer = found.add, found.layer  # bound once: called per tensor on 100,000-tensor models
        seen_modules: set[int] = set()
        # An explicit stack (children pushed in reverse) lists in the same pre-order as recursion
        # without a self-referencing closure, whose reference cycle only the GC could free.
        stack: list[tuple[nn.Module, tuple[str, ...], frozenset[int]]] = [(model, (), frozenset())]
        while stack:
            module, path, wrappers = stack.pop()
            first_visit = id(module) not in seen_modules
            seen_modules.add(id(module))
            is_norm, has_stats, wrapped = _module_kind(type(module))
            layer(path, type(module).__name__, is_norm, wrappers)
            for leaf, tensor in module._parameters.items():
                if tensor is not None:
                    shape = tensor.shape if type(tensor) in _PLAIN_TENSORS else _shape(tensor)
                    add(tensor, leaf, None, shape, False, tensor.requires_grad)
            for leaf, tensor in module._buffers.items():
                if tensor is not None:
                    add(tensor, leaf, None, tensor.shape if type(tensor) in _PLAIN_TENSORS else _shape(tensor),
                        True, False)
            if first_visit and has_stats and module.running_mean is not None:
                found.add_norm(module, tuple(p for p in (module.weight, module.bias) if p is not None),
                               tuple(b for b in (module.running_mean, module.running_var) if b is not None),
                               self.norm_stats_frozen(module), type(module).__name__)
            children = module._modules
            if children:
                stack.extend([(child, path + (name,), wrappers | {len(path)} if name == wrapped else wrappers)
                              for name, child in reversed(children.items()) if child is not None])
        types = class_names(type(_unwrap(model)))
        return found.build(types[0], types[1:])

    # --- trainability ---------------------------------------------------------------------
    def snapshot(self, handle: nn.Parameter) -> "_Setting":
        return _Setting(bool(handle.requires_grad), handle.grad)

    def restore(self, handle: nn.Parameter, saved: "_Setting", rollback: bool = False) -> None:
        """``rollback``: undoing a call that just failed, so the gradient freezing dropped comes
        back; a later ``plan.restore()`` leaves gradients alone (an old one would be stale)."""
        handle.requires_grad_(saved.requires_grad)
        if rollback:
            handle.grad = saved.grad

    def set_param(self, handle: nn.Parameter, trainable: bool, lr_mult: float, wd_mult: float) -> None:
        # torch keeps multipliers in optimizer param groups, not on tensors.
        handle.requires_grad_(trainable)
        if not trainable:
            handle.grad = None

    # --- norm statistics ------------------------------------------------------------------
    def norm_stats_frozen(self, norm: nn.Module) -> bool:
        return any(isinstance(h, FrozenStats) for h in norm._forward_pre_hooks.values())

    def set_norm_stats_frozen(self, norm: nn.Module, frozen: bool, model: Any = None) -> None:
        """A released layer takes the mode ``model`` is in now (``model.eval()`` after apply must
        leave no BatchNorm training); without a model, the mode it had when it was frozen."""
        hooks = [(k, h) for k, h in norm._forward_pre_hooks.items() if isinstance(h, FrozenStats)]
        if frozen and not hooks:
            norm.register_forward_pre_hook(FrozenStats(norm.training))
            norm.training = False
        elif not frozen and hooks:
            for key, _hook in hooks:
                del norm._forward_pre_hooks[key]
            norm.training = bool(model.training) if isinstance(model, nn.Module) else hooks[0][1].was_training

    def commit(self, model: nn.Module) -> None:
        """Nothing to do: torch.compile's guards see requires_grad and hook changes."""

    # --- tensors and optimizers -----------------------------------------------------------
    def tensor_bytes(self, handle: torch.Tensor) -> bytes | None:
        if _shape(handle) is None or handle.device.type == "meta":
            return None
        return handle.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    def read(self, handle: torch.Tensor) -> Any:
        return handle.detach().cpu().numpy().copy()

    def write(self, handle: torch.Tensor, array: Any) -> None:
        with torch.no_grad():
            handle.copy_(torch.as_tensor(array).to(dtype=handle.dtype))

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


BACKEND = TorchBackend()


def build_model(zoo: str, name: str) -> nn.Module:
    """A torchvision model built offline: no weights, no backbone weights."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise SpecError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    return builder(**kwargs)
