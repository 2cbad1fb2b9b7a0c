"""tunespec benchmarks: print a table of measured figures against their targets, plus JSON.

Every ratio is measured side by side: the variants it compares run in turns, one step each per
round, and the figure is the median over rounds of the per-round ratio, so load from other
processes on a shared machine mostly cancels. Absolute times are medians over the same rounds.

1. overhead: a training step with tunespec's optimizer / Trainer, BN hooks and frozen parameters
   versus the same step written by hand (torch: requires_grad + param groups + eval() on frozen
   BN layers; Gluon: grad_req + use_global_stats + Trainer with lr_mult / wd_mult);
2. payoff of freezing on ResNet-50 (torchvision resnet50 / GluonCV resnet50_v1b): layer4+fc and
   fc-only fine-tuning against full fine-tuning and against the lower bound (forward of the whole
   network without gradients plus forward, backward and update of the trained part alone);
3. memory: gradient and Adam-state bytes held for frozen parameters; peak process memory (peak
   RSS, or peak CUDA memory) of full versus layer4+fc fine-tuning, each in a fresh process;
4. planning cost on synthetic mixture-of-experts models (10,000 and 100,000 tensors, 100 rules,
   the framework's own listing included), with a plain re.fullmatch loop as a speed reference;
5. import cost of tunespec;
6. tunespec.cache_frozen: a step of epochs 2..N (head on cached features) against the uncached
   frozen step, at 224 px (where layer4 is about a fifth of the forward pass) and at 112 px;
7. one GluonCV detector (SSD, MobileNet 0.25): overhead, and heads-only against full fine-tuning.

Each framework runs in its own fresh process (MXNet's oneDNN dislikes many nets in one process),
with one compute thread by default (--threads). torch uses CUDA when available; PyPI's MXNet
1.9.1 is CPU-only.

Run: python benchmarks/run.py [--quick] [--json out.json] [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings


def timed(fn) -> float:
    """Seconds one call takes. As in timeit, garbage left by earlier calls is collected before the
    clock starts, and the result is freed after it stops (a plan is kept, not freed, by its user)."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def median_time(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def torch_moe(tensors: int):
    from torch import nn

    experts = 64
    blocks = tensors // (2 * experts)
    return nn.ModuleDict({"blocks": nn.ModuleList(
        nn.ModuleDict({"experts": nn.ModuleList(nn.Linear(2, 2) for _ in range(experts))})
        for _ in range(blocks))}), blocks


def gluon_moe(tensors: int):
    from mxnet import gluon

    experts = 64
    blocks = tensors // (2 * experts)
    root = gluon.nn.HybridSequential()
    for _ in range(blocks):
        block = gluon.nn.HybridSequential()
        for _ in range(experts):
            block.add(gluon.nn.Dense(2, in_units=2))
        root.add(block)
    return root, blocks


