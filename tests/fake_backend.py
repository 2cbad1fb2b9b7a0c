"""A tiny in-memory 'framework' so the core can be tested without torch or mxnet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tunespec.listing import Listing, ListingBuilder
from tunespec.plan import Plan
from tunespec.spec import Spec


@dataclass(eq=False)
class FakeTensor:
    shape: tuple[int, ...]
    trainable: bool = True
    lr_mult: float = 1.0
    wd_mult: float = 1.0
    value: float = 0.0
    grad: float | None = None


@dataclass(eq=False)
class FakeLayer:
    kind: str  # 'conv', 'linear', 'norm', 'wrapper', 'container'
    params: dict[str, FakeTensor] = field(default_factory=dict)
    stats: dict[str, FakeTensor] = field(default_factory=dict)
    children: dict[str, "FakeLayer"] = field(default_factory=dict)
    stats_frozen: bool = False


def conv(cout: int, cin: int, bias: bool = True) -> FakeLayer:
    params = {"weight": FakeTensor((cout, cin, 3, 3))}
    if bias:
        params["bias"] = FakeTensor((cout,))
    return FakeLayer("conv", params)


def norm(c: int, affine: bool = True) -> FakeLayer:
    params = {"weight": FakeTensor((c,)), "bias": FakeTensor((c,))} if affine else {}
    return FakeLayer("norm", params, {"running_mean": FakeTensor((c,)), "running_var": FakeTensor((c,))})


def linear(out: int, inp: int) -> FakeLayer:
    return FakeLayer("linear", {"weight": FakeTensor((out, inp)), "bias": FakeTensor((out,))})


def small_net() -> FakeLayer:
    """stem.conv/bn, layer1.0.conv/bn, layer2.0.conv/bn, fc."""
    def block(cout: int, cin: int) -> FakeLayer:
        return FakeLayer("container", children={"conv": conv(cout, cin, bias=False), "bn": norm(cout)})

    return FakeLayer("container", children={
        "stem": block(4, 3),
        "layer1": FakeLayer("container", children={"0": block(8, 4)}),
        "layer2": FakeLayer("container", children={"0": block(8, 8)}),
        "fc": linear(10, 8),
    })


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.commits = 0
        self.fail_on: str | None = None  # canonical leaf to fail on, to test rollback

    def owns(self, model: Any) -> bool:
        return isinstance(model, FakeLayer)

    def listing(self, model: FakeLayer) -> Listing:
        found = ListingBuilder()

        def walk(layer: FakeLayer, path: tuple[str, ...], wrappers: frozenset[int]) -> None:
            found.layer(path, layer.kind, layer.kind == "norm", wrappers)
            for table, state in ((layer.params, False), (layer.stats, True)):
                for leaf, t in table.items():
                    found.add(t, leaf, native="_".join(path + (leaf,)), shape=t.shape, is_state=state,
                              trainable=t.trainable, lr_mult=t.lr_mult, wd_mult=t.wd_mult)
            if layer.kind == "norm":
                found.add_norm(layer, tuple(layer.params.values()), tuple(layer.stats.values()),
                               layer.stats_frozen)
            for name, child in layer.children.items():
                pos = frozenset({len(path)}) if layer.kind == "wrapper" else frozenset()
                walk(child, path + (name,), wrappers | pos)

        walk(model, (), frozenset())
        return found.build("fake.Net")

    def snapshot(self, t: FakeTensor) -> tuple:
        return t.trainable, t.lr_mult, t.wd_mult

    def restore(self, t: FakeTensor, saved: tuple, rollback: bool = False) -> None:
        t.trainable, t.lr_mult, t.wd_mult = saved

    def set_param(self, t: FakeTensor, trainable: bool, lr_mult: float, wd_mult: float) -> None:
        if self.fail_on is not None and t.shape == (-1,):
            raise RuntimeError("boom")
        t.trainable, t.lr_mult, t.wd_mult = trainable, lr_mult, wd_mult
        if not trainable:
            t.grad = None

    def norm_stats_frozen(self, layer: FakeLayer) -> bool:
        return layer.stats_frozen

    def set_norm_stats_frozen(self, layer: FakeLayer, frozen: bool, model: Any = None) -> None:
        if self.fail_on == "norm":
            raise RuntimeError("norm boom")
        layer.stats_frozen = frozen

    def commit(self, model: Any) -> None:
        self.commits += 1

    def tensor_bytes(self, t: FakeTensor) -> bytes:
        return repr(t.value).encode()

    def optimizer_handles(self, optimizer: Sequence[FakeTensor]) -> list[Any]:
        return list(optimizer)

    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, list)

    def optimizer_options(self, name: Any, semantics: str = "torch") -> frozenset[str] | None:
        return None  # the fake optimizer takes any option

    def build_optimizer(self, groups: Sequence[dict], name: Any, lr: float | None,
                        weight_decay: float, **options: Any) -> list[dict]:
        return [dict(g, name=name, **options) for g in groups]


def fake_plan(model: FakeLayer, spec: Any, backend: FakeBackend | None = None) -> Plan:
    backend = backend or FakeBackend()
    spec = spec if isinstance(spec, Spec) else Spec.from_dict(spec)
    return Plan(model, spec, backend, backend.listing(model))
