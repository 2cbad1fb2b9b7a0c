"""MXNet Gluon backend (MXNet 1.9.x): lists a ``gluon.Block``'s parameters and executes a plan.

Names are structural (``features.0.weight``), never Gluon's counter-dependent prefixes
(``resnetv1b0_conv0_weight``). Inside a ``SymbolBlock`` (GluonCV's SSD/FPN feature
extractors) the tensors are flat; their names drop the block's common prefix at a
``_`` boundary, which is where the per-process counter (``ssd0_``, ``ssd1_``) lives.
Frozen BatchNorm statistics use the layer's own ``use_global_stats`` (for SymbolBlocks,
the attribute of the BatchNorm node), with cached graphs cleared so hybridized
models pick the change up.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import mxnet as mx
from mxnet import gluon

from tunespec.errors import SpecError
from tunespec.listing import Listing, ListingBuilder, NormInfo, RawName

_TRAINER_OPTIONS = ("kvstore", "compression_params", "update_on_kvstore")
_NORM_CLASSES = tuple(c for c in (getattr(gluon.nn, n, None) for n in (
    "BatchNorm", "BatchNormReLU", "LayerNorm", "InstanceNorm", "GroupNorm")) if c is not None)


def import_gluoncv() -> Any:
    """Import GluonCV beside torch >= 2.

    GluonCV 0.10.5's ``check.py`` raises when it finds torch >= 2.0 (and imports torch
    to find out). Only its optional torch half needs that check, so tunespec loads
    ``gluoncv.check`` first with the torch check turned into "torch absent", then
    imports GluonCV normally. Its MXNet model zoo is untouched.
    """
    if "gluoncv" in sys.modules:
        return sys.modules["gluoncv"]
    spec = importlib.util.find_spec("gluoncv")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("GluonCV is not installed; pip install 'tunespec[mxnet]'")
    path = os.path.join(spec.submodule_search_locations[0], "check.py")
    check_spec = importlib.util.spec_from_file_location("gluoncv.check", path)
    check = importlib.util.module_from_spec(check_spec)
    check_spec.loader.exec_module(check)

    def torch_half_disabled(*args: Any, **kwargs: Any) -> None:
        raise ImportError("gluoncv's torch half is not used by tunespec")

    check._require_pytorch_version = torch_half_disabled
    sys.modules["gluoncv.check"] = check
    try:
        import gluoncv
    except BaseException:
        sys.modules.pop("gluoncv.check", None)
        raise
    return gluoncv


@dataclass(eq=False)
class SymbolNorm:
    """A BatchNorm node inside a SymbolBlock's graph."""

    block: gluon.SymbolBlock
    node: str

    def _symbol(self) -> Any:
        return self.block._cached_graph[1].get_internals()[self.node + "_output"]


def _token_prefix(names: Sequence[str]) -> str:
    """The names' common prefix, cut back to a '_' boundary ('ssd0_mobilenet0_conv' -> 'ssd0_')."""
    if not names:
        return ""
    prefix = os.path.commonprefix(list(names))
    return prefix[: prefix.rfind("_") + 1]


def _shape(p: gluon.Parameter) -> tuple[int, ...] | None:
    return None if p.shape is None else tuple(int(d) for d in p.shape)


