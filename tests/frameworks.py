"""One harness per framework, so behaviour and parity tests are written once and run over both.

Loss convention (documented in docs/porting.md): torch uses the batch-mean cross-entropy;
Gluon sums per-sample losses and calls ``trainer.step(batch_size)``, which rescales the
gradient by 1/batch_size: the same gradient.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

try:
    import numpy as np
except ModuleNotFoundError:  # the base install: numpy comes with torch or mxnet, and only their tests use it
    np = None

EXTRAS = {"torch": "torch", "torchvision": "torch", "mxnet": "mxnet", "gluoncv": "mxnet",
          "safetensors": "safetensors", "lightning": "lightning", "timm": "test",
          "transformers": "huggingface", "mmengine": "test"}


def _reason(module: str) -> str:
    return f"needs {module}: pip install 'tunespec[{EXTRAS[module.split('.')[0]]}]'"


def needs(module: str) -> Any:
    """Import and return ``module``, or skip naming the extra that installs it.

    Called in a test it skips that test; called at the top of a file it skips the whole file,
    so a base install (no framework) runs the core tests and skips the rest."""
    __tracebackhide__ = True  # report the skip at the caller's line, not here
    return pytest.importorskip(module, reason=_reason(module))


def needing(module: str) -> pytest.MarkDecorator:
    """``needs`` as a mark, for a test that must skip before it runs (a Hypothesis test would
    draw its examples first) or a parameter that needs a framework."""
    missing = importlib.util.find_spec(module.split(".")[0]) is None
    return pytest.mark.skipif(missing, reason=_reason(module))


class TorchHarness:
    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        from tunespec.backends.torch import BACKEND

        self.backend = BACKEND

    def small_cnn(self, dtype: str = "float64") -> Any:
        nn = self.torch.nn
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
        return net.to(getattr(self.torch, dtype))

    def resnet18(self, classes: int = 10, dtype: str = "float64") -> Any:
        import torchvision

        net = torchvision.models.resnet18(weights=None, num_classes=classes)
        return net.to(getattr(self.torch, dtype))

    def arrays(self, model: Any, include_state: bool = True) -> dict[str, np.ndarray]:
        return {t.canonical: t.handle.detach().cpu().numpy().copy()
                for t in self.backend.listing(model).tensors if include_state or not t.is_state}

    def load_arrays(self, model: Any, arrays: dict[str, np.ndarray]) -> None:
        with self.torch.no_grad():
            for t in self.backend.listing(model).tensors:
                if t.canonical in arrays:
                    t.handle.copy_(self.torch.from_numpy(arrays[t.canonical]))

    def forward(self, model: Any, x: np.ndarray, train: bool = False) -> np.ndarray:
        model.train(train)
        with self.torch.set_grad_enabled(train):
            return model(self.torch.from_numpy(x)).detach().numpy()

    def step(self, model: Any, opt: Any, x: np.ndarray, y: np.ndarray) -> float:
        model.train()
        out = model(self.torch.from_numpy(x))
        loss = self.torch.nn.functional.cross_entropy(out, self.torch.from_numpy(y).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def grads(self, model: Any) -> dict[str, np.ndarray | None]:
        return {t.canonical: None if t.handle.grad is None else t.handle.grad.numpy().copy()
                for t in self.backend.listing(model).params}


class MXNetHarness:
    name = "mxnet"

    def __init__(self) -> None:
        import mxnet

        self.mx = mxnet
        from tunespec.backends.mxnet import BACKEND, import_gluoncv

        self.backend = BACKEND
        self.gluoncv = import_gluoncv()

    def _ready(self, net: Any, dtype: str, size: int) -> Any:
        net.initialize(self.mx.init.Xavier())
        net(self.mx.nd.zeros((1, 3, size, size)))
        net.cast(dtype)
        return net

    def small_cnn(self, dtype: str = "float64") -> Any:
        nn = self.mx.gluon.nn
        net = nn.HybridSequential()
        net.add(nn.Conv2D(8, 3, padding=1, in_channels=3), nn.BatchNorm(in_channels=8),
                nn.Activation("relu"), nn.Conv2D(16, 3, padding=1, strides=2, in_channels=8),
                nn.BatchNorm(in_channels=16), nn.Activation("relu"), nn.GlobalAvgPool2D(),
                nn.Flatten(), nn.Dense(5, in_units=16))
        return self._ready(net, dtype, 8)

    def resnet18(self, classes: int = 10, dtype: str = "float64") -> Any:
        net = self.gluoncv.model_zoo.get_model("resnet18_v1b", pretrained=False, classes=classes)
        return self._ready(net, dtype, 32)

    def arrays(self, model: Any, include_state: bool = True) -> dict[str, np.ndarray]:
        self.mx.nd.waitall()  # see MXNetBackend.tensor_bytes: oneDNN's async in-place reorder
        return {t.canonical: t.handle.data().asnumpy().copy()
                for t in self.backend.listing(model).tensors if include_state or not t.is_state}

    def load_arrays(self, model: Any, arrays: dict[str, np.ndarray]) -> None:
        for t in self.backend.listing(model).tensors:
            if t.canonical in arrays:
                t.handle.set_data(self.mx.nd.array(arrays[t.canonical], dtype=t.handle.dtype))

    def forward(self, model: Any, x: np.ndarray, train: bool = False) -> np.ndarray:
        data = self.mx.nd.array(x, dtype=x.dtype)
        if not train:
            return model(data).asnumpy()
        with self.mx.autograd.record(train_mode=True):
            out = model(data)
        out.backward()  # MXNet's BatchNorm updates its running statistics in the backward pass
        return out.asnumpy()

    def step(self, model: Any, trainer: Any, x: np.ndarray, y: np.ndarray) -> float:
        mx = self.mx
        data, label = mx.nd.array(x, dtype=x.dtype), mx.nd.array(y, dtype=x.dtype)
        loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
        with mx.autograd.record():
            loss = loss_fn(model(data), label).sum()
        loss.backward()
        trainer.step(x.shape[0])
        return float(loss.asscalar()) / x.shape[0]

    def grads(self, model: Any) -> dict[str, np.ndarray | None]:
        return {t.canonical: None if t.handle.grad_req == "null" else t.handle.grad().asnumpy().copy()
                for t in self.backend.listing(model).params}


HARNESSES = {"torch": TorchHarness, "mxnet": MXNetHarness}


def batches(n: int, size: int, seed: int = 0, batch: int = 4, classes: int = 5) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 3, size, size)), rng.integers(0, classes, batch).astype(np.int64))
            for _ in range(n)]
