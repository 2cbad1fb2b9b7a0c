"""Listing a ``gluon.Block``: structural names, never Gluon's counter-dependent prefixes.

Names are structural (``features.0.weight``), never Gluon's prefixes (``resnetv1b0_conv0_weight``).
Inside a ``SymbolBlock`` (GluonCV's SSD/FPN feature extractors) the tensors are flat; their names
drop the block's common prefix at a ``_`` boundary, which is where the per-process counter
(``ssd0_``, ``ssd1_``) lives.
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mxnet import gluon

from tunespec.backend_api import Listing, ListingBuilder, class_names, flat_prefix_length

from .facts import FACTS

_NORM_CLASSES = tuple(c for c in (getattr(gluon.nn, n, None) for n in (
    "BatchNorm", "BatchNormReLU", "LayerNorm", "InstanceNorm", "GroupNorm")) if c is not None)


@dataclass(eq=False)
class SymbolNorm:
    """A BatchNorm node inside a SymbolBlock's graph."""

    block: gluon.SymbolBlock
    node: str

    def _symbol(self) -> Any:
        return self.block._cached_graph[1].get_internals()[self.node + "_output"]


_Constant = gluon.Constant
_INTEGER: dict[Any, bool] = {}  # per dtype value: the listing runs per tensor on huge models


def _integer(dtype: Any) -> bool:
    """Whether a parameter of ``dtype`` holds integers (or bools): MXNet's optimizers refuse to
    update those, so they are state that never trains."""
    known = _INTEGER.get(dtype)
    if known is None:
        import numpy as np

        known = _INTEGER[dtype] = np.dtype(dtype).kind not in "fc"
    return known
_KINDS: dict[type, tuple[str, bool, bool, str]] = {}
# Gluon classes -> tunespec's layer kinds (first match wins).
_LAYER_KINDS: tuple[tuple[type, str], ...] = tuple((c, kind) for c, kind in (
    (getattr(gluon.nn, "conv_layers", None) and gluon.nn.conv_layers._Conv, "conv"),
    (gluon.nn.Dense, "linear"), (gluon.nn.Embedding, "embedding"),
    (getattr(gluon.nn.basic_layers, "_BatchNorm", gluon.nn.BatchNorm), "batch_norm"),
    (getattr(gluon.nn, "LayerNorm", None), "layer_norm"), (getattr(gluon.nn, "GroupNorm", None), "group_norm"),
    (getattr(gluon.nn, "InstanceNorm", None), "instance_norm"),
) if c is not None)
# Operators of a SymbolBlock's graph -> layer kinds of the parameters they read.
_OP_KINDS = {"Convolution": "conv", "Deconvolution": "conv", "FullyConnected": "linear",
             "Embedding": "embedding", "BatchNorm": "batch_norm", "LayerNorm": "layer_norm",
             "GroupNorm": "group_norm", "InstanceNorm": "instance_norm"}


def _block_kind(cls: type) -> tuple[str, bool, bool, str]:
    """(layer type, is a norm layer, is a SymbolBlock, layer kind), cached per class."""
    name = cls.__name__
    layer_kind = next((kind for base, kind in _LAYER_KINDS if issubclass(cls, base)), "other")
    kind = _KINDS[cls] = (name, issubclass(cls, _NORM_CLASSES) or name.endswith("Norm"),
                          issubclass(cls, gluon.SymbolBlock), layer_kind)
    return kind


def _grouped_kind(groups: int, in_channels: int) -> str:
    """'depthwise_conv' when groups == in_channels > 1 ('deferred_conv' while unknown)."""
    if groups <= 1:
        return "conv"
    if not in_channels:
        return "deferred_conv"
    return "depthwise_conv" if in_channels == groups else "conv"


def _conv_kind(block: gluon.Block) -> str:
    kwargs = getattr(block, "_kwargs", None) or {}
    groups = int(kwargs.get("num_group", 1))
    if groups <= 1:
        return "conv"
    channels = getattr(block, "_in_channels", 0)
    if not channels:  # deferred: the weight knows once initialised (in / groups per group)
        shape = _shape(block.weight) or ()
        at = 0 if "Transpose" in type(block).__name__ else (
            -1 if str(kwargs.get("layout", "NC")).endswith("C") else 1)
        channels = shape[at] * groups if len(shape) > 2 else 0
    return _grouped_kind(groups, channels)


def _shape(p: gluon.Parameter) -> tuple[int, ...] | None:
    shape = p._shape  # the property re-checks numpy-shape mode on every read: slow on big models
    return shape if shape is None or type(shape) is tuple else tuple(map(int, shape))


