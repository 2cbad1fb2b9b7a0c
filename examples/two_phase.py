"""The seed's two-phase fine-tuning, driven by examples/two_phase.yaml, in PyTorch and MXNet Gluon.

1. Load "pretrained" weights: a 1000-class ResNet-18 checkpoint (random here: nothing is
   downloaded), backbone only, with tunespec.load; Gluon loads the same torch file by canonical names.
2. Re-initialise the new 4-class head (the recipe's init section).
3. Phase 1 trains the head on a frozen backbone; after epoch 3 the recipe's stage restores the best
   epoch so far and unfreezes '4+' at a tenth of the lr; every epoch is checkpointed atomically.
4. Resume from the last checkpoint into a fresh model and check it holds the same weights.

Run: python examples/two_phase.py [--backend torch|mxnet|both] [--epochs N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import tunespec

RECIPE = Path(__file__).with_name("two_phase.yaml")
SIZE, CLASSES, BATCH, STEPS = 32, 4, 16, 4


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with a bright square in the quadrant that is the class."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, 3, SIZE, SIZE)).astype("float32")
    y = rng.integers(0, CLASSES, n)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, :, r * 16 + 4:r * 16 + 12, c * 16 + 4:c * 16 + 12] += 2.0
    return x, y.astype("int64")


class Torch:
    def __init__(self) -> None:
        import torch
        import torchvision

        self.torch, self.tv = torch, torchvision

    def model(self, classes: int = CLASSES) -> object:
        return self.tv.models.resnet18(weights=None, num_classes=classes)

    def step(self, model, opt, x, y) -> None:
        model.train()
        out = model(self.torch.from_numpy(x))
        loss = self.torch.nn.functional.cross_entropy(out, self.torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def accuracy(self, model, x, y) -> float:
        model.eval()
        with self.torch.no_grad():
            return float((model(self.torch.from_numpy(x)).argmax(1).numpy() == y).mean())


class Gluon:
    def __init__(self) -> None:
        import mxnet as mx

        from tunespec.backends.mxnet import import_gluoncv

        self.mx, self.gcv = mx, import_gluoncv()

    def model(self, classes: int = CLASSES) -> object:
        net = self.gcv.model_zoo.get_model("resnet18_v1b", pretrained=False, classes=classes)
        net.initialize()
        net(self.mx.nd.zeros((1, 3, SIZE, SIZE)))  # shapes known before loading
        return net

    def step(self, model, trainer, x, y) -> None:
        mx = self.mx
        with mx.autograd.record():
            loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(model(mx.nd.array(x)), mx.nd.array(y)).sum()
        loss.backward()
        trainer.step(len(x))

    def accuracy(self, model, x, y) -> float:
        return float((model(self.mx.nd.array(x)).asnumpy().argmax(1) == y).mean())


def run(fw, pretrained: Path, out: Path, epochs: int) -> None:
    name = type(fw).__name__
    model = fw.model()
    report = tunespec.load(model, pretrained, select=r"(?!fc\.).*")  # backbone only
    print(f"[{name}] {str(report).splitlines()[0]}")
    tunespec.initialize(model, RECIPE)
    runner = tunespec.StageRunner(RECIPE, steps_per_epoch=STEPS)
    model, opt = runner.start(model)
    (x, y), (vx, vy) = make_data(BATCH * STEPS, 1), make_data(256, 2)
    ckpt = out / f"{name}.{'pt' if name == 'Torch' else 'params'}"
    for epoch in range(epochs):
        for i in range(STEPS):
            fw.step(model, opt, x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
            if name == "Torch":
                runner.lr_scheduler.step()
        acc = fw.accuracy(model, vx, vy)
        print(f"[{name}] epoch {epoch} (stage {runner.stage.name!r}, {len(runner.plan.trainable)} "
              f"trainable tensors): val acc {acc:.3f}")
        model, opt = runner.step(epoch, model, opt, metric=acc)
        tunespec.save_checkpoint(ckpt, model, opt, runner, epoch=epoch)
    runner.plan.verify().raise_if_changed()
    fresh = tunespec.StageRunner(RECIPE, steps_per_epoch=STEPS)
    resumed, _, meta = tunespec.resume(ckpt, fw.model(), fresh)
    same = tunespec.load(fw.model(), ckpt, key="model") if name == "Torch" else None
    print(f"[{name}] resumed at epoch {meta['epoch']} in stage {fresh.stage.name!r}; frozen tensors "
          f"unchanged: {fresh.plan.verify().ok}"
          + (f"; its weights load by key: {same.complete}" if same else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "mxnet", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        torch_fw = Torch()
        pretrained = out / "imagenet_r18.pt"  # stands in for downloaded ImageNet weights
        torch_fw.torch.manual_seed(0)
        torch_fw.torch.save(torch_fw.model(classes=1000).state_dict(), pretrained)
        if args.backend in ("torch", "both"):
            run(torch_fw, pretrained, out, args.epochs)
        if args.backend in ("mxnet", "both"):
            run(Gluon(), pretrained, out, args.epochs)


if __name__ == "__main__":
    main()
