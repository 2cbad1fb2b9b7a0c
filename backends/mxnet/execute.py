"""Executing a plan on a block: grad_req and multipliers, use_global_stats, tensor values.

Frozen BatchNorm statistics use the layer's own ``use_global_stats`` (for SymbolBlocks, the
attribute of the BatchNorm node), with cached graphs cleared so hybridized models pick the change up.
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
from mxnet import gluon

from .listing import SymbolNorm


class MXNetExecute:
    # --- trainability ---------------------------------------------------------------------
    def snapshot(self, handle: gluon.Parameter) -> tuple[str, float, float]:
        return handle.grad_req, handle.lr_mult, handle.wd_mult

    def restore(self, handle: gluon.Parameter, saved: tuple[str, float, float], rollback: bool = False) -> None:
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

    def set_norm_stats_frozen(self, norm: Any, frozen: bool, model: Any = None) -> None:
        """Gluon has no per-block mode (train or predict is chosen per forward by autograd), so the
        flag itself is the whole state: restore sets exactly the flag saved before apply."""
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

