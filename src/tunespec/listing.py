"""What a backend reports about a model, and the canonical names the core derives from it.

Backends only describe (paths, wrapper segments, layer kinds, current settings);
the core turns that into one framework-neutral name per tensor:

* wrapper segments (DDP ``module``, ``torch.compile``'s ``_orig_mod``, FSDP) are dropped;
* norm layers' Gluon spellings ``gamma``/``beta``/``moving_*`` become ``weight``/``bias``/``running_*``;
so ``layer1.0.bn1.weight`` names the same tensor in torchvision and GluonCV.
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NamedTuple

NORM_LEAF_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                   "moving_var": "running_var"}
_FLAT_NORM_LEAF = re.compile(r"(.*_)(gamma|beta|moving_mean|moving_var)$")


class RawName(NamedTuple):
    """A tensor's structural path as the backend found it (a tuple: cheap to make 100,000 times)."""

    segments: tuple[str, ...]  # child names from the root to the owning layer
    leaf: str  # the attribute name inside that layer
    wrappers: frozenset[int] = frozenset()  # positions in segments that are wrapper attributes


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic collector while a listing or plan is built.

    Listing a model allocates a few objects per tensor in one burst; the collector counts
    allocations and would run full collections over the whole heap (the model included) in the
    middle of it, which cost more than the listing itself on a 10,000-tensor model. Nothing
    built here forms reference cycles, so plain reference counting frees it all.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def canonical_name(raw: RawName, is_norm: bool) -> str:
    """The name rules match on: wrappers stripped, norm leaves spelled as in torch."""
    if not raw.wrappers and not is_norm:  # the common case, kept fast for huge models
        return ".".join(raw.segments + (raw.leaf,))
    parts = list(raw.segments)
    for i in sorted(raw.wrappers, reverse=True):
        del parts[i]
    leaf = raw.leaf
    if is_norm:
        if leaf in NORM_LEAF_NAMES:
            leaf = NORM_LEAF_NAMES[leaf]
        else:  # flat names inside Gluon SymbolBlocks: ..._batchnorm0_gamma
            m = _FLAT_NORM_LEAF.match(leaf)
            if m:
                leaf = m.group(1) + NORM_LEAF_NAMES[m.group(2)]
    return ".".join(parts + [leaf])


def module_of(name: str) -> str:
    """The module path of a canonical tensor name ('' for a top-level tensor)."""
    return name.rpartition(".")[0]


@dataclass(slots=True)
class TensorInfo:
    """One distinct tensor (parameter or state) of the model, as a backend found it."""

    handle: Any  # the framework's parameter / buffer object (identity matters)
    names: tuple[RawName, ...]  # every alias; the first is the primary name
    native: str  # the framework's own name (torch dotted path, Gluon prefixed name)
    shape: tuple[int, ...] | None  # Gluon deferred dims are 0; None when unknown
    layer_type: str  # class of the owning layer, e.g. 'Conv2d', 'BatchNorm'
    is_norm: bool = False  # belongs to a normalisation layer
    is_state: bool = False  # buffers / non-differentiable (running stats, anchors)
    trainable: bool = True  # current settings, to flag what a plan changes
    lr_mult: float = 1.0
    wd_mult: float = 1.0
    canonical: str = ""  # derived from names[0] when not given (ListingBuilder gives it)
    aliases: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        if not self.canonical:
            self.canonical = canonical_name(self.names[0], self.is_norm)

    def add_alias(self, raw: RawName) -> None:
        """Another path to this same tensor (tied weights, shared Gluon parameters)."""
        self.names += (raw,)
        alias = canonical_name(raw, self.is_norm)
        if alias != self.canonical and alias not in self.aliases:
            self.aliases += (alias,)

    @property
    def ndim(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def numel(self) -> int | None:
        if self.shape is None or any(d == 0 for d in self.shape):
            return None
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class NormInfo:
    """A normalisation layer with running statistics whose updates can be frozen."""

    handle: Any  # what the backend needs to switch its statistics
    path: RawName  # leaf '' ; the layer's own structural path
    affine: tuple[Any, ...]  # handles of its affine parameters (may be empty)
    stats: tuple[Any, ...]  # handles of its running statistics
    stats_frozen: bool  # current state
    layer_type: str = "BatchNorm"
    name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.name = canonical_name(self.path, False).rstrip(".")


@dataclass
class Listing:
    """Everything a plan needs to know about a model."""

    model_type: str  # 'package.module.Class', for model cards
    tensors: list[TensorInfo]
    norms: list[NormInfo]
    base_types: tuple[str, ...] = ()  # its base classes, nearest first: subclasses share cards

    @property
    def params(self) -> list[TensorInfo]:
        return [t for t in self.tensors if not t.is_state]

    @property
    def state(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.is_state]


class ListingBuilder:
    """Collects what a backend finds while walking a model; a tensor met again is an alias."""

    def __init__(self) -> None:
        self.tensors: list[TensorInfo] = []
        self.norms: list[NormInfo] = []
        self._seen: dict[int, TensorInfo] = {}
        self._prefix: tuple[tuple[str, ...], str] = ((), "")  # last segments and their dotted prefix

    def knows(self, handle: Any) -> bool:
        return id(handle) in self._seen

    def unknown(self, named: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """The (name, handle) pairs not recorded yet, in order (one pass, for huge models)."""
        seen = self._seen
        return [(name, h) for name, h in named if id(h) not in seen]

    def add(self, handle: Any, raw: RawName, native: str, shape: tuple[int, ...] | None, layer_type: str,
            is_norm: bool = False, is_state: bool = False, trainable: bool = True, lr_mult: float = 1.0,
            wd_mult: float = 1.0) -> None:
        """Record a tensor under ``raw`` (the other arguments are :class:`TensorInfo`'s fields)."""
        key = id(handle)
        known = self._seen.get(key)
        if known is not None:
            known.add_alias(raw)
            return
        if raw.wrappers or is_norm:
            canonical = canonical_name(raw, is_norm)
        else:  # the common case, with the layer's dotted path built once per layer
            segments = raw.segments
            if segments is not self._prefix[0]:
                self._prefix = (segments, ".".join(segments) + "." if segments else "")
            canonical = self._prefix[1] + raw.leaf
        info = TensorInfo(handle, (raw,), native, shape, layer_type, is_norm, is_state, trainable,
                          lr_mult, wd_mult, canonical)
        self._seen[key] = info
        self.tensors.append(info)

    def add_norm(self, norm: NormInfo) -> None:
        self.norms.append(norm)

    def build(self, model_type: str, base_types: tuple[str, ...] = ()) -> Listing:
        return Listing(model_type, self.tensors, self.norms, base_types)


def class_names(cls: type) -> tuple[str, ...]:
    """'module.Class' of a class and of its bases, nearest first (for model cards)."""
    return tuple(f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__ if c is not object)
