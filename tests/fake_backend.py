"""A tiny in-memory 'framework' so the core can be tested without torch or mxnet.

It is a backend written outside the package tree: it sees the core only through the protocol
module (``tunespec.backend_api``) and joins through the public registry, like a third-party
backend would. It implements the whole required protocol plus the checkpoint-file, restaging and
graph-tracing capabilities; this module itself is its "framework" (``FACTS.framework``), so
dispatch finds it once it is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import tunespec
from tunespec.backend_api import (FrameworkFacts, GraphNode, Listing, ListingBuilder, LRGroup, LRState, LRTable,
                                  OptimizerExport)
from tunespec.planning.plan import Plan
from tunespec.recipe.spec import Spec

FACTS = FrameworkFacts(
    name="fake", framework=__name__, backend=f"{__name__}:BACKEND", extra="",
    model_type="a fake_backend.FakeLayer", optimizer_type="a fake optimizer",
    file_suffixes=(".fake",),
    weight_layouts={"default": ("out", "in", "spatial")},
)


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


@dataclass(frozen=True)
class FakeArray:
    """A tensor's values as the fake framework hands them out: one number, broadcast over a shape
    (numpy sees it as that array: run checkpoints store it)."""

    shape: tuple[int, ...]
    value: float
    dtype: Any = np.dtype("float64")

    def __array__(self, dtype: Any = None) -> np.ndarray:
        return np.full(self.shape, self.value, dtype=dtype or self.dtype)


class FakeOptimizer(list):
    """The fake optimizer: a list of groups (dicts with 'params', 'lr', ...), plus an lr factor."""

    def __init__(self, groups: Sequence[dict], name: Any, defaults: dict[str, Any]):
        super().__init__(groups)
        self.name, self.defaults = name, defaults
        self.factor: Callable[[int], float] | None = None
        self.steps = 0
        self.state: dict[Any, dict[str, np.ndarray]] = {}  # per parameter, as a real optimizer keeps it

    def lrs(self) -> list[float]:
        """Each group's lr at the current step, as the framework would use it."""
        scale = self.factor(self.steps) if self.factor else 1.0
        return [g["lr"] * scale for g in self]


@dataclass
class FakeLRScheduler:
    optimizer: FakeOptimizer


# The fake layer kinds as tunespec's layer kinds (what a real backend maps its classes onto).
LAYER_KINDS = {"conv": "conv", "linear": "linear", "norm": "batch_norm"}


