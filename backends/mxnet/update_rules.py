"""torch's update rules as MXNet optimizers in full precision (``semantics='portable-exact'``).

The default (``'torch'``) runs the same rules on MXNet's fused operators: see fused_rules."""

from __future__ import annotations

from typing import Any

import mxnet as mx

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

    MXNet 1.9.1 has no AdamW optimizer; its fused form (fused_rules) serves 'native' too.
    """

    decoupled = True


# Optimizer names under each semantics. 'portable' follows torch's update rules on MXNet's fused
# operators (fused_rules: float32 hyper-parameters, MXNet's speed); 'portable-exact' runs them here in
# full precision (float64 parity runs); 'native' keeps MXNet's own rules (MXNet 1.9.1 has no AdamW).
GLUON_OPTIMIZERS = {
    "portable": {"sgd": "fusedtorchsgd", "adam": "fusedtorchadam", "adamw": "fusedtorchadamw"},
    "portable-exact": {"sgd": "torchsgd", "adam": "torchadam", "adamw": "torchadamw"},
    "native": {"adamw": "fusedtorchadamw"},
}


class ScheduleAdapter(mx.lr_scheduler.LRScheduler):
    """An MXNet lr scheduler computing lr from tunespec's framework-neutral schedule.

    MXNet calls it with the update count starting at 1; torch's LambdaLR uses 0 for the
    first step. Shifting by one gives both frameworks the same lr at every step.
    """

    def __init__(self, factor: Any, base_lr: float):
        super().__init__(base_lr=base_lr)
        self.factor = factor
        # Parameter -> its lr_mult at step t, for parameters whose lr grows per step (a stage's
        # ramp): MXNet asks the scheduler for the lr before it reads the multipliers, so they are
        # set here, for the update being made.
        self.multipliers: dict[Any, Any] = {}

    def __call__(self, num_update: int) -> float:
        t = max(num_update - 1, 0)
        for param, mult_at in self.multipliers.items():
            param.lr_mult = mult_at(t)
        return self.base_lr * self.factor(t)

