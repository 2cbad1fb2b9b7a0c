"""torch's update rules on MXNet's fused update operators: the default Gluon optimizers.

The exact rules in :mod:`.update_rules` run several NDArray operations per parameter in full
precision; these run one fused operator per parameter (SGD: one per group of parameters, as MXNet's
own SGD) and reproduce torch up to MXNet's float32 attributes (lr, momentum, wd, eps, rounded to
float32 by the operators). Mapping, per parameter and step t (lr: this step's lr, bc1/bc2: torch
Adam's bias corrections ``1 - beta**t``):

* SGD with momentum. MXNet's ``sgd_mom_update`` keeps ``mom = -s * buf`` for torch's buffer ``buf``,
  where s is the lr of the step before; it computes ``mom = momentum*mom - lr*g; w += mom``. Passing
  ``momentum * lr / s`` as its momentum and ``lr * (1 - dampening)`` as its lr (``lr`` at t = 1,
  where torch's buffer is the gradient itself) gives ``mom = -lr * buf_t``: torch's step, and s
  becomes lr. The state is ``[mom, s]``; s travels with checkpoints. A step at lr 0 (warmup from 0)
  cannot keep ``buf`` inside ``mom = -0 * buf``: it updates the buffer at the old scale with
  NDArray operations and leaves the weight alone, as torch does. Nesterov has no fused form that
  matches torch (MXNet's ``nag_mom_update`` is another rule): with ``nesterov=True`` the exact
  rule runs.
* Adam: ``adam_update`` with lr ``lr*sqrt(bc2)/bc1`` and epsilon ``eps*sqrt(bc2)`` is torch's
  ``w -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)``. MXNet's operator clips the gradient after
  adding ``wd*w``, tunespec's rule before (torch has no clipping): with ``clip_gradient`` and a
  weight decay the exact rule runs for that parameter.
* AdamW: contrib ``adamw_update`` computes ``w -= eta*(lr*m/(sqrt(v)+eps) + wd*w)`` from the old w;
  with eta 1, lr and epsilon as for Adam and wd ``lr*wd`` it is torch's ``w *= 1 - lr*wd`` followed
  by the Adam step (which does not depend on w).

Gradients: every operator rescales first, clips, then (SGD, Adam) adds ``wd*w``, as the exact rules
do (``rescale_grad`` is ``1/batch_size`` from ``trainer.step``; torch has none).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import mxnet as mx
import numpy as np

from .update_rules import TorchAdam, TorchAdamW, TorchSGD, _rescaled


def _op_options(opt: mx.optimizer.Optimizer) -> dict[str, Any]:
    """Gradient scaling and clipping in the fused operators' terms (-1: no clipping)."""
    options = {"rescale_grad": opt.rescale_grad}
    if opt.clip_gradient is not None:
        options["clip_gradient"] = opt.clip_gradient
    return options


def _dense(*arrays: mx.nd.NDArray) -> bool:
    return all(a.stype == "default" for a in arrays)


def _listed(index: Any, weight: Any, grad: Any, state: Any) -> tuple[list, list, list, list]:
    """MXNet's Updater passes one parameter or, with ``aggregate_num``, lists of them."""
    if isinstance(index, (list, tuple)):
        return list(index), list(weight), list(grad), list(state)
    return [index], [weight], [grad], [state]


def _half_master(opt: mx.optimizer.Optimizer, weights: Sequence[mx.nd.NDArray]) -> bool:
    """float16 weights with multi_precision: MXNet's base class updates their float32 copies."""
    return bool(opt.multi_precision) and any(w.dtype == np.float16 for w in weights)