def planning_cost(repeats: int) -> list[dict]:
    """tunespec.plan on synthetic MoE models, each repeat side by side with the naive matcher the
    issue calibrates its targets on (re.fullmatch of every rule on every name: 0.13 s for 10,000
    names and 1.5 s for 100,000 there), so a loaded machine shows in both. Medians of warm calls:
    two untimed calls come first (the first, cold one is in the JSON as first_call_s)."""
    import re

    import tunespec

    rows = []
    targets = {10_000: (0.05, 0.13), 100_000: (0.5, 1.5)}  # target, the naive-loop time
    for framework, build in (("torch", torch_moe), ("mxnet", gluon_moe)):
        try:
            __import__(framework)
        except ImportError:
            continue
        for size, (target, reference) in targets.items():
            model, blocks = build(size)
            if framework == "mxnet":  # Gluon names: root.0.3.weight
                spec = {"freeze": [r"0\..*"],
                        "rules": [{"match": rf"{b % blocks}\.{e % 64}\..*", "lr_mult": 0.5 + e / 100}
                                  for b, e in zip(range(99), range(99), strict=True)]}
            else:
                spec = {"freeze": [r"blocks\.0\..*"],
                        "rules": [{"match": rf"blocks\.{b % blocks}\.experts\.{e % 64}\..*",
                                   "lr_mult": 0.5 + e / 100}
                                  for b, e in zip(range(99), range(99), strict=True)]}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                first = timed(lambda m=model, s=spec: tunespec.plan(m, s))  # cold: allocator arenas
                timed(lambda m=model, s=spec: tunespec.plan(m, s))
                names = [d.name for d in tunespec.plan(model, spec).decisions]
                regexes = [re.compile(r) for r in spec["freeze"] + [r["match"] for r in spec["rules"]]]

                def naive(names=names, regexes=regexes) -> None:
                    for regex in regexes:
                        for name in names:
                            regex.fullmatch(name)

                pairs = [(timed(lambda m=model, s=spec: tunespec.plan(m, s)), timed(naive))
                         for _ in range(repeats)]
            plan_s, naive_s = statistics.median(p for p, _ in pairs), statistics.median(n for _, n in pairs)
            rows += [row(f"plan, {size:,} tensors, 100 rules ({framework})", plan_s, "s", target,
                         first_call_s=first),
                     row(f"  gauge: naive fullmatch loop, same names (issue: {reference} s)", naive_s, "s"),
                     row("  plan at the issue's machine speed (plan x issue gauge / this gauge)",
                         plan_s * reference / naive_s, "s", target)]
    return rows


def import_cost(repeats: int) -> list[dict]:
    def run(code: str) -> float:
        return median_time(lambda: subprocess.run([sys.executable, "-c", code], check=True), repeats)

    base, ours = run("pass"), run("import tunespec")
    return [row("import tunespec, beyond python startup", ours - base, "s", 0.15)]


# --- step benchmarks -----------------------------------------------------------------------------
BATCH, SIZE, LARGE, LR, WD = 4, 112, 224, 0.01, 1e-4  # LARGE: where layer4 is ~1/5 of the forward
SPEC_FULL = {"wd_mult": {"@bias": 0, "@norm": 0}}
SPEC_L4 = {"freeze": [".*"], "train": [r"layer4\..*", r"fc\..*"], "lr_mult": {r"fc\..*": 10},
           "wd_mult": {"@bias": 0, "@norm": 0}}
SPEC_FC = {"freeze": [".*"], "train": [r"fc\..*"], "lr_mult": {r"fc\..*": 10}, "wd_mult": {"@bias": 0}}


def row(figure: str, value: float, unit: str, target: float | None = None, cmp: str = "<=",
        **extra: object) -> dict:
    ok = None if target is None else (value <= target if cmp == "<=" else value >= target)
    return {"figure": figure, "value": value, "unit": unit, "target": target, "cmp": cmp, "ok": ok, **extra}