class MXNetBackend:
    name = "mxnet"

    def owns(self, model: Any) -> bool:
        return isinstance(model, gluon.Block)

    def load_file(self, model: gluon.Block, path: str) -> None:
        model.load_parameters(path)

    def save_file(self, model: gluon.Block, path: str) -> None:
        mx.nd.waitall()  # see tensor_bytes
        model.save_parameters(path)

    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, gluon.Trainer)

    def listing(self, model: gluon.Block) -> Listing:
        found = ListingBuilder()
        owner_of: list[tuple[str, tuple[str, ...]]] = []  # (block prefix, path), for strays

        def add(p: gluon.Parameter, raw: RawName, layer: str, is_norm: bool) -> None:
            found.add(p, raw, native=p.name, shape=_shape(p), layer_type=layer, is_norm=is_norm,
                      is_state=not p._differentiable or isinstance(p, gluon.Constant),
                      trainable=p.grad_req != "null", lr_mult=float(p.lr_mult),
                      wd_mult=float(p.wd_mult))

        def walk(block: gluon.Block, segments: tuple[str, ...]) -> None:
            owner_of.append((block.prefix, segments))
            if isinstance(block, gluon.SymbolBlock):
                self._list_symbol_block(block, segments, add, found)
                return
            is_norm = isinstance(block, _NORM_CLASSES) or type(block).__name__.endswith("Norm")
            for leaf, p in block._reg_params.items():
                add(p, RawName(segments, leaf), type(block).__name__, is_norm)
            kwargs = getattr(block, "_kwargs", None) or {}
            if "use_global_stats" in kwargs and "running_mean" in block._reg_params:
                regs = block._reg_params
                found.add_norm(NormInfo(
                    block, RawName(segments, ""),
                    tuple(regs[k] for k in ("gamma", "beta") if k in regs),
                    tuple(regs[k] for k in ("running_mean", "running_var") if k in regs),
                    bool(kwargs["use_global_stats"]), type(block).__name__))
            for name, child in block._children.items():
                walk(child, segments + (name,))

        walk(model, ())
        # Parameters made with self.params.get() but never assigned to an attribute: name
        # them under the deepest block whose prefix they carry (still counter-free).
        for full, p in model.collect_params().items():
            if not found.knows(p):
                prefix, path = max((o for o in owner_of if full.startswith(o[0])),
                                   key=lambda o: len(o[0]), default=("", ()))
                add(p, RawName(path, full[len(prefix):]), "Parameter", False)
        cls = type(model)
        return found.build(f"{cls.__module__}.{cls.__qualname__}")

    def _list_symbol_block(self, block: gluon.SymbolBlock, segments: tuple[str, ...],
                           add: Any, found: ListingBuilder) -> None:
        params = block.params
        full_names = list(params.keys())
        strip = len(_token_prefix(full_names))
        graph = json.loads(block._cached_graph[1].tojson())
        nodes = graph["nodes"]
        norm_inputs: dict[str, tuple[str, list[str]]] = {}
        for node in nodes:
            if node["op"] == "BatchNorm":
                inputs = [nodes[i[0]]["name"] for i in node["inputs"]]
                norm_inputs[node["name"]] = (node.get("attrs", {}).get("use_global_stats", "False"),
                                             inputs[1:])
        in_norm = {n for _, ins in norm_inputs.values() for n in ins}
        for full in full_names:
            add(params[full], RawName(segments, full[strip:]), "SymbolBlock", full in in_norm)
        for node, (global_stats, (gamma, beta, mean, var)) in norm_inputs.items():
            layer = node[strip:]
            layer = layer[: -len("_fwd")] if layer.endswith("_fwd") else layer
            found.add_norm(NormInfo(
                SymbolNorm(block, node), RawName(segments + (layer,), ""),
                tuple(params[n] for n in (gamma, beta) if n in full_names),
                tuple(params[n] for n in (mean, var) if n in full_names),
                global_stats == "True", "BatchNorm"))

    # --- trainability ---------------------------------------------------------------------
    def snapshot(self, handle: gluon.Parameter) -> tuple[str, float, float]:
        return handle.grad_req, handle.lr_mult, handle.wd_mult

    def restore(self, handle: gluon.Parameter, saved: tuple[str, float, float]) -> None:
        handle.grad_req, handle.lr_mult, handle.wd_mult = saved

    def set_param(self, handle: gluon.Parameter, trainable: bool, lr_mult: float, wd_mult: float) -> None:
        if not trainable:
            handle.grad_req = "null"  # Gluon drops the gradient buffer: no stale gradient is left
        elif handle.grad_req == "null":
            handle.grad_req = "write"
        handle.lr_mult = lr_mult
        handle.wd_mult = wd_mult

    # --- norm statistics ------------------------------------------------------------------
    def norm_stats_frozen(self, norm: Any) -> bool:
        if isinstance(norm, SymbolNorm):
            return norm._symbol().attr("use_global_stats") == "True"
        return bool(norm._kwargs["use_global_stats"])

    def set_norm_stats_frozen(self, norm: Any, frozen: bool) -> None:
        if isinstance(norm, SymbolNorm):
            norm._symbol()._set_attr(use_global_stats=str(bool(frozen)))
        else:
            norm._kwargs["use_global_stats"] = bool(frozen)

    def commit(self, model: gluon.Block) -> None:
        """Drop hybridized graphs so the next forward is traced with the new settings."""
        def clear(block: gluon.Block) -> None:
            if isinstance(block, gluon.HybridBlock):
                block._clear_cached_op()
            for child in block._children.values():
                clear(child)

        clear(model)

    # --- tensors and optimizers -----------------------------------------------------------
    def tensor_bytes(self, handle: gluon.Parameter) -> bytes | None:
        if handle._data is None:
            return None
        # MXNet 1.9.1's oneDNN build reorders a conv weight into its own layout in place,
        # asynchronously, after an inference-mode forward; asnumpy() does not wait for that
        # reorder and can return permuted bytes (the weight itself stays correct). Waiting
        # for all pending engine work first makes the read exact.
        mx.nd.waitall()
        return b"".join(d.asnumpy().tobytes() for d in handle.list_data())

    def read(self, handle: gluon.Parameter) -> Any:
        mx.nd.waitall()  # see tensor_bytes
        return handle.data().asnumpy().copy()

    def write(self, handle: gluon.Parameter, array: Any) -> None:
        handle.set_data(mx.nd.array(array, dtype=handle.dtype))

    def optimizer_handles(self, trainer: gluon.Trainer) -> list[Any]:
        return list(trainer._params)

    def build_optimizer(self, groups: Sequence[dict], name: Any, lr: float | None,
                        weight_decay: float, semantics: str = "torch", **options: Any) -> gluon.Trainer:
        params = [p for g in groups for p in g["params"]]
        trainer_options = {k: options.pop(k) for k in _TRAINER_OPTIONS if k in options}
        if not isinstance(name, str):
            raise SpecError(f"Gluon optimizers are named by string ('sgd', 'adam', 'adamw', ...), "
                            f"got {name!r}")
        opt = _GLUON_OPTIMIZERS[semantics].get(name.lower(), name.lower())
        if opt not in mx.optimizer.Optimizer.opt_registry:
            raise SpecError(f"unknown MXNet optimizer {name!r}; registered: "
                            f"{', '.join(sorted(mx.optimizer.Optimizer.opt_registry))}, adamw")
        optimizer_params = {"wd": weight_decay, **options}
        if lr is not None:
            optimizer_params["learning_rate"] = lr
        return gluon.Trainer(params, opt, optimizer_params, **trainer_options)

    def attach_schedule(self, trainer: gluon.Trainer, factor: Any) -> ScheduleAdapter:
        optimizer = trainer._optimizer
        base = optimizer.lr_scheduler.base_lr if optimizer.lr_scheduler else optimizer.lr
        optimizer.lr_scheduler = ScheduleAdapter(factor, base)
        return optimizer.lr_scheduler


