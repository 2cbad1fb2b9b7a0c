"""Cached frozen prefix: trace a forward pass with torch.fx and cut it in two."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunespec.backend_api import GraphNode
from tunespec.errors import SpecError

from .listing import _unwrap

_F = torch.nn.functional
_RANDOM_FUNCTIONS = {_F.dropout, _F.dropout1d, _F.dropout2d, _F.dropout3d, _F.alpha_dropout,
                     _F.feature_alpha_dropout, torch.dropout, torch.bernoulli, torch.rand, torch.rand_like,
                     torch.randn, torch.randn_like, torch.randint}



class TorchGraph:
    """Framework calls for cache_frozen; whether the cut is clean and the prefix frozen is decided
    in tunespec.lifecycle.cache."""

    def trace_split(self, model: nn.Module, split: str) -> tuple[list[GraphNode], Any]:
        """Trace ``model`` with torch.fx, keeping module ``split`` as one call, into core graph nodes."""
        import torch.fx

        root = _unwrap(model)
        try:
            root.get_submodule(split)
        except AttributeError:
            children = ", ".join(repr(n) for n, _ in root.named_children())
            raise SpecError(f"cache_frozen: {type(root).__name__} has no module {split!r}; its children "
                            f"are {children}") from None

        class SplitTracer(torch.fx.Tracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return qualname == split or super().is_leaf_module(m, qualname)

        try:
            graph = SplitTracer().trace(root)
        except Exception as exc:
            raise SpecError(f"cache_frozen: torch.fx cannot trace {type(root).__name__} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); the cut needs a traceable "
                            f"forward") from None
        index = {node: i for i, node in enumerate(graph.nodes)}
        nodes = []
        for node in graph.nodes:
            tensors: tuple[Any, ...] = ()
            random = False
            if node.op == "call_module":
                module = root.get_submodule(node.target)
                tensors = (*module.parameters(), *module.buffers())
                random = isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
            elif node.op == "get_attr":
                value = root
                for part in node.target.split("."):
                    value = getattr(value, part)
                tensors = (value,) if isinstance(value, torch.Tensor) else ()
            elif node.op == "call_function":
                random = node.target in _RANDOM_FUNCTIONS
            nodes.append(GraphNode(node.name, tuple(index[n] for n in node.all_input_nodes), tensors,
                                   is_input=node.op == "placeholder",
                                   in_split=node.op == "call_module" and node.target == split, random=random))
        return nodes, (root, graph)

    def cut_at(self, traced: Any, entry: int, prefix: frozenset[int]) -> tuple[Any, Any]:
        """Two GraphModules sharing the model's modules: the prefix up to node ``entry``, and the rest
        with that node's value as its only input."""
        import torch.fx

        root, graph = traced
        order = list(graph.nodes)
        front, back = torch.fx.Graph(), torch.fx.Graph()
        env_front: dict[Any, Any] = {}
        env_back = {order[entry]: back.placeholder("features")}
        for i, node in enumerate(order):
            if i in prefix:
                env_front[node] = front.node_copy(node, env_front.__getitem__)
            elif node.op != "placeholder":
                env_back[node] = back.node_copy(node, env_back.__getitem__)
        front.output(env_front[order[entry]])
        return torch.fx.GraphModule(root, front), torch.fx.GraphModule(root, back)

    def run_frozen(self, prefix: nn.Module, x: Any) -> Any:
        with torch.no_grad():
            return prefix(x)
