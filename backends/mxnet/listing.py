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
_KINDS: dict[type, tuple[str, bool, bool]] = {}


def _block_kind(cls: type) -> tuple[str, bool, bool]:
    """(layer type, is a norm layer, is a SymbolBlock), cached per class."""
    name = cls.__name__
    kind = _KINDS[cls] = (name, issubclass(cls, _NORM_CLASSES) or name.endswith("Norm"),
                          issubclass(cls, gluon.SymbolBlock))
    return kind


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
            layer_type, is_norm, is_symbol = _KINDS.get(type(block)) or _block_kind(type(block))
            if is_symbol:
                self._list_symbol_block(block, path, found)
                continue
            layer(path, layer_type, is_norm)
            regs = block._reg_params
            for leaf, p in regs.items():  # _grad_req: the grad_req property's own storage
                add(p, leaf, p.name, _shape(p), not p._differentiable or isinstance(p, _Constant),
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
            add(p, full[len(prefix):], p.name, _shape(p), not p._differentiable or isinstance(p, _Constant),
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
        for node in nodes:
            if node["op"] == "BatchNorm":
                inputs = [nodes[i[0]]["name"] for i in node["inputs"]]
                norm_inputs[node["name"]] = (node.get("attrs", {}).get("use_global_stats", "False"),
                                             inputs[1:])
        in_norm = {n for _, ins in norm_inputs.values() for n in ins}
        # A SymbolBlock makes its own Parameters for layers it was not given (GluonCV's SSD
        # expansion layers), marking running statistics only by grad_req: the graph knows.
        aux = set(block._cached_graph[1].list_auxiliary_states())
        for full in full_names:
            p = params[full]
            found.layer(path, "SymbolBlock", full in in_norm)
            found.add(p, full[strip:], p.name, _shape(p),
                      full in aux or not p._differentiable or isinstance(p, _Constant),
                      p.grad_req != "null", p.lr_mult, p.wd_mult)
        for node, (global_stats, (gamma, beta, mean, var)) in norm_inputs.items():
            layer = node[strip:]
            found.layer(path + (layer[: -len("_fwd")] if layer.endswith("_fwd") else layer,), "BatchNorm", True)
            found.add_norm(SymbolNorm(block, node), tuple(params[n] for n in (gamma, beta) if n in full_names),
                           tuple(params[n] for n in (mean, var) if n in full_names),
                           global_stats == "True", "BatchNorm")

