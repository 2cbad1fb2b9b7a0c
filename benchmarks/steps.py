"""Training steps on ResNet-50 (torchvision resnet50 / GluonCV resnet50_v1b), per framework:

- overhead: a step with tunespec's optimizer / Trainer, BN hooks and frozen parameters versus the
  same step written by hand (torch: requires_grad + param groups + eval() on frozen BN layers;
  Gluon: grad_req + use_global_stats + Trainer with lr_mult / wd_mult);
- payoff of freezing: layer4+fc and fc-only fine-tuning against full fine-tuning and against the
  lower bound (forward of the whole network without gradients plus forward, backward and update
  of the trained part alone).

``TorchSteps`` and ``MXNetSteps`` make each framework's calls; the cached-prefix, memory and
detector families use them too (``adapter``).
"""

from __future__ import annotations

import statistics

from common import BATCH, LR, SIZE, SPEC_FC, SPEC_FULL, SPEC_L4, WD, Context, ratio, rounds, row, tag

FAMILY = "steps"
FRAMEWORKS = ("torch", "mxnet")


def adapter(ctx: Context) -> TorchSteps | MXNetSteps:
    """The calls of the framework this worker is for."""
    return (TorchSteps if ctx.framework == "torch" else MXNetSteps)(ctx.threads)


def rows(ctx: Context) -> list[dict]:
    """Overhead, payoff and step-time rows for ``ctx.framework``."""
    import tunespec

    a = adapter(ctx)
    n = ctx.step_rounds
    x, y = a.batch(SIZE)
    model, _, opt = a.tunespec_model(SPEC_FULL)
    main = {"full": a.step(model, opt, x, y)}
    for part, spec, split in (("l4", SPEC_L4, "layer4"), ("fc", SPEC_FC, "fc")):
        model, plan, opt = a.tunespec_model(spec)
        cut = tunespec.cache_frozen(model, plan, split)
        main[part] = a.step(model, opt, x, y)
        main[f"{part}_fwd"] = a.forward(model, x)
        main[f"{part}_head"] = a.step(cut.head, opt, cut.features(x), y)
    t = rounds(main, n)
    over = overhead(a, x, y, 2 * n)
    fw = a.name
    found = [row(f"{fw}: overhead, tunespec step / hand-written step (layer4+fc)",
                 ratio(over["tunespec"], over["hand"]), "x", 1.02),
             row(f"{fw}:   noise gauge: hand-written / hand-written set up again",
                 ratio(over["again"], over["hand"]), "x")]
    for part, label in (("l4", "layer4+fc"), ("fc", "fc only")):
        bound = [f + h for f, h in zip(t[f"{part}_fwd"], t[f"{part}_head"], strict=True)]
        found += [row(f"{fw}: {label} step, speed-up over full fine-tuning", ratio(t["full"], t[part]), "x"),
                  row(f"{fw}: {label} step / lower bound (no-grad forward + trained part)",
                      ratio(t[part], bound), "x", 1.10)]
    found += [row(f"{fw}: step time, {name}", statistics.median(t[key]), "s")
              for key, name in (("full", "full fine-tuning"), ("l4", "layer4+fc"), ("fc", "fc only"))]
    return tag(found, fw, a.device)


def overhead(a: TorchSteps | MXNetSteps, x, y, n: int) -> dict[str, list[float]]:
    """tunespec's setup and the hand-written one in turns on one model instance, each with its own
    optimizer, so that differences between instances (memory layout) do not enter the ratio."""
    model = a.fresh()
    plan = a.plan(model, SPEC_L4)
    plan.apply()
    ts_opt = a.optimizer(plan)
    plan.restore()
    hand_opt = a.hand_optimizer(model)

    def to_hand() -> None:
        if plan.applied:
            plan.restore()
        a.hand_freeze(model)

    def to_tunespec() -> None:
        a.hand_unfreeze(model)
        plan.apply()

    return rounds({"tunespec": a.step(model, ts_opt, x, y), "hand": a.step(model, hand_opt, x, y),
                   "again": a.step(model, hand_opt, x, y)}, n,
                  setups={"tunespec": to_tunespec, "hand": to_hand, "again": to_hand})