@mx.optimizer.register
class FusedTorchSGD(TorchSGD):
    """torch.optim.SGD's rule on MXNet's (multi-tensor) SGD operators; see the module docstring."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # Groups this many parameters per multi-tensor call, as MXNet's own SGD does (same variable).
        self.aggregate_num = int(os.getenv("MXNET_OPTIMIZER_AGGREGATION_SIZE", "4"))

    def create_state(self, index: int, weight: mx.nd.NDArray) -> Any:
        if not self.momentum or self.nesterov:
            return super().create_state(index, weight)
        return [mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype), 0.0]

    def update(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        self._fused_update(*_listed(index, weight, grad, state))

    def update_multi_precision(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        indices, weights, grads, states = _listed(index, weight, grad, state)
        if _half_master(self, weights):
            for item in zip(indices, weights, grads, states, strict=True):  # casts, then comes back to self.update
                mx.optimizer.Optimizer.update_multi_precision(self, *item)
            return
        self._fused_update(indices, weights, grads, states)

    def _fused_update(self, indices: list, weights: list, grads: list, states: list) -> None:
        if self.nesterov:
            for item in zip(indices, weights, grads, states, strict=True):
                TorchSGD.update(self, *item)
            return
        self._update_count(indices)
        lrs, wds = self._get_lrs(indices), self._get_wds(indices)
        runs: list[tuple[float, list[tuple]]] = []  # consecutive parameters sharing one momentum
        for index, w, g, state, lr, wd in zip(indices, weights, grads, states, lrs, wds, strict=True):
            if not self.momentum:
                momentum, op_lr = 0.0, lr
            elif lr == 0.0:
                self._accumulate(index, w, g, state, wd)
                continue
            elif self._index_update_count[index] == 1:
                momentum, op_lr = self.momentum, lr  # the buffer is zero: any momentum
            else:
                momentum, op_lr = self.momentum * lr / state[1], lr * (1 - self.dampening)
            if self.momentum:
                state[1] = lr
            momentum = float(np.float32(momentum))  # what the operator sees: equal ones share a call
            item = (w, g, state[0] if self.momentum else None, op_lr, wd)
            if runs and runs[-1][0] == momentum and len(runs[-1][1]) < max(self.aggregate_num, 1):
                runs[-1][1].append(item)
            else:
                runs.append((momentum, [item]))
        for momentum, items in runs:
            self._apply(momentum, items)

    def _apply(self, momentum: float, items: list[tuple]) -> None:
        options = _op_options(self)
        ws, gs, moms, lrs, wds = (list(x) for x in zip(*items, strict=True))
        if len(items) > 1 and _dense(*ws, *gs):
            if self.momentum:
                mx.nd.multi_sgd_mom_update(*[a for t in zip(ws, gs, moms, strict=True) for a in t], out=ws,
                                           num_weights=len(ws), lrs=lrs, wds=wds, momentum=momentum,
                                           **options)
            else:
                mx.nd.multi_sgd_update(*[a for t in zip(ws, gs, strict=True) for a in t], out=ws,
                                       num_weights=len(ws), lrs=lrs, wds=wds, **options)
            return
        for w, g, mom, lr, wd in items:
            if self.momentum:
                mx.nd.sgd_mom_update(w, g, mom, out=w, lr=lr, wd=wd, momentum=momentum,
                                     lazy_update=False, **options)
            else:
                mx.nd.sgd_update(w, g, out=w, lr=lr, wd=wd, lazy_update=False, **options)

    def _accumulate(self, index: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray, state: list,
                    wd: float) -> None:
        """A step at lr 0: torch updates its buffer and moves no weight. The buffer stays at the
        scale it has (1 before the first real step), so the next step's momentum rescales it."""
        mom, scale = state
        scale = scale or 1.0
        grad = _rescaled(self, grad) + wd * weight
        if self._index_update_count[index] == 1:
            mom[:] = -scale * grad
        else:
            mom[:] = self.momentum * mom - (scale * (1 - self.dampening)) * grad
        state[1] = scale


class _FusedAdamRule:
    """Bias corrections folded into the operators' lr and epsilon (see the module docstring)."""

    beta1: float
    beta2: float
    epsilon: float

    def _corrected(self, index: int) -> tuple[float, float, float]:
        """(lr, bias-corrected lr, bias-corrected epsilon) of this step; counts the step.

        The operators average with the betas rounded to float32 (0.999 becomes 0.999000013, and
        ``1 - beta2`` moves by 1.3e-5); the bias corrections use the same rounded betas, so the
        step is torch's with float32 betas (exactly the gradient's size at t = 1, as in torch);
        rounded averages under exact corrections would be off by half that from the first step."""
        self._update_count(index)
        t = self._index_update_count[index]
        beta1, beta2 = float(np.float32(self.beta1)), float(np.float32(self.beta2))
        root_bc2 = math.sqrt(1 - beta2 ** t)
        lr = self._get_lr(index)
        return lr, lr * root_bc2 / (1 - beta1 ** t), self.epsilon * root_bc2


@mx.optimizer.register
class FusedTorchAdam(_FusedAdamRule, TorchAdam):
    """torch.optim.Adam's rule on MXNet's ``adam_update``; see the module docstring."""

    def update(self, index: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray, state: Any) -> None:
        wd = self._get_wd(index)
        if (wd and self.clip_gradient is not None) or not _dense(weight, grad):
            TorchAdam.update(self, index, weight, grad, state)  # see the module docstring
            return
        _, lr, eps = self._corrected(index)
        mean, var = state
        mx.nd.adam_update(weight, grad, mean, var, out=weight, lr=lr, beta1=self.beta1, beta2=self.beta2,
                          epsilon=eps, wd=wd, lazy_update=False, **_op_options(self))


@mx.optimizer.register
class FusedTorchAdamW(_FusedAdamRule, TorchAdamW):
    """torch.optim.AdamW's rule on MXNet's contrib ``adamw_update``; see the module docstring."""

    def update(self, index: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray, state: Any) -> None:
        if not _dense(weight, grad):
            TorchAdamW.update(self, index, weight, grad, state)
            return
        wd = self._get_wd(index)
        lr, corrected_lr, eps = self._corrected(index)
        options = _op_options(self)
        mean, var = state
        mx.nd.contrib.adamw_update(weight, grad, mean, var, self._rescale_array(weight.context),
                                   out=weight, lr=corrected_lr, beta1=self.beta1, beta2=self.beta2,
                                   epsilon=eps, wd=lr * wd, eta=1.0,
                                   clip_gradient=options.get("clip_gradient", -1.0))

    def _rescale_array(self, ctx: mx.Context) -> mx.nd.NDArray:
        """The operator takes rescale_grad as an array (it skips the step if that is not finite):
        one per context, made when rescale_grad (1/batch_size) changes, not copied every step."""
        value = float(self.rescale_grad)
        cache = self.__dict__.get("_rescale_arrays")
        if cache is None or cache[0] != value:
            cache = self._rescale_arrays = (value, {})
        arrays = cache[1]
        if str(ctx) not in arrays:
            arrays[str(ctx)] = mx.nd.full((1,), value, ctx=ctx, dtype="float32")
        return arrays[str(ctx)]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # MXNet drops param_dict; the arrays stay with this process
        state.pop("_rescale_arrays", None)
        return state
