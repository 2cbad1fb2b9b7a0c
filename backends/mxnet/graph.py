"""Cached frozen prefix: trace a block symbolically and cut the graph in two."""

from __future__ import annotations

import json
import warnings
from typing import Any

import mxnet as mx
from mxnet import gluon

from tunespec.backend_api import GraphNode
from tunespec.errors import SpecError

_FEATURES = "tunespec_features"



class MXNetGraph:
    """Framework calls for cache_frozen; whether the cut is clean and the prefix frozen is decided
    in tunespec.lifecycle.cache."""

    def trace_split(self, model: gluon.Block, split: str) -> tuple[list[GraphNode], Any]:
        """Trace ``model`` symbolically; the nodes between ``split``'s input and output are its own."""
        if not isinstance(model, gluon.HybridBlock):
            raise SpecError(f"cache_frozen: {type(model).__name__} is not a HybridBlock; a Gluon model is cut "
                            f"through its symbolic graph")
        block = model
        for part in split.split("."):
            children = getattr(block, "_children", {})
            if part not in children:
                raise SpecError(f"cache_frozen: {type(block).__name__} has no child {part!r} (looking for "
                                f"{split!r}); its children are {', '.join(repr(c) for c in children)}")
            block = children[part]
        seen: dict[str, list[Any]] = {"in": [], "out": []}
        pre = block.register_forward_pre_hook(lambda b, args: seen["in"].extend(args))
        post = block.register_forward_hook(lambda b, args, out: seen["out"].append(out))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = model(mx.sym.var("data"))
        finally:
            pre.detach()
            post.detach()
        out = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
        graph = json.loads(out.tojson())
        raw = graph["nodes"]
        params = model.collect_params()
        for n in raw:  # a Parameter's symbol keeps the dtype/shape of its first use (stale after cast())
            if n["op"] == "null" and n["name"] in params:
                for key in ("__dtype__", "__shape__"):
                    n.get("attrs", {}).pop(key, None)
        out = mx.sym.load_json(json.dumps(graph))
        by_name = {n["name"]: i for i, n in enumerate(raw)}

        def closure(syms: list[Any]) -> set[int]:
            """Graph indices of these symbols' nodes and everything they depend on."""
            todo = [by_name[s.name] for s in syms if isinstance(s, mx.sym.Symbol) and s.name in by_name]
            found: set[int] = set()
            while todo:
                i = todo.pop()
                if i not in found:
                    found.add(i)
                    todo.extend(j for j, _, _ in raw[i]["inputs"])
            return found

        inside = closure([s for o in seen["out"] for s in (o if isinstance(o, (list, tuple)) else [o])])
        inside -= closure(seen["in"])
        ops = [i for i, n in enumerate(raw) if not (n["op"] == "null" and n["name"] in params)]
        index = {g: k for k, g in enumerate(ops)}
        nodes = []
        for g in ops:
            n = raw[g]
            ins = [j for j, _, _ in n["inputs"]]
            random = n["op"] == "Dropout" and float(n.get("attrs", {}).get("p", "0.5")) > 0
            nodes.append(GraphNode(n["name"], tuple(index[j] for j in ins if j in index),
                                   tuple(params[raw[j]["name"]] for j in ins if j not in index),
                                   is_input=n["op"] == "null", in_split=g in inside, random=random))
        heads = tuple(index[j] for j, _, _ in graph["heads"])
        nodes.append(GraphNode("output", heads))
        return nodes, (model, out, graph, ops)

    def cut_at(self, traced: Any, entry: int, prefix: frozenset[int]) -> tuple[Any, Any]:
        """Two SymbolBlocks sharing the model's Parameters: the prefix up to node ``entry``, and the
        rest with that node's value as its only input."""
        model, out, graph, ops = traced
        raw = graph["nodes"]
        e = ops[entry]
        used = {(j, k) for g, n in enumerate(raw) if g not in {ops[i] for i in prefix if i < len(ops)}
                for j, k, _ in n["inputs"] if j == e}
        used |= {(j, k) for j, k, _ in graph["heads"] if j == e}
        if len({k for _, k in used}) != 1:
            raise SpecError(f"cache_frozen: several outputs of {raw[e]['name']!r} cross the split")
        out_index = used.pop()[1]
        internals = out.get_internals()
        names = internals.list_outputs()
        wanted = [f"{raw[e]['name']}_output{out_index}", f"{raw[e]['name']}_output", raw[e]["name"]]
        front_sym = internals[next(w for w in wanted if w in names)]
        in_prefix = {ops[i] for i in prefix if i < len(ops)}
        keep = [g for g, n in enumerate(raw) if g not in in_prefix and n["op"] != "null"]
        needed = {j for g in keep for j, _, _ in raw[g]["inputs"] if j != e}
        keep = sorted(set(keep) | needed)
        new_index = {g: k + 1 for k, g in enumerate(keep)}
        new_index[e] = 0

        def entry_of(j: int, k: int, v: int) -> list[int]:
            return [0, 0, 0] if j == e else [new_index[j], k, v]

        nodes = [{"op": "null", "name": _FEATURES, "inputs": []}]
        nodes += [{**raw[g], "inputs": [entry_of(*i) for i in raw[g]["inputs"]]} for g in keep]
        back_json = {"nodes": nodes, "arg_nodes": [k for k, n in enumerate(nodes) if n["op"] == "null"],
                     "heads": [entry_of(*h) for h in graph["heads"]], "attrs": graph.get("attrs", {})}
        back_sym = mx.sym.load_json(json.dumps(back_json))
        params = model.collect_params()
        dtype = next(iter(params.values())).dtype  # SymbolBlock infers parameter dtypes from its inputs'
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            front = gluon.SymbolBlock(front_sym, [mx.sym.var("data", dtype=dtype)], params=params)
            back = gluon.SymbolBlock(back_sym, [mx.sym.var(_FEATURES, dtype=dtype)], params=params)
        return front, back

    def run_frozen(self, prefix: gluon.Block, x: Any) -> Any:
        with mx.autograd.pause():
            return prefix(x)