def rounds(variants: dict, n: int, warmup: int = 2, setups: dict | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant, one call of each per round, order alternating per round.
    With ``setups``, each variant's setup and one untimed call come before its timed call."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + n):
        order = list(variants.items())
        for name, fn in (order if r % 2 else order[::-1]):
            if setups:
                setups[name]()
                fn()
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def step_benchmarks(a: "TorchSteps | MXNetSteps", quick: bool) -> list[dict]:
    """Overhead, payoff, cache and frozen-memory rows for one framework (``a`` does its calls)."""
    import tunespec

    n = 3 if quick else 10
    x, y = a.batch(SIZE)
    xl, yl = a.batch(LARGE)
    model, _, opt = a.tunespec_model(SPEC_FULL)
    main = {"full": a.step(model, opt, x, y)}
    cache: dict = {}
    for part, spec, split in (("l4", SPEC_L4, "layer4"), ("fc", SPEC_FC, "fc")):
        model, plan, opt = a.tunespec_model(spec)
        cut = tunespec.cache_frozen(model, plan, split)
        main[part] = a.step(model, opt, x, y)
        main[f"{part}_fwd"] = a.forward(model, x)
        main[f"{part}_head"] = a.step(cut.head, opt, cut.features(x), y)
        cache[part] = a.step(model, opt, xl, yl)
        cache[f"{part}_head"] = a.step(cut.head, opt, cut.features(xl), yl)
        if part == "l4":
            cache["fwd"] = a.forward(model, xl)
            cache["prefix"] = a.forward(cut.features, xl)
    t = rounds(main, n)
    tc = rounds(cache, max(2, n - 4))
    over = overhead(a, x, y, 2 * n)
    fw = a.name
    rows = [row(f"{fw}: overhead, tunespec step / hand-written step (layer4+fc)",
                ratio(over["tunespec"], over["hand"]), "x", 1.02),
            row(f"{fw}:   noise gauge: hand-written / hand-written set up again",
                ratio(over["again"], over["hand"]), "x")]
    for part, label in (("l4", "layer4+fc"), ("fc", "fc only")):
        bound = [f + h for f, h in zip(t[f"{part}_fwd"], t[f"{part}_head"], strict=True)]
        rows += [row(f"{fw}: {label} step, speed-up over full fine-tuning", ratio(t["full"], t[part]), "x"),
                 row(f"{fw}: {label} step / lower bound (no-grad forward + trained part)",
                     ratio(t[part], bound), "x", 1.10)]
    rows += [row(f"{fw}: step time, {name}", statistics.median(t[key]), "s")
             for key, name in (("full", "full fine-tuning"), ("l4", "layer4+fc"), ("fc", "fc only"))]
    rows.append(row(f"{fw}: layer4+fc share of the forward pass at {LARGE} px",
                    1 - statistics.median(tc["prefix"]) / statistics.median(tc["fwd"]), "x"))
    for part, label, target in (("l4", "layer4+fc", 2.0), ("fc", "fc only", 10.0)):
        rows += [row(f"{fw}: cache_frozen, epochs 2..N speed-up ({label}, {LARGE} px)",
                     ratio(tc[part], tc[f"{part}_head"]), "x", target, ">="),
                 row(f"{fw}: cache_frozen, epochs 2..N speed-up ({label}, {SIZE} px)",
                     ratio(t[part], t[f"{part}_head"]), "x")]
    frozen, trained = a.adam_bytes(SPEC_L4, x, y)
    rows += [row(f"{fw}: gradient + Adam state bytes held for frozen parameters", frozen, "B", 0),
             row(f"{fw}: (control) the same for trained parameters", trained, "B")]
    if hasattr(a, "detector_rows"):
        rows += a.detector_rows(n)
    for r in rows:
        r.update(framework=fw, device=a.device)
    return rows


def overhead(a: "TorchSteps | MXNetSteps", x, y, n: int) -> dict[str, list[float]]:
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
    """torch calls for step_benchmarks."""

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
    """MXNet Gluon calls for step_benchmarks (models hybridized, MXNet's native SGD/Adam)."""

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

    def detector_rows(self, n: int) -> list[dict]:
        """GluonCV SSD (MobileNet 0.25, 300 px, 3 classes) with GluonCV's SSD loss: heads-only
        fine-tuning by tunespec against the same by hand, and against full fine-tuning. The heads
        read six feature maps, so there is no single cut: no cached prefix and no lower bound."""
        import numpy as np

        import tunespec

        mx, gluon = self.mx, self.gluon
        size, classes = 300, 3

        def fresh():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = self.gcv.model_zoo.get_model("ssd_300_mobilenet0.25_voc", pretrained=False,
                                                   pretrained_base=False)
                net.initialize()
                net.reset_class([f"c{i}" for i in range(classes)])
                with mx.autograd.train_mode():
                    net(mx.nd.zeros((1, 3, size, size)))
            params = net._collect_params_with_prefix()
            if not hasattr(self, "ssd_proto"):
                self.ssd_proto = {k: v.data().copy() for k, v in params.items()}
            for k, v in params.items():
                v.set_data(self.ssd_proto[k])
            return net

        rng = np.random.default_rng(0)
        x = mx.nd.array(rng.standard_normal((BATCH, 3, size, size)))
        with mx.autograd.train_mode():
            anchors = fresh()(x)[2].shape[1]
        cls_t = mx.nd.array(np.where(rng.random((BATCH, anchors)) < 0.02,
                                     rng.integers(1, classes + 1, (BATCH, anchors)), 0))
        box_t = mx.nd.array(rng.standard_normal((BATCH, anchors, 4)))
        multibox = self.gcv.loss.SSDMultiBoxLoss()

        def step(net, trainer):
            def run() -> None:
                with mx.autograd.record():
                    cls_p, box_p, _ = net(x)
                    total, _, _ = multibox(cls_p, box_p, cls_t, box_t)
                mx.autograd.backward(total)
                trainer.step(BATCH)
                mx.nd.waitall()
            return run

        heads = {"freeze": [r"features\..*"], "lr_mult": {r"(class|box)_predictors\..*": 10},
                 "wd_mult": {"@bias": 0, "@norm": 0}}

        def with_tunespec(spec):
            net = fresh()
            trainer = tunespec.optimizer(net, spec, "sgd", lr=LR, momentum=0.9, weight_decay=WD,
                                         semantics="native")
            net.hybridize()
            return step(net, trainer)

        def by_hand():
            """grad_req on the feature extractor, use_global_stats on its BatchNorm graph nodes."""
            net = fresh()
            trained = {id(p) for b in (net.class_predictors, net.box_predictors)
                       for p in b.collect_params().values()}
            keep = []
            for p in net.collect_params().values():
                if id(p) not in trained:
                    p.grad_req = "null"
                elif p.grad_req != "null":
                    p.lr_mult, p.wd_mult = 10, 0 if len(p.shape) == 1 else 1
                    keep.append(p)
            graph = net.features._cached_graph[1]
            internals = graph.get_internals()
            for node in json.loads(graph.tojson())["nodes"]:
                if node["op"] == "BatchNorm":
                    internals[node["name"] + "_output"]._set_attr(use_global_stats="True")
            net.features._clear_cached_op()
            net.hybridize()
            return step(net, gluon.Trainer(keep, "sgd", {"learning_rate": LR, "momentum": 0.9, "wd": WD}))

        t = rounds({"tunespec": with_tunespec(heads), "hand": by_hand(), "full": with_tunespec(
            {"wd_mult": {"@bias": 0, "@norm": 0}})}, 4 * n)  # short steps: more rounds
        name = "mxnet: SSD mobilenet0.25 300px"
        return [row(f"{name}, overhead, tunespec / hand-written (heads only)",
                    ratio(t["tunespec"], t["hand"]), "x", 1.02),
                row(f"{name}, heads-only step, speed-up over full fine-tuning",
                    ratio(t["full"], t["tunespec"]), "x"),
                row(f"{name}, step time, heads only", statistics.median(t["tunespec"]), "s")]


def _proc_status(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))


