"""Fine-tune a ResNet-18 with one recipe, in PyTorch and in MXNet Gluon.

1. "Pretrain" a ResNet-18 on synthetic task A (a bright square at one of 4 places) and save it.
2. Reload it for task B (a coloured cross at 4 other places) with a fresh classifier.
3. Apply examples/resnet_finetune.yaml (layer4 + fc train, fc at 10x lr, everything before
   frozen with its BatchNorm statistics), build the optimizer / Trainer from it, fine-tune.
4. Report accuracy before and after, and verify the frozen tensors are bit-identical.

Nothing is downloaded: models are built with no pretrained weights, data is generated.
Run: python examples/finetune_demo.py [--backend torch|mxnet|both] [--steps N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import tunespec

RECIPE = Path(__file__).with_name("resnet_finetune.yaml")
SIZE, CLASSES, BATCH = 32, 4, 16
LR = 0.02  # base learning rate, pretraining and fine-tuning


def make_task(task: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; the class says where the pattern sits (A: a square, B: a cross, new labels)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, 3, SIZE, SIZE)).astype("float32")
    y = rng.integers(0, CLASSES, n)
    spots = [(4, 4), (4, 20), (20, 4), (20, 20)] if task == "A" else [(20, 20), (4, 4), (20, 4), (4, 20)]
    for i, label in enumerate(y):
        r, c = spots[label]
        if task == "A":
            x[i, :, r:r + 8, c:c + 8] += 2.0
        else:
            x[i, :, r + 3:r + 5, c:c + 8] += 2.5
            x[i, :, r:r + 8, c + 3:c + 5] += 2.5
    return x, y.astype("int64")


def batches(x: np.ndarray, y: np.ndarray, steps: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x), BATCH)
        yield x[idx], y[idx]


class TorchRun:
    name = "torch"

    def __init__(self) -> None:
        import torch
        import torchvision

        torch.manual_seed(0)
        self.torch, self.tv = torch, torchvision

    def model(self):
        return self.tv.models.resnet18(weights=None, num_classes=CLASSES)

    def train(self, model, opt, data) -> None:
        torch = self.torch
        model.train()
        for x, y in data:
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def accuracy(self, model, x, y) -> float:
        model.eval()
        with self.torch.no_grad():
            return float((model(self.torch.from_numpy(x)).argmax(1).numpy() == y).mean())

    def save(self, model, path: Path) -> None:
        self.torch.save(model.state_dict(), path)

    def reload_with_new_head(self, path: Path):
        model = self.model()
        state = self.torch.load(path, weights_only=True)
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
        return model


class MXNetRun:
    name = "mxnet"

    def __init__(self) -> None:
        import mxnet as mx

        from tunespec.backends.mxnet import import_gluoncv

        mx.random.seed(0)
        self.mx, self.gcv = mx, import_gluoncv()

    def model(self):
        net = self.gcv.model_zoo.get_model("resnet18_v1b", pretrained=False, classes=CLASSES)
        net.initialize(self.mx.init.Xavier())
        net(self.mx.nd.zeros((1, 3, SIZE, SIZE)))  # shapes known, so verify() checks every tensor
        return net

    def train(self, model, trainer, data) -> None:
        mx = self.mx
        loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
        for x, y in data:
            with mx.autograd.record():
                loss = loss_fn(model(mx.nd.array(x)), mx.nd.array(y)).sum()
            loss.backward()
            trainer.step(len(x))

    def accuracy(self, model, x, y) -> float:
        return float((model(self.mx.nd.array(x)).argmax(axis=1).asnumpy() == y).mean())

    def save(self, model, path: Path) -> None:
        model.save_parameters(str(path))

    def reload_with_new_head(self, path: Path):
        model = self.model()
        model(self.mx.nd.zeros((1, 3, SIZE, SIZE)))
        model.load_parameters(str(path))
        model.fc.initialize(self.mx.init.Xavier(), force_reinit=True)
        return model


def run(backend, steps: int, show_plan: bool) -> dict:
    start = time.perf_counter()
    xa, ya = make_task("A", 2048, seed=1)
    xb, yb = make_task("B", 512, seed=2)
    xt, yt = make_task("B", 512, seed=3)
    pre = backend.model()
    # Pretraining trains everything: the whole-model spec makes that explicit too.
    opt = tunespec.optimizer(pre, {"train": [".*"]}, "sgd", lr=LR, momentum=0.9, weight_decay=1e-4)
    backend.train(pre, opt, batches(xa, ya, steps, seed=4))
    pre_acc = backend.accuracy(pre, *make_task("A", 512, seed=5))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pretrained.bin"
        backend.save(pre, path)
        model = backend.reload_with_new_head(path)
    plan = tunespec.plan(model, RECIPE)
    if show_plan:
        print(plan.table(full=False))
    before = backend.accuracy(model, xt, yt)
    opt = plan.optimizer("sgd", lr=LR, momentum=0.9, weight_decay=5e-4)
    plan.check(opt)
    backend.train(model, opt, batches(xb, yb, steps, seed=6))
    after = backend.accuracy(model, xt, yt)
    report = plan.verify()
    s = plan.summary(lr=LR)
    return {"backend": backend.name, "pretrain_acc_A": pre_acc, "before": before, "after": after,
            "trainable": s["trainable_tensors"], "frozen": s["frozen_tensors"],
            "frozen_bn": s["norm_stats_frozen"], "verify": str(report), "ok": report.ok,
            "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "mxnet", "both"], default="both")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    names = ["torch", "mxnet"] if args.backend == "both" else [args.backend]
    results = []
    for i, name in enumerate(names):
        backend = TorchRun() if name == "torch" else MXNetRun()
        print(f"\n== {name}: pretrain on task A, fine-tune on task B with {RECIPE.name}")
        results.append(run(backend, args.steps, show_plan=i == 0))
    print()
    for r in results:
        print(f"{r['backend']:6s} task A acc {r['pretrain_acc_A']:.2f} | task B acc before {r['before']:.2f} "
              f"-> after {r['after']:.2f} | {r['trainable']} trainable / {r['frozen']} frozen tensors, "
              f"{r['frozen_bn']} BN frozen | {r['seconds']:.0f}s")
        print(f"       {r['verify']}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