class FakeBackend:
    name = "fake"
    facts = FACTS

    def __init__(self) -> None:
        self.commits = 0
        self.fail_on: str | None = None  # canonical leaf to fail on, to test rollback

    def owns(self, model: Any) -> bool:
        return isinstance(model, FakeLayer)

    def listing(self, model: FakeLayer) -> Listing:
        found = ListingBuilder(FACTS.leaf_spellings)

        def walk(layer: FakeLayer, path: tuple[str, ...], wrappers: frozenset[int]) -> None:
            found.layer(path, layer.kind, layer.kind == "norm", wrappers, LAYER_KINDS.get(layer.kind, "other"))
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

    def read(self, t: FakeTensor) -> FakeArray:
        return FakeArray(tuple(t.shape), t.value)

    def write(self, t: FakeTensor, array: Any) -> None:
        if isinstance(array, FakeArray):
            value = array.value
        elif isinstance(array, np.ndarray):  # one number broadcast: any element is it
            value = float(array.reshape(-1)[0]) if array.size else 0.0
        else:
            value = float(array)
        if self.fail_on == "write" and t.shape == (-1,):
            raise RuntimeError("write boom")
        t.value = value

    # --- optimizers --------------------------------------------------------------------------
    def optimizer_handles(self, optimizer: Sequence[Any]) -> list[Any]:
        if isinstance(optimizer, FakeOptimizer):
            return [p for g in optimizer for p in g["params"]]
        return list(optimizer)  # a plain list of handles, as plan.check takes it

    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, list)

    def optimizer_options(self, name: Any, semantics: str | None = None) -> frozenset[str] | None:
        return None  # the fake optimizer takes any option

    def build_optimizer(self, groups: Sequence[dict], name: Any, lr: float | None,
                        weight_decay: float, semantics: str | None = None, **options: Any) -> FakeOptimizer:
        defaults = {"lr": lr, "weight_decay": weight_decay, **options}
        return FakeOptimizer([dict(g, name=name, params=list(g["params"]), **options) for g in groups],
                             name, defaults)

    def optimizer_snapshot(self, optimizer: FakeOptimizer, lr_scheduler: Any) -> Any:
        return [(g, dict(g, params=list(g["params"]))) for g in optimizer], getattr(optimizer, "factor", None)

    def optimizer_rollback(self, optimizer: FakeOptimizer, lr_scheduler: Any, saved: Any) -> None:
        groups, factor = saved
        for group, content in groups:
            group.clear()
            group.update(content)
        optimizer[:] = [g for g, _ in groups]
        if isinstance(optimizer, FakeOptimizer):
            optimizer.factor = factor

    # --- learning rates ----------------------------------------------------------------------
    def lr_state(self, optimizer: FakeOptimizer, lr_scheduler: Any = None) -> LRState:
        groups = tuple(LRGroup(tuple(g["params"]), (), g.get("lr_mult", 1.0), g.get("wd_mult", 1.0),
                               g.get("lr_factor", 1.0), g.get("ramp"), g["lr"],
                               g["lr"] if optimizer.factor else None) for g in optimizer)
        return LRState(optimizer.defaults["lr"], optimizer.defaults.get("weight_decay"), optimizer.steps,
                       None, groups)

    # --- export / import -------------------------------------------------------------------
    def export_optimizer(self, optimizer: FakeOptimizer, lr_scheduler: Any, names: Mapping[Any, str],
                         host: bool = True) -> OptimizerExport:
        hyper, state = {}, {}
        for i, group in enumerate(optimizer):
            settings = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            for j, p in enumerate(group["params"]):
                hyper[names[p]] = dict(settings, group=i)
                if "param_names" in group:
                    hyper[names[p]]["param_name"] = group["param_names"][j]
                if p in optimizer.state:
                    state[names[p]] = {k: v.copy() if host else v for k, v in optimizer.state[p].items()}
        state[""] = {"steps": optimizer.steps, "defaults": dict(optimizer.defaults)}
        return OptimizerExport(str(optimizer.name), {}, hyper, state, frozenset({"lr", "param_name"}))

    def import_optimizer(self, optimizer: FakeOptimizer, lr_scheduler: Any, exported: OptimizerExport,
                         handles: Mapping[str, Any]) -> None:
        groups: dict[int, dict] = {}
        for name, h in exported.hyper.items():
            group = groups.setdefault(h["group"], dict({k: v for k, v in h.items() if k not in ("group", "param_name")},
                                                       params=[]))
            group["params"].append(handles[name])
            if "param_name" in h:
                group.setdefault("param_names", []).append(h["param_name"])
        optimizer[:] = [groups[i] for i in sorted(groups)]
        optimizer.state = {handles[n]: dict(s) for n, s in exported.state.items() if n}
        optimizer.steps = exported.state[""]["steps"]


    def install_lrs(self, optimizer: FakeOptimizer, table: LRTable, lr_scheduler: Any = None) -> Any:
        """Installs what the core computed; the fake's group lr is the initial lr (lrs() scales it)."""
        if lr_scheduler is None and table.factor is not None:
            optimizer.factor = table.factor
            lr_scheduler = FakeLRScheduler(optimizer)
        kept = len(optimizer)
        for group, new in zip(optimizer, table.groups[:kept], strict=bool(table.groups)):
            group["params"] = list(new.params)
        for new in table.groups[kept:]:
            optimizer.append({"params": list(new.params), "lr_mult": new.lr_mult, "wd_mult": new.wd_mult,
                              "lr_factor": new.lr_factor, "ramp": new.ramp})
        for group, new in zip(optimizer, table.groups, strict=bool(table.groups)):
            if new.initial_lr is not None:
                group["lr"] = new.initial_lr
            if new.weight_decay is not None:
                group["weight_decay"] = new.weight_decay
        return lr_scheduler

    # --- CheckpointFiles: a JSON file of {name: {"shape": [...], "value": x}} -----------------
    def read_checkpoint(self, path: str, allow_pickle: bool) -> dict[str, FakeArray]:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return {k: FakeArray(tuple(v["shape"]), float(v["value"])) for k, v in data.items()}

    def read_safetensors(self, path: str) -> dict[str, Any]:
        raise tunespec.SpecError("the fake framework has no safetensors reader")

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, FakeArray)

    def to_numpy(self, value: Any) -> Any:
        return value

    def load_file(self, model: FakeLayer, path: str, allow_pickle: bool = False) -> None:
        state = self.read_checkpoint(path, allow_pickle)
        for t in self.listing(model).tensors:
            self.write(t.handle, state[t.canonical])

    def save_file(self, model: FakeLayer, path: str) -> None:
        save_fake(path, {t.canonical: self.read(t.handle) for t in self.listing(model).tensors})

    # --- GraphTracing: a chain of the top-level children ----------------------------------------
    def trace_split(self, model: FakeLayer, split: str) -> tuple[list[GraphNode], Any]:
        nodes = [GraphNode("input", (), is_input=True)]
        for i, (name, child) in enumerate(model.children.items()):
            tensors = tuple(self._tensors(child))
            nodes.append(GraphNode(name, (i,), tensors, in_split=name == split))
        return nodes, model

    def cut_at(self, traced: FakeLayer, entry: int, prefix: frozenset[int]) -> tuple[Any, Any]:
        names = list(traced.children)
        front = [traced.children[n] for i, n in enumerate(names, 1) if i in prefix]
        back = [traced.children[n] for i, n in enumerate(names, 1) if i not in prefix]
        return (lambda x: ("front", len(front), x)), (lambda x: ("back", len(back), x))

    def run_frozen(self, prefix: Any, x: Any) -> Any:
        return prefix(x)

    def _tensors(self, layer: FakeLayer) -> list[FakeTensor]:
        out = [*layer.params.values(), *layer.stats.values()]
        for child in layer.children.values():
            out += self._tensors(child)
        return out


def save_fake(path: Any, state: dict[str, FakeArray]) -> None:
    """A fake checkpoint file (JSON)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: {"shape": list(v.shape), "value": v.value} for k, v in state.items()}, f)


BACKEND = FakeBackend()
tunespec.register_backend(FACTS)


def fake_plan(model: FakeLayer, spec: Any, backend: FakeBackend | None = None) -> Plan:
    backend = backend or FakeBackend()
    spec = spec if isinstance(spec, Spec) else Spec.from_dict(spec)
    return Plan.make(model, spec, backend)