def _rescaled(opt: mx.optimizer.Optimizer, grad: mx.nd.NDArray) -> mx.nd.NDArray:
    grad = grad * opt.rescale_grad  # 1/batch_size from trainer.step(batch_size)
    if opt.clip_gradient is not None:
        grad = mx.nd.clip(grad, -opt.clip_gradient, opt.clip_gradient)
    return grad


@mx.optimizer.register
class TorchSGD(mx.optimizer.Optimizer):
    """SGD with torch.optim.SGD's update rule, so runs match torch when the lr changes.

    torch: g += wd*w; buf = momentum*buf + (1-dampening)*g (buf = g at the first step);
    w -= lr*buf. MXNet's own SGD keeps lr inside the buffer (mom = momentum*mom - lr*g),
    which differs from the step after an lr change on. Scalars stay float64 here, while
    MXNet's fused update ops take lr, momentum and wd as float32 attributes.
    """

    def __init__(self, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov

    def create_state(self, index: int, weight: mx.nd.NDArray) -> Any:
        return mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype) if self.momentum else None

    def update(self, index: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray, state: Any) -> None:
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        grad = _rescaled(self, grad) + wd * weight
        if self.momentum:
            if self._index_update_count[index] == 1:
                state[:] = grad
            else:
                state[:] = self.momentum * state + (1 - self.dampening) * grad
            grad = grad + self.momentum * state if self.nesterov else state
        weight[:] = weight - lr * grad