class MXNetListing:
    def listing(self, model: gluon.Block) -> Listing:
        found = ListingBuilder(FACTS.leaf_spellings)
        add, layer = found.add, found.layer  # called per tensor / per block on 100,000-tensor models
        visited: list[tuple[gluon.Block, tuple[str, ...]]] = []
        dicts: list[OrderedDict] = []  # each block's own ParameterDict storage, read while it is hot
        stack: list[tuple[gluon.Block, tuple[str, ...]]] = [(model, ())]  # pre-order, as recursion
        while stack:
            block, path = entry = stack.pop()
            visited.append(entry)
            dicts.append(block._params._params)
            layer_type, is_norm, is_symbol, kind = _KINDS.get(type(block)) or _block_kind(type(block))
            if is_symbol:
                self._list_symbol_block(block, path, found)
                continue
            layer(path, layer_type, is_norm, (), _conv_kind(block) if kind == "conv" else kind)
            regs = block._reg_params
            for leaf, p in regs.items():  # _grad_req: the grad_req property's own storage
                add(p, leaf, p.name, _shape(p), not p._differentiable or isinstance(p, _Constant) or _integer(p.dtype),
                    p._grad_req != "null", p.lr_mult, p.wd_mult)
            if is_norm and "running_mean" in regs:
                kwargs = getattr(block, "_kwargs", None) or {}
                if "use_global_stats" in kwargs:
                    found.add_norm(block, tuple(regs[k] for k in ("gamma", "beta") if k in regs),
                                   tuple(regs[k] for k in ("running_mean", "running_var") if k in regs),
                                   bool(kwargs["use_global_stats"]), layer_type)
            children = block._children
            if children:
                stack.extend([(child, path + (name,)) for name, child in reversed(children.items())])
        # Parameters made with self.params.get() but never assigned to an attribute (what
        # collect_params() adds): name them under the deepest block whose prefix they carry
        # (still counter-free).
        strays = found.unknown(itertools.chain.from_iterable(map(OrderedDict.items, dicts))) \
            if found.missing(itertools.chain.from_iterable(map(dict.values, dicts))) else []
        owners = [(b.prefix, path) for b, path in visited] if strays else []
        for full, p in strays:
            prefix, path = max((o for o in owners if full.startswith(o[0])), key=lambda o: len(o[0]),
                               default=("", ()))
            layer(path, "Parameter")
            add(p, full[len(prefix):], p.name, _shape(p), not p._differentiable or isinstance(p, _Constant) or _integer(p.dtype),
                p.grad_req != "null", p.lr_mult, p.wd_mult)
        types = class_names(type(model))
        return found.build(types[0], types[1:])

    def _list_symbol_block(self, block: gluon.SymbolBlock, path: tuple[str, ...], found: ListingBuilder) -> None:
        params = block.params
        full_names = list(params.keys())
        strip = flat_prefix_length(full_names)  # the core decides where the counter-free name starts
        graph = json.loads(block._cached_graph[1].tojson())
        nodes = graph["nodes"]
        norm_inputs: dict[str, tuple[str, list[str]]] = {}
        kinds: dict[str, str] = {}  # parameter -> the kind of the operator that reads it
        for node in nodes:
            op = node["op"]
            if op in _OP_KINDS:
                inputs = [nodes[i[0]]["name"] for i in node["inputs"]]
                kinds.update(dict.fromkeys(inputs[1:], self._op_kind(node, inputs, params)))
            if op == "BatchNorm":
                norm_inputs[node["name"]] = (node.get("attrs", {}).get("use_global_stats", "False"),
                                             inputs[1:])
        in_norm = {n for _, ins in norm_inputs.values() for n in ins}
        # A SymbolBlock makes its own Parameters for layers it was not given (GluonCV's SSD
        # expansion layers), marking running statistics only by grad_req: the graph knows.
        aux = set(block._cached_graph[1].list_auxiliary_states())
        for full in full_names:
            p = params[full]
            found.layer(path, "SymbolBlock", full in in_norm, (), kinds.get(full, "other"))
            found.add(p, full[strip:], p.name, _shape(p),
                      full in aux or not p._differentiable or isinstance(p, _Constant) or _integer(p.dtype),
                      p.grad_req != "null", p.lr_mult, p.wd_mult)
        for node, (global_stats, (gamma, beta, mean, var)) in norm_inputs.items():
            layer = node[strip:]
            found.layer(path + (layer[: -len("_fwd")] if layer.endswith("_fwd") else layer,), "BatchNorm", True,
                        (), "batch_norm")
            found.add_norm(SymbolNorm(block, node), tuple(params[n] for n in (gamma, beta) if n in full_names),
                           tuple(params[n] for n in (mean, var) if n in full_names),
                           global_stats == "True", "BatchNorm")


    @staticmethod
    def _op_kind(node: dict, inputs: list[str], params: Any) -> str:
        """The layer kind of a graph operator; a convolution's groups come from its attributes."""
        kind = _OP_KINDS[node["op"]]
        if kind != "conv":
            return kind
        attrs = node.get("attrs", {})
        groups = int(attrs.get("num_group", "1"))
        if groups <= 1:
            return "conv"
        weight = params.get(inputs[1]) if len(inputs) > 1 and inputs[1] in params.keys() else None
        shape = (_shape(weight) or ()) if weight is not None else ()
        at = 0 if node["op"] == "Deconvolution" else (-1 if attrs.get("layout", "NC").endswith("C") else 1)
        return _grouped_kind(groups, shape[at] * groups if len(shape) > 2 else 0)
