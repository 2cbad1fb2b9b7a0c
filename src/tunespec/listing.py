"""What a backend reports about a model, and the canonical names the core derives from it.

Backends only describe (paths, wrapper segments, layer kinds, current settings);
the core turns that into one framework-neutral name per tensor:

* wrapper segments (DDP ``module``, ``torch.compile``'s ``_orig_mod``, FSDP) are dropped;
* norm layers' Gluon spellings ``gamma``/``beta``/``moving_*`` become ``weight``/``bias``/``running_*``;
so ``layer1.0.bn1.weight`` names the same tensor in torchvision and GluonCV.

A listing is a column store (one list per field): mixture-of-experts models have 100,000
tensors, and an object per tensor made listing them cost more than the framework's own walk.
:class:`TensorInfo` views are built only when something asks for them.
"""

from __future__ import annotations

import gc
import itertools
import operator
import os
import re
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, Sequence



@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic collector while a listing or plan is built.

    Listing a model allocates small objects (shape tuples) in one burst; the collector counts
    allocations and would run collections over the whole heap (the model included) in the
    middle of it. Nothing built here forms reference cycles, so reference counting frees it all.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def norm_speller(spellings: Mapping[str, str]) -> Callable[[str], str]:
    """A function spelling a norm layer's tensor name canonically, from a backend's native
    spellings (``{'gamma': 'weight'}``: also inside flat names, 'bn0_gamma' -> 'bn0_weight';
    every registered backend's: :func:`tunespec.framework_facts.leaf_spellings`)."""
    table = dict(spellings)
    if not table:
        return lambda leaf: leaf
    flat = re.compile(r"(.*_)(" + "|".join(map(re.escape, sorted(table, key=len, reverse=True))) + r")$")

    def spell(leaf: str) -> str:
        if leaf in table:
            return table[leaf]
        m = flat.match(leaf)
        return m.group(1) + table[m.group(2)] if m else leaf

    return spell


def norm_leaf(leaf: str, spellings: Mapping[str, str]) -> str:
    """``leaf`` spelled canonically (see :func:`norm_speller`)."""
    return norm_speller(spellings)(leaf)


def flat_prefix_length(names: Sequence[str]) -> int:
    """How much of a flat block's tensor names to drop: their common prefix, cut back to a '_'
    boundary ('ssd0_mobilenet0_conv0_weight', 'ssd0_expand_...' -> 'ssd0_'), which is where a
    framework's per-process counter lives; what remains is the same in every process."""
    if not names:
        return 0
    prefix = os.path.commonprefix(list(names))
    return prefix.rfind("_") + 1


def module_of(name: str) -> str:
    """The module path of a canonical tensor name ('' for a top-level tensor)."""
    return name.rpartition(".")[0]


