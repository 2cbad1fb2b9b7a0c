"""Listing an ``nn.Module``: every parameter and buffer, norm layers, wrappers seen through."""

from __future__ import annotations


import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from tunespec.backend_api import Listing, ListingBuilder, class_names

from .facts import FACTS
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
_NO_GRAD_DTYPES = frozenset(d for d in vars(torch).values()
                            if isinstance(d, torch.dtype) and not (d.is_floating_point or d.is_complex))
# torch classes -> tunespec's layer kinds; the first base that matches wins (instance norms are
# _NormBase subclasses too, so they come before batch norms).
_LAYER_KINDS: tuple[tuple[type, str], ...] = (
    (_ConvNd, "conv"), (nn.Linear, "linear"), (nn.Embedding, "embedding"), (nn.EmbeddingBag, "embedding"),
    (_InstanceNorm, "instance_norm"), (_BatchNorm, "batch_norm"), (nn.LayerNorm, "layer_norm"),
    (nn.GroupNorm, "group_norm"), (nn.LocalResponseNorm, "local_response_norm"),
    (nn.CrossMapLRN2d, "local_response_norm"),
) + (((nn.RMSNorm, "rms_norm"),) if hasattr(nn, "RMSNorm") else ())
_KINDS: dict[type, tuple[bool, bool, str | None, str]] = {}


def _module_kind(cls: type) -> tuple[bool, bool, str | None, str]:
    """(is a norm layer, has running statistics, wrapped-model attribute, layer kind), per class."""
    kind = _KINDS.get(cls)
    if kind is None:
        attr = next((_WRAPPERS[k] for k in (f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__)
                     if k in _WRAPPERS), None)
        layer_kind = next((name for base, name in _LAYER_KINDS if issubclass(cls, base)), "other")
        kind = _KINDS[cls] = (issubclass(cls, _NORMS), issubclass(cls, _NormBase), attr, layer_kind)
    return kind


def _conv_kind(module: nn.Module) -> str:
    """'depthwise_conv' when groups == in_channels > 1; 'deferred_conv' while a lazy grouped
    convolution has no input channels yet."""
    groups, channels = module.groups, module.in_channels
    if groups <= 1:
        return "conv"
    if not channels:
        return "deferred_conv"
    return "depthwise_conv" if channels == groups else "conv"


class TorchListing:
    def listing(self, model: nn.Module) -> Listing:
        found = ListingBuilder(FACTS.leaf_spellings)
        add, layer = found.add, found.layer  # bound once: called per tensor on 100,000-tensor models
        seen_modules: set[int] = set()
        # An explicit stack (children pushed in reverse) lists in the same pre-order as recursion
        # without a self-referencing closure, whose reference cycle only the GC could free.
        stack: list[tuple[nn.Module, tuple[str, ...], frozenset[int]]] = [(model, (), frozenset())]
        while stack:
            module, path, wrappers = stack.pop()
            first_visit = id(module) not in seen_modules
            seen_modules.add(id(module))
            is_norm, has_stats, wrapped, kind = _module_kind(type(module))
            layer(path, type(module).__name__, is_norm, wrappers,
                  _conv_kind(module) if kind == "conv" else kind)
            for leaf, tensor in module._parameters.items():
                if tensor is not None:
                    shape = tensor.shape if type(tensor) in _PLAIN_TENSORS else _shape(tensor)
                    # an integer or bool parameter cannot require a gradient: state, never trained
                    add(tensor, leaf, None, shape, tensor.dtype in _NO_GRAD_DTYPES, tensor.requires_grad)
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
        root = _unwrap(model)
        types = class_names(type(root))
        return found.build(types[0], types[1:], root)