def peak_worker(fw: str, variant: str, threads: int) -> list[dict]:
    """Memory that three Adam steps of full or layer4+fc fine-tuning take in a fresh process: the
    peak during training above the memory held just before it (model built, plan applied).
    CPU: Linux's VmHWM, reset before the first step; CUDA: torch's peak allocation."""
    spec = SPEC_FULL if variant == "full" else SPEC_L4
    cuda = False
    if fw == "torch":
        import torch
        import torchvision

        import tunespec

        torch.set_num_threads(threads)
        cuda = torch.cuda.is_available()
        dev = "cuda" if cuda else "cpu"
        model = torchvision.models.resnet50(weights=None).to(dev).train()
        opt = tunespec.optimizer(model, spec, "adam", lr=1e-3)
        x, y = torch.randn(BATCH, 3, SIZE, SIZE, device=dev), torch.randint(0, 1000, (BATCH,), device=dev)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    else:
        import mxnet as mx

        import tunespec
        from tunespec.backends.mxnet import import_gluoncv

        net = import_gluoncv().model_zoo.get_model("resnet50_v1b", pretrained=False)
        net.initialize(mx.init.Xavier())
        x, y = mx.nd.random.normal(shape=(BATCH, 3, SIZE, SIZE)), mx.nd.zeros((BATCH,))
        net(x)
        trainer = tunespec.optimizer(net, spec, "adam", lr=1e-3, semantics="native")
        net.hybridize()
        mx.nd.waitall()

        def step() -> None:
            with mx.autograd.record():
                loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)
            loss.backward()
            trainer.step(BATCH)
            mx.nd.waitall()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current RSS
            fh.write("5")
    for _ in range(3):
        step()
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_status("VmHWM")
    return [{"peak": peak, "training": peak - before,
             "kind": "CUDA memory" if cuda else "RSS"}]