class _TorchAdamRule(mx.optimizer.Optimizer):
    """Adam with torch's update rule: w -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps).

    MXNet's own Adam uses eps without the bias correction (m / (sqrt(v) + eps) scaled by
    sqrt(bc2)/bc1), which differs from torch while v is small.
    """

    decoupled = False

    def __init__(self, learning_rate: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon

    def create_state(self, index: int, weight: mx.nd.NDArray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        return (mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype),
                mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype))

    def update(self, index: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray, state: Any) -> None:
        self._update_count(index)
        t = self._index_update_count[index]
        lr, wd = self._get_lr(index), self._get_wd(index)
        grad = _rescaled(self, grad)
        if self.decoupled:
            weight[:] = weight * (1 - lr * wd)
        else:
            grad = grad + wd * weight
        mean, var = state
        mean[:] = self.beta1 * mean + (1 - self.beta1) * grad
        var[:] = self.beta2 * var + (1 - self.beta2) * grad * grad
        bc1, bc2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
        denom = mx.nd.sqrt(var) / bc2 ** 0.5 + self.epsilon
        weight[:] = weight - (lr / bc1) * mean / denom


@mx.optimizer.register
class TorchAdam(_TorchAdamRule):
    """torch.optim.Adam: weight decay added to the gradient (L2)."""


@mx.optimizer.register
class TorchAdamW(_TorchAdamRule):
    """torch.optim.AdamW: decoupled weight decay, w -= lr*wd*w before the Adam step.

    MXNet 1.9.1 has no AdamW optimizer, so this serves both semantics.
    """

    decoupled = True


# Optimizer names under each semantics: 'torch' follows torch's update rules in Gluon too.
_GLUON_OPTIMIZERS = {
    "torch": {"sgd": "torchsgd", "adam": "torchadam", "adamw": "torchadamw"},
    "native": {"adamw": "torchadamw"},
}


class ScheduleAdapter(mx.lr_scheduler.LRScheduler):
    """An MXNet lr scheduler computing lr from tunespec's framework-neutral schedule.

    MXNet calls it with the update count starting at 1; torch's LambdaLR uses 0 for the
    first step. Shifting by one gives both frameworks the same lr at every step.
    """

    def __init__(self, factor: Any, base_lr: float):
        super().__init__(base_lr=base_lr)
        self.factor = factor

    def __call__(self, num_update: int) -> float:
        return self.base_lr * self.factor(max(num_update - 1, 0))


def build_model(zoo: str, name: str, input_size: int | None = None) -> gluon.Block:
    """A GluonCV model built offline, initialised, with shapes inferred by one small forward."""
    gcv = import_gluoncv()
    factories = gcv.model_zoo.model_zoo._models
    if name.lower() not in factories:
        close = [n for n in factories if name.lower().split("_")[0] in n][:5]
        raise SpecError(f"GluonCV has no model {name!r}; similar: "
                        f"{', '.join(close) or 'see gluoncv.model_zoo'}")
    factory = factories[name.lower()]
    kwargs: dict[str, Any] = {"pretrained": False}
    params = inspect.signature(factory).parameters
    if "pretrained_base" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs["pretrained_base"] = False
    with warnings.catch_warnings():  # GluonCV's SymbolBlocks warn about untyped inputs
        warnings.simplefilter("ignore")
        try:
            net = factory(**kwargs)
        except TypeError:
            kwargs.pop("pretrained_base", None)
            net = factory(**kwargs)
    net.initialize()
    size = input_size or int((re.findall(r"_(\d{3})_", f"_{name}_") or ["224"])[0])
    with mx.autograd.pause():
        try:
            net(mx.nd.zeros((1, 3, size, size)))
        except mx.MXNetError:
            pass  # shapes stay deferred; the plan shows them as '?'
    return net


BACKEND = MXNetBackend()