class TorchSteps:
    """torch calls for the step families."""

    name = "torch"

    def __init__(self, threads: int) -> None:
        import torch
        import torchvision

        self.torch, self.nn = torch, torch.nn
        torch.set_num_threads(threads)
        self.dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.cuda.get_device_name() if self.dev == "cuda" else f"CPU, {threads} thread(s)"
        self.sync = torch.cuda.synchronize if self.dev == "cuda" else (lambda: None)
        torch.manual_seed(0)
        self.proto = torchvision.models.resnet50(weights=None).to(self.dev)
        self.ce = torch.nn.CrossEntropyLoss()

    def batch(self, size: int):
        return (self.torch.randn(BATCH, 3, size, size, device=self.dev),
                self.torch.randint(0, 1000, (BATCH,), device=self.dev))

    def fresh(self):
        import copy

        return copy.deepcopy(self.proto).train()

    def tunespec_model(self, spec):
        import tunespec

        model = self.fresh()
        plan = tunespec.apply(model, spec)
        return model, plan, plan.optimizer("sgd", lr=LR, momentum=0.9, weight_decay=WD)

    def plan(self, model, spec):
        import tunespec

        return tunespec.plan(model, spec)

    def optimizer(self, plan):
        return plan.optimizer("sgd", lr=LR, momentum=0.9, weight_decay=WD)

    def hand_freeze(self, model) -> None:
        """What one writes without tunespec: requires_grad by name, frozen BN layers in eval()."""
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("layer4.", "fc.")))
        for name, m in model.named_modules():
            if isinstance(m, self.nn.BatchNorm2d) and not name.startswith("layer4."):
                m.eval()

    def hand_unfreeze(self, model) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()

    def hand_optimizer(self, model):
        """Param groups by hand: fc at 10x the lr, no weight decay on 1-D tensors."""
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in model.named_parameters():
            if name.startswith(("layer4.", "fc.")):
                groups.setdefault((name.startswith("fc."), p.ndim == 1), []).append(p)
        return self.torch.optim.SGD(
            [{"params": ps, "lr": LR * (10 if fc else 1), "weight_decay": 0 if flat else WD}
             for (fc, flat), ps in groups.items()], lr=LR, momentum=0.9)

    def step(self, model, opt, inputs, labels):
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            self.ce(model(inputs), labels).backward()
            opt.step()
            self.sync()
        return run

    def forward(self, model, inputs):
        def run() -> None:
            with self.torch.no_grad():
                model(inputs)
            self.sync()
        return run

    def adam_bytes(self, spec, x, y) -> tuple[int, int]:
        import tunespec

        model = self.fresh()
        plan = tunespec.apply(model, spec)
        opt = plan.optimizer("adam", lr=1e-3)
        for _ in range(2):
            self.step(model, opt, x, y)()

        def held(params) -> int:
            grads = sum(p.grad.nbytes for p in params if p.grad is not None)
            return grads + sum(v.nbytes for p in params for v in opt.state.get(p, {}).values()
                               if self.torch.is_tensor(v))

        return held([d.tensor.handle for d in plan.frozen]), held([d.tensor.handle for d in plan.trainable])