def peak_rows(child: list[str], threads: int) -> list[dict]:
    rows = []
    for fw in ("torch", "mxnet"):
        peaks = {v: in_subprocess(["--peak", fw, v, *child], threads)[0] for v in ("full", "l4")}
        kind = peaks["full"]["kind"]
        rows += [row(f"{fw}: peak {kind}, full fine-tuning", peaks["full"]["peak"] / 2**20, "MiB",
                     framework=fw),
                 row(f"{fw}: peak {kind}, layer4+fc", peaks["l4"]["peak"] / 2**20, "MiB", framework=fw),
                 row(f"{fw}: {kind} taken by training (peak - before), full",
                     peaks["full"]["training"] / 2**20, "MiB", framework=fw),
                 row(f"{fw}: {kind} taken by training, layer4+fc / full",
                     peaks["l4"]["training"] / peaks["full"]["training"], "x", 1.0, framework=fw)]
    return rows


def in_subprocess(args: list[str], threads: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value:.3f}{unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the planning and import timings")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer rounds and repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="compute threads per framework (default 1: on shared cores, OpenMP threads "
                             "spin-waiting for each other make multi-thread timings follow others' load)")
    parser.add_argument("--worker", choices=("torch", "mxnet"), help=argparse.SUPPRESS)
    parser.add_argument("--peak", nargs=2, metavar=("FRAMEWORK", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.worker:  # a child process: print its rows as one JSON line
        steps = TorchSteps if args.worker == "torch" else MXNetSteps
        print(json.dumps(step_benchmarks(steps(args.threads), args.quick)))
        return 0
    if args.peak:
        print(json.dumps(peak_worker(*args.peak, threads=args.threads)))
        return 0
    repeats = 2 if args.quick else args.repeats
    started = time.time()
    load = open("/proc/loadavg").read().split()[:3] if sys.platform == "linux" else []
    rows = import_cost(repeats) + planning_cost(repeats)
    child = ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    for fw in ("torch", "mxnet"):
        rows += in_subprocess(["--worker", fw, *child], args.threads)
    rows += peak_rows(child, args.threads)
    devices = sorted({r["device"] for r in rows if "device" in r})
    width = max(len(r["figure"]) for r in rows)
    end_load = open("/proc/loadavg").read().split()[:3] if sys.platform == "linux" else []
    print(f"devices: {'; '.join(devices)}. ResNet-50, batch {BATCH}, {SIZE} px ({LARGE} px where noted), "
          f"{args.threads} thread(s) per framework; load average {' '.join(load)} at start, "
          f"{' '.join(end_load)} at end; {time.time() - started:.0f} s in all")
    print(f"{'figure':{width}}  {'value':>12}  {'target':>12}  ok")
    for r in rows:
        target = "" if r["target"] is None else f"{r['cmp']} {fmt(r['target'], r['unit'])}"
        ok = "" if r["ok"] is None else "yes" if r["ok"] else "MISS"
        print(f"{r['figure']:{width}}  {fmt(r['value'], r['unit']):>12}  {target:>12}  {ok}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"devices": devices, "threads": args.threads, "load_average": [load, end_load],
                       "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
