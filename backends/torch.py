"""PyTorch backend: lists an ``nn.Module``'s tensors and executes a plan on it.

Frozen BatchNorm statistics use a picklable forward pre-hook that puts the layer
in eval mode before each forward, so the layer stays frozen after ``model.train()``,
``copy.deepcopy``, pickling and ``torch.compile``, and ``state_dict`` keys never change.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from tunespec.errors import SpecError
from tunespec.listing import Listing, ListingBuilder, NormInfo, RawName

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
    for cls in type(module).__mro__:
        attr = _WRAPPERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if attr is not None:
            return attr
    return None


def _unwrap(model: nn.Module) -> nn.Module:
    while (attr := _wrapper_attr(model)) is not None:
        model = getattr(model, attr)
    return model


def _shape(t: torch.Tensor) -> tuple[int, ...] | None:
    if isinstance(t, nn.parameter.UninitializedTensorMixin):
        return None
    return tuple(t.shape)


class FrozenStats:
    """Forward pre-hook that keeps a norm layer in eval mode (uses, never updates, its statistics)."""

    def __init__(self, was_training: bool = True):
        self.was_training = was_training

    def __call__(self, module: nn.Module, args: Any) -> None:
        module.training = False


class TorchBackend:
    name = "torch"

    def owns(self, model: Any) -> bool:
        return isinstance(model, nn.Module)

    def load_file(self, model: nn.Module, path: str) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SpecError(f"{path}: not a torch state_dict loadable with weights_only=True ({exc})") from None
        model.load_state_dict(state)

    def save_file(self, model: nn.Module, path: str) -> None:
        torch.save(model.state_dict(), path)

    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, torch.optim.Optimizer)

    def listing(self, model: nn.Module) -> Listing:
        found = ListingBuilder()
        seen_modules: set[int] = set()

        def walk(module: nn.Module, segments: tuple[str, ...], wrappers: frozenset[int]) -> None:
            first_visit = id(module) not in seen_modules
            seen_modules.add(id(module))
            is_norm = isinstance(module, _NORMS)
            for kind, table in (("param", module._parameters), ("state", module._buffers)):
                for leaf, tensor in table.items():
                    if tensor is not None:
                        found.add(tensor, RawName(segments, leaf, wrappers),
                                  native=".".join(segments + (leaf,)), shape=_shape(tensor),
                                  layer_type=type(module).__name__, is_norm=is_norm,
                                  is_state=kind == "state",
                                  trainable=kind == "param" and bool(tensor.requires_grad))
            if first_visit and isinstance(module, _NormBase) and module.running_mean is not None:
                stats = tuple(b for b in (module.running_mean, module.running_var) if b is not None)
                affine = tuple(p for p in (module.weight, module.bias) if p is not None)
                found.add_norm(NormInfo(module, RawName(segments, "", wrappers), affine, stats,
                                        self.norm_stats_frozen(module), type(module).__name__))
            wrapped = _wrapper_attr(module)
            for name, child in module._modules.items():
                if child is not None:
                    pos = frozenset({len(segments)}) if name == wrapped else frozenset()
                    walk(child, segments + (name,), wrappers | pos)

        walk(model, (), frozenset())
        inner = type(_unwrap(model))
        return found.build(f"{inner.__module__}.{inner.__qualname__}")

    # --- trainability ---------------------------------------------------------------------
    def snapshot(self, handle: nn.Parameter) -> bool:
        return bool(handle.requires_grad)

    def restore(self, handle: nn.Parameter, saved: bool) -> None:
        handle.requires_grad_(saved)

    def set_param(self, handle: nn.Parameter, trainable: bool, lr_mult: float, wd_mult: float) -> None:
        # torch keeps multipliers in optimizer param groups, not on tensors.
        handle.requires_grad_(trainable)
        if not trainable:
            handle.grad = None

    # --- norm statistics ------------------------------------------------------------------
    def norm_stats_frozen(self, norm: nn.Module) -> bool:
        return any(isinstance(h, FrozenStats) for h in norm._forward_pre_hooks.values())

    def set_norm_stats_frozen(self, norm: nn.Module, frozen: bool) -> None:
        hooks = [(k, h) for k, h in norm._forward_pre_hooks.items() if isinstance(h, FrozenStats)]
        if frozen and not hooks:
            norm.register_forward_pre_hook(FrozenStats(norm.training))
            norm.training = False
        elif not frozen and hooks:
            for key, _hook in hooks:
                del norm._forward_pre_hooks[key]
            norm.training = hooks[0][1].was_training

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

    def attach_schedule(self, optimizer: torch.optim.Optimizer, factor: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizer_class(name: Any) -> type:
    if isinstance(name, type) and issubclass(name, torch.optim.Optimizer):
        return name
    if isinstance(name, str):
        table = {k.lower(): v for k, v in vars(torch.optim).items()
                 if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)}
        if name.lower() in table:
            return table[name.lower()]
        raise SpecError(f"unknown torch optimizer {name!r}; use a torch.optim class or one of "
                        f"{', '.join(sorted(table))}")
    raise SpecError(f"optimizer must be a name like 'sgd' or a torch.optim.Optimizer class, got {name!r}")


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