@dataclass(slots=True)
class TensorInfo:
    """One distinct tensor (parameter or state) of the model: a view of one row of a listing."""

    handle: Any  # the framework's parameter / buffer object (identity matters)
    canonical: str  # the name rules match
    native: str  # the framework's own name (torch dotted path, Gluon prefixed name)
    shape: tuple[int, ...] | None  # Gluon deferred dims are 0; None when unknown
    layer_type: str  # class of the owning layer, e.g. 'Conv2d', 'BatchNorm'
    is_norm: bool  # belongs to a normalisation layer
    is_state: bool  # buffers / non-differentiable (running stats, anchors)
    trainable: bool  # current settings, to flag what a plan changes
    lr_mult: float
    wd_mult: float
    aliases: tuple[str, ...] = ()  # other canonical names of the same tensor (tied weights)
    layer_kind: str = "other"  # the owning layer's kind (tunespec.recipe.selectors.KINDS)

    @property
    def ndim(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def numel(self) -> int | None:
        return numel(self.shape)


def numel(shape: tuple[int, ...] | None) -> int | None:
    """Elements of a tensor of ``shape``; None while unknown (or a Gluon dim is still deferred)."""
    if shape is None or 0 in shape:
        return None
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass
class NormInfo:
    """A normalisation layer with running statistics whose updates can be frozen."""

    handle: Any  # what the backend needs to switch its statistics
    name: str  # the layer's canonical path
    affine: tuple[Any, ...]  # handles of its affine parameters (may be empty)
    stats: tuple[Any, ...]  # handles of its running statistics
    stats_frozen: bool  # current state
    layer_type: str = "BatchNorm"


@dataclass(eq=False)
class Listing:
    """Everything a plan needs to know about a model: one entry per distinct tensor in each list,
    in the model's order (aliases of a tensor met again are in ``aliases``, by row)."""

    model_type: str  # 'package.module.Class', for model cards
    handles: list[Any]
    names: list[str]  # canonical
    natives: list[str]
    shapes: list[tuple[int, ...] | None]
    layers: Sequence[int]  # row -> index into layer_types / layer_norms
    layer_types: list[str]
    layer_norms: list[bool]
    layer_kinds: list[str]  # per layer, one of tunespec.recipe.selectors.KINDS
    is_state: Sequence[int]  # 0/1 (numeric columns are arrays: see ListingBuilder)
    trainable: Sequence[int]  # 0/1
    lr_mults: Sequence[float]
    wd_mults: Sequence[float]
    aliases: dict[int, tuple[str, ...]]
    norms: list[NormInfo]
    base_types: tuple[str, ...] = ()  # its base classes, nearest first: subclasses share cards

    def __len__(self) -> int:
        return len(self.handles)

    def info(self, row: int) -> TensorInfo:
        layer = self.layers[row]
        return TensorInfo(self.handles[row], self.names[row], self.natives[row], self.shapes[row],
                          self.layer_types[layer], self.layer_norms[layer], bool(self.is_state[row]),
                          bool(self.trainable[row]), self.lr_mults[row], self.wd_mults[row],
                          self.aliases.get(row, ()), self.layer_kinds[layer])

    def is_norm(self, row: int) -> bool:
        return self.layer_norms[self.layers[row]]

    @cached_property
    def param_rows(self) -> list[int]:
        """Rows of the parameters (what rules decide about), in model order."""
        return list(itertools.compress(range(len(self)), map(operator.not_, self.is_state)))

    @cached_property
    def tensors(self) -> list[TensorInfo]:
        return [self.info(row) for row in range(len(self))]

    @property
    def params(self) -> list[TensorInfo]:
        tensors = self.tensors
        return [tensors[row] for row in self.param_rows]

    @property
    def state(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.is_state]

    def param_names(self) -> Iterator[str]:
        names = self.names
        return (names[row] for row in self.param_rows)


class ListingBuilder:
    """Collects what a backend finds while walking a model, straight into a listing's columns.

    The backend announces each layer with ``layer(path, layer_type, is_norm, wrappers, kind)``
    (``kind``: one of :data:`tunespec.recipe.selectors.KINDS`), then
    adds its tensors with ``add(handle, leaf, native, shape, is_state, trainable, lr_mult,
    wd_mult)``; a tensor met again (tied weights, shared Gluon parameters) becomes an alias.
    Both are closures over the columns, not methods: ``add`` runs once per tensor, 100,000 times
    on a mixture-of-experts model, and attribute lookups on ``self`` doubled its cost. Numeric
    columns are arrays, which the cyclic garbage collector never traverses (it walked every
    element of the listing's lists: a tenth of a plan's time).
    """

    def __init__(self, leaf_spellings: Mapping[str, str]) -> None:
        norm_leaf = norm_speller(leaf_spellings)  # the backend's facts
        handles: list[Any] = []
        names: list[str] = []
        natives: list[str] = []
        shapes: list[tuple[int, ...] | None] = []
        layers = array("l")
        layer_types: list[str] = []
        layer_norms: list[bool] = []
        layer_kinds: list[str] = []
        states, trainables = array("b"), array("b")
        lr_mults, wd_mults = array("d"), array("d")
        # The current layer: index, canonical 'a.b.', native 'a.module.b.', renames leaves.
        layer_index, prefix, native_prefix, renames, norm = -1, "", "", False, False

        def layer(path: tuple[str, ...], layer_type: str, is_norm: bool = False,
                  wrappers: Collection[int] = (), kind: str = "other") -> None:
            """Start a layer at ``path`` (``wrappers``: positions in it that are wrapper attributes)."""
            nonlocal layer_index, prefix, native_prefix, renames, norm
            layer_index = len(layer_types)
            layer_types.append(layer_type)
            layer_norms.append(is_norm)
            layer_kinds.append(kind)
            native_prefix = ".".join(path) + "." if path else ""
            if wrappers:
                kept = [s for i, s in enumerate(path) if i not in wrappers]
                prefix = ".".join(kept) + "." if kept else ""
            else:
                prefix = native_prefix
            renames, norm = bool(wrappers) or is_norm, is_norm

        def add(handle: Any, leaf: str, native: str | None = None, shape: tuple[int, ...] | None = None,
                is_state: bool = False, trainable: bool = True, lr_mult: float = 1.0,
                wd_mult: float = 1.0) -> None:
            """Record a tensor of the current layer; ``native`` defaults to its structural path."""
            if renames:
                name = prefix + (norm_leaf(leaf) if norm else leaf)
                if native is None:
                    native = native_prefix + leaf
            else:
                name = prefix + leaf
                if native is None:
                    native = name
            handles.append(handle)
            names.append(name)
            natives.append(native)
            shapes.append(shape)
            layers.append(layer_index)
            states.append(is_state)
            trainables.append(trainable)
            lr_mults.append(lr_mult)
            wd_mults.append(wd_mult)

        def current() -> str:
            return prefix[:-1]

        self.layer, self.add, self._current = layer, add, current
        self._columns = (handles, names, natives, shapes, layers, layer_types, layer_norms, layer_kinds,
                         states, trainables, lr_mults, wd_mults)
        self.norms: list[NormInfo] = []
        self._ids: tuple[int, set[int]] | None = None

    def _recorded(self) -> set[int]:
        """ids of the handles added so far (kept until the next add, for missing() and build())."""
        handles = self._columns[0]
        if self._ids is None or self._ids[0] != len(handles):
            self._ids = (len(handles), set(map(id, handles)))
        return self._ids[1]

    def missing(self, handles: Iterable[Any]) -> bool:
        """Whether any of ``handles`` is not recorded yet (one pass at C speed)."""
        return not all(map(self._recorded().__contains__, map(id, handles)))

    def unknown(self, named: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """The (name, handle) pairs whose handle is not recorded yet, each handle once, in order."""
        taken = set(self._recorded())
        out = []
        for name, h in [(name, h) for name, h in named if id(h) not in taken]:  # usually none
            if id(h) not in taken:
                taken.add(id(h))
                out.append((name, h))
        return out

    def add_norm(self, handle: Any, affine: tuple[Any, ...], stats: tuple[Any, ...], stats_frozen: bool,
                 layer_type: str = "BatchNorm") -> None:
        """Record the current layer as a norm layer whose statistics can be frozen."""
        self.norms.append(NormInfo(handle, self._current(), affine, stats, stats_frozen, layer_type))

    def build(self, model_type: str, base_types: tuple[str, ...] = ()) -> Listing:
        columns = self._columns
        handles = columns[0]
        if len(self._recorded()) == len(handles):  # no tensor met twice: the common case
            return Listing(model_type, *columns, {}, self.norms, base_types)
        # Keep each tensor's first row; the names of the others become its aliases.
        names = columns[1]
        first: dict[int, int] = {}
        aliases: dict[int, tuple[str, ...]] = {}
        keep = []
        for row, handle in enumerate(handles):
            at = first.setdefault(id(handle), row)
            if at == row:
                keep.append(row)
            elif names[row] != names[at] and names[row] not in aliases.get(at, ()):
                aliases[at] = aliases.get(at, ()) + (names[row],)
        renumber = {row: new for new, row in enumerate(keep)}
        handles, names, natives, shapes, layers, layer_types, layer_norms, layer_kinds, *flags = columns
        kept: list[Any] = [[column[row] for row in keep] for column in (handles, names, natives, shapes)]
        kept += [array(column.typecode, [column[row] for row in keep]) for column in (layers, *flags)]
        return Listing(model_type, *kept[:5], layer_types, layer_norms, layer_kinds, *kept[5:],
                       {renumber[row]: names for row, names in aliases.items()}, self.norms, base_types)


def class_names(cls: type) -> tuple[str, ...]:
    """'module.Class' of a class and of its bases, nearest first (for model cards)."""
    return tuple(f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__ if c is not object)
