"""Executing a plan on a module: trainability, frozen norm statistics, tensor values.

Frozen BatchNorm statistics use a picklable forward pre-hook that puts the layer
in eval mode before each forward, so the layer stays frozen after ``model.train()``,
``copy.deepcopy``, pickling and ``torch.compile``, and ``state_dict`` keys never change.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import nn

from .listing import _shape

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



class TorchExecute:
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
    # Neither reads through .numpy() on the tensor itself: that marks its storage non-resizable
    # for good, and FSDP frees a gathered parameter's storage by resizing it to 0 (a stage change
    # under FSDP reads whole parameters inside summon_full_params). One copy each, as before.
    def tensor_bytes(self, handle: torch.Tensor) -> bytes | None:
        """A sharded (DTensor) tensor gives this rank's shard: each rank checksums what it holds,
        with no communication, so ``verify()`` on every rank covers every element once."""
        if _shape(handle) is None or handle.device.type == "meta":
            return None
        t = _local(handle).detach().cpu().contiguous()
        size = t.numel() * t.element_size()
        return ctypes.string_at(t.data_ptr(), size) if size else b""

    def read(self, handle: torch.Tensor, local: bool = False) -> Any:
        """The whole tensor; a sharded one is gathered (a collective: every rank reads the same
        tensors in the same order, as the core does), since best weights and rollbacks need the
        values with the tensor's shape. ``local``: this rank's part only (no communication).
        bfloat16 comes as float32 (numpy has none; the values are the same)."""
        t = handle.detach()
        if local:
            t = _local(t)
        elif _is_dtensor(t):
            t = t.full_tensor()
        t = t.cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t.clone()).numpy()

    def write(self, handle: torch.Tensor, array: Any, local: bool = False) -> None:
        """A whole array; a sharded tensor keeps this rank's slice of it (no communication).
        ``local``: the array is this rank's part already."""
        with torch.no_grad():
            value = torch.as_tensor(array).to(dtype=handle.dtype)
            if local:
                _local(handle).copy_(value)
            elif _is_dtensor(handle):
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(handle.device), handle.device_mesh, handle.placements,
                                          src_data_rank=None).to_local()
                handle.to_local().copy_(value)
            else:
                handle.copy_(value)


def _is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "device_mesh") and callable(getattr(t, "to_local", None))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if _is_dtensor(t) else t