class MXNetSteps:
    """MXNet Gluon calls for the step families (models hybridized, MXNet's native SGD/Adam)."""

    name = "mxnet"

    def __init__(self, threads: int) -> None:
        import mxnet as mx

        from tunespec.backends.mxnet import import_gluoncv

        self.mx, self.gluon = mx, mx.gluon
        self.gcv = import_gluoncv()
        self.device = f"CPU, {threads} thread(s) (MXNet {mx.__version__}, oneDNN)"
        mx.random.seed(0)
        self.ce = mx.gluon.loss.SoftmaxCrossEntropyLoss()
        self.proto = None

    def batch(self, size: int):
        return (self.mx.nd.random.normal(shape=(BATCH, 3, size, size)),
                self.mx.nd.array([i % 1000 for i in range(BATCH)]))

    def fresh(self):
        net = self.gcv.model_zoo.get_model("resnet50_v1b", pretrained=False)
        net.initialize(self.mx.init.Xavier())
        net(self.mx.nd.zeros((1, 3, SIZE, SIZE)))
        params = net._collect_params_with_prefix()
        if self.proto is None:
            self.proto = {k: v.data().copy() for k, v in params.items()}
        for k, v in params.items():
            v.set_data(self.proto[k])
        return net

    def tunespec_model(self, spec):
        import tunespec

        net = self.fresh()
        plan = tunespec.apply(net, spec)
        trainer = plan.optimizer("sgd", lr=LR, momentum=0.9, weight_decay=WD, semantics="native")
        net.hybridize()
        return net, plan, trainer

    def plan(self, net, spec):
        import tunespec

        net.hybridize()
        return tunespec.plan(net, spec)

    def optimizer(self, plan):
        return plan.optimizer("sgd", lr=LR, momentum=0.9, weight_decay=WD, semantics="native")

    def _trained(self, net) -> tuple[set[int], set[int]]:
        fc = {id(p) for p in net.fc.collect_params().values()}
        return fc, fc | {id(p) for p in net.layer4.collect_params().values()}

    def _frozen_bn(self, net) -> list:
        found, todo = [], [net]
        while todo:
            block = todo.pop()
            if block is not net.layer4:
                found += [block] if isinstance(block, self.gluon.nn.BatchNorm) else []
                todo += list(block._children.values())
        return found

    def hand_freeze(self, net) -> None:
        """Without tunespec: grad_req, lr_mult / wd_mult, use_global_stats on frozen BN layers."""
        fc, trained = self._trained(net)
        for p in net.collect_params().values():
            if p.grad_req == "null":
                continue
            if id(p) not in trained:
                p.grad_req = "null"
            else:
                p.lr_mult = 10 if id(p) in fc else 1
                p.wd_mult = 0 if len(p.shape) == 1 else 1
        for bn in self._frozen_bn(net):
            bn._kwargs["use_global_stats"] = True
        net.hybridize()  # drops the cached graphs

    def hand_unfreeze(self, net) -> None:
        for p in net.collect_params().values():
            if p._differentiable and not p.name.endswith(("running_mean", "running_var")):
                p.grad_req, p.lr_mult, p.wd_mult = "write", 1.0, 1.0
        for bn in self._frozen_bn(net):
            bn._kwargs["use_global_stats"] = False
        net.hybridize()

    def hand_optimizer(self, net):
        _, trained = self._trained(net)
        keep = [p for p in net.collect_params().values() if id(p) in trained and p._differentiable
                and not p.name.endswith(("running_mean", "running_var"))]
        return self.gluon.Trainer(keep, "sgd", {"learning_rate": LR, "momentum": 0.9, "wd": WD})

    def step(self, net, trainer, inputs, labels):
        mx = self.mx

        def run() -> None:
            with mx.autograd.record():
                loss = self.ce(net(inputs), labels)
            loss.backward()
            trainer.step(BATCH)
            mx.nd.waitall()
        return run

    def forward(self, net, inputs):
        def run() -> None:
            with self.mx.autograd.train_mode():
                net(inputs)
            self.mx.nd.waitall()
        return run

    def adam_bytes(self, spec, x, y) -> tuple[int, int]:
        import tunespec

        net = self.fresh()
        plan = tunespec.apply(net, spec)
        trainer = plan.optimizer("adam", lr=1e-3, semantics="native")
        net.hybridize()
        for _ in range(2):
            self.step(net, trainer, x, y)()
        index = {id(p): i for i, p in enumerate(trainer._params)}
        states = trainer._updaters[0].states

        def held(params) -> int:
            total = 0
            for p in params:
                arrays = list(p._grad or [])
                state = states.get(index.get(id(p)))
                if state is not None:
                    arrays += list(state) if isinstance(state, (tuple, list)) else [state]
                total += sum(a.size * a.dtype(0).itemsize for a in arrays)
            return total

        return held([d.tensor.handle for d in plan.frozen]), held([d.tensor.handle for d in plan.trainable])
