"""The default Gluon optimizers (torch's rules on MXNet's fused operators) against MXNet's native
fused update, per optimizer: SGD with momentum, Adam, AdamW. GluonCV resnet50_v1b, full
fine-tuning, batch 4 at 96 px; each variant trains its own copy of the same weights.

The native baselines: MXNet's ``sgd`` (multi-tensor ``multi_sgd_mom_update``, 4 parameters per
call) and ``adam`` (``adam_update``); MXNet 1.9.1 registers no AdamW, so its baseline is the
minimal optimizer below on contrib ``adamw_update`` (what GluonNLP's AdamW calls). The exact
full-precision rules (``semantics='portable-exact'``) are timed too, as the figure the default had
before, without a target; a second native SGD copy gauges the noise of one ratio.
"""

from __future__ import annotations

import math
import statistics

from common import SPEC_FULL, Context, ratio, rounds, row, tag

FAMILY = "gluon_optimizer"
FRAMEWORKS = ("mxnet",)
SIZE, LR, WD = 96, 0.01, 1e-4
# (label, tunespec name, options, native baseline's name, lr): lr 1e-3 for the Adams, as usual
OPTIMIZERS = [("sgd+momentum", "sgd", {"momentum": 0.9}, "sgd", LR),
              ("adam", "adam", {}, "adam", 1e-3),
              ("adamw", "adamw", {}, "benchnativeadamw", 1e-3)]


def _register_native_adamw(mx) -> None:
    """MXNet's AdamW operator as an MXNet user writes it: MXNet's bias correction in lr."""
    if "benchnativeadamw" in mx.optimizer.Optimizer.opt_registry:
        return

    @mx.optimizer.register
    class BenchNativeAdamW(mx.optimizer.Optimizer):
        def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon

        def create_state(self, index, weight):
            return (mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype),
                    mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype))

        def update(self, index, weight, grad, state):
            self._update_count(index)
            t = self._index_update_count[index]
            lr = self._get_lr(index) * math.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
            if getattr(self, "_rescale", (None,))[0] != self.rescale_grad:  # made once, not every step
                self._rescale = (self.rescale_grad, mx.nd.full((1,), self.rescale_grad, ctx=weight.context))
            mean, var = state
            mx.nd.contrib.adamw_update(weight, grad, mean, var, self._rescale[1], out=weight, lr=lr,
                                       beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon,
                                       wd=self._get_wd(index), eta=1.0)


def rows(ctx: Context) -> list[dict]:
    import mxnet as mx

    import tunespec
    from steps import MXNetSteps

    a = MXNetSteps(ctx.threads)
    _register_native_adamw(mx)
    x, y = a.batch(SIZE)
    n = ctx.step_rounds * 3 // 2  # more rounds than a step family: ratios near 1 against a noisy gauge
    found = []
    for label, name, options, native, lr in OPTIMIZERS:
        steps = {}
        variants = [("default", "portable", name), ("native", "native", native), ("exact", "portable-exact", name)]
        if label == "sgd+momentum":  # how far two identical steps differ here: the noise gauge
            variants.append(("native again", "native", native))
        for variant, semantics, opt_name in variants:
            net = a.fresh()
            plan = tunespec.apply(net, SPEC_FULL)
            trainer = plan.optimizer(opt_name, lr=lr, weight_decay=WD, semantics=semantics, **options)
            net.hybridize()
            steps[variant] = a.step(net, trainer, x, y)
        t = rounds(steps, n)
        found += [row(f"gluon {label}, 96 px: default (torch rules, fused) step / native fused step",
                      ratio(t["default"], t["native"]), "x", 1.05),
                  row(f"gluon {label}, 96 px:   exact (portable-exact) step / native fused step",
                      ratio(t["exact"], t["native"]), "x")]
        if "native again" in t:
            found += [row("gluon   noise gauge: native step / native step on a second copy",
                          ratio(t["native again"], t["native"]), "x"),
                      row("gluon   step time, native SGD (full fine-tuning, 96 px)",
                          statistics.median(t["native"]), "s")]
    return tag(found, "mxnet", a.device)


if __name__ == "__main__":  # python benchmarks/gluon_optimizer.py: this family alone, in this process
    import json
    import warnings

    warnings.simplefilter("ignore")
    print(json.dumps(rows(Context(framework="mxnet")), indent=1))
