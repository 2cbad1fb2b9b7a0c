"""A cached frozen prefix: compute the frozen front of a network once per sample, train the rest.

When every parameter before a split module is frozen, its BatchNorm statistics are frozen and it
draws no random numbers, the prefix's output for a given input never changes, so it can be
computed once and the trained part run on stored features every epoch after the first.

That holds only for a clean cut: the split module must receive one tensor, and nothing after it
may use anything computed before it except that tensor (a skip connection across the split would
be lost). The core decides all of that here, on a framework-neutral graph the backend traces
(torch.fx in PyTorch, the hybridized symbol in Gluon); the backend then builds the two callables.

Data augmentation makes caching wrong: the cached features belong to the exact inputs they were
computed from. Cache features of un-augmented inputs only (or augment in feature space).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from tunespec.backend_api import GraphNode, GraphTracing, require
from tunespec.dispatch import check_backend_name
from tunespec.errors import SpecError
from tunespec.planning.plan import Plan
from tunespec.recipe.validate import excerpt
from tunespec.planning.make import plan as make_plan

if TYPE_CHECKING:
    from tunespec.planning.make import SpecLike


def find_cut(nodes: Sequence[GraphNode], split: str) -> tuple[int, frozenset[int]]:
    """The node whose value enters ``split`` and the nodes it depends on (the prefix).

    Raises unless the split is a clean cut: one tensor enters the split module, and no node
    outside the prefix uses a prefix value other than that tensor.
    """
    inside = {i for i, n in enumerate(nodes) if n.in_split}
    if not inside:
        raise SpecError(f"cache_frozen: the forward pass never runs split {split!r}; name a module the "
                        f"model calls (e.g. 'layer4' for a ResNet)")
    entries = sorted({j for i in inside for j in nodes[i].inputs if j not in inside})
    if len(entries) != 1:
        found = ", ".join(nodes[j].name for j in entries) or "nothing"
        raise SpecError(f"cache_frozen: split {split!r} takes {len(entries)} values from before it "
                        f"({found}); a cached prefix hands it exactly one tensor. Choose a module "
                        f"on the network's single path")
    entry = entries[0]
    prefix = {entry}
    for i in range(entry, -1, -1):  # nodes are in topological order: one backward sweep
        if i in prefix:
            prefix.update(nodes[i].inputs)
    for i, n in enumerate(nodes):
        if n.is_input and i not in prefix:
            raise SpecError(f"cache_frozen: the model's input {n.name!r} reaches the layers after "
                            f"{split!r} without passing through it; caching would drop that path")
    for i, n in enumerate(nodes):
        if i in prefix:
            continue
        leak = next((j for j in n.inputs if j in prefix and j != entry), None)
        if leak is not None:
            raise SpecError(f"cache_frozen: {split!r} is not a clean cut: {n.name!r} after it uses "
                            f"{nodes[leak].name!r} from before it (a skip connection across the "
                            f"split). Choose a split where the network is a single path")
    return entry, frozenset(prefix)


def check_prefix_frozen(plan: Plan, nodes: Sequence[GraphNode], prefix: frozenset[int], split: str) -> None:
    """Refuse unless every parameter and BN statistic the prefix reads is frozen and nothing is random."""
    decisions = {id(d.tensor.handle): d for d in plan.decisions}
    norm_of = {id(h): n for n in plan.norms for h in n.norm.stats}
    for i in sorted(prefix):
        node = nodes[i]
        if node.random:
            raise SpecError(f"cache_frozen: {node.name!r} before {split!r} is random in training "
                            f"(dropout); cached features would fix one draw. Split before it")
        for h in node.tensors:
            d = decisions.get(id(h))
            if d is not None and d.trainable:
                raise SpecError(f"cache_frozen: {d.name!r} is used before {split!r} but trains "
                                f"({', '.join(d.deciding_rules) or 'the default'}); freeze everything "
                                f"before the split, or split earlier")
            n = norm_of.get(id(h))
            if n is not None and not n.frozen:
                raise SpecError(f"cache_frozen: BatchNorm {n.norm.name!r} before {split!r} still updates "
                                f"its running statistics ({n.reason}), so its output changes every step; "
                                f"use bn: freeze or bn: freeze_frozen with its parameters frozen")


class FrozenPrefix:
    """A model cut at ``split``: ``features(x)`` runs the frozen prefix (no gradients),
    ``head(f)`` runs the rest, so ``head(features(x))`` is ``model(x)``.

    Compute ``features`` once per (un-augmented) sample, keep them, and train ``head`` on them
    with the plan's optimizer: its parameters are the model's own.
    """

    def __init__(self, plan: Plan, split: str, prefix: Any, head: Any):
        self.plan = plan
        self.split = split
        self._prefix = prefix
        self.head = head

    def features(self, x: Any) -> Any:
        """The frozen prefix's output for a batch, detached from any gradient tape."""
        return self.plan.backend.run_frozen(self._prefix, x)

    def __repr__(self) -> str:
        return f"<tunespec.FrozenPrefix {self.plan.backend.name} split={self.split!r}>"


def cache_frozen(model: Any, spec: "Plan | SpecLike", split: str, backend: str | None = None) -> FrozenPrefix:
    """Cut ``model`` before ``split`` (a module's canonical path, e.g. 'layer4') into a cached
    frozen prefix and a trainable head; ``spec`` is a Plan (applied here if it is not yet) or a spec.

    Raises :class:`SpecError` when the prefix is not all frozen, its BatchNorm statistics still
    update, it contains dropout, or the split is not a clean sequential cut.
    """
    if not isinstance(split, str) or not split:
        raise SpecError(f"cache_frozen: split must be a module's canonical path like 'layer4', got "
                        f"{excerpt(split)}")
    check_backend_name(backend, "cache_frozen: backend")
    if isinstance(spec, Plan):
        plan = spec
        if plan.model is not model:
            raise SpecError("cache_frozen: the plan was made for another model; pass that model or re-plan")
    else:
        plan = make_plan(model, spec, backend)
    plan.check_fresh("cache a frozen prefix")
    tracer = require(plan.backend, GraphTracing, "cache_frozen")
    applied_here = not plan.applied
    if applied_here:
        plan.apply()  # the trace must see frozen BatchNorm layers as frozen
    try:
        nodes, traced = tracer.trace_split(model, split)
        entry, prefix = find_cut(nodes, split)
        check_prefix_frozen(plan, nodes, prefix, split)
        front, head = tracer.cut_at(traced, entry, prefix)
    except BaseException:
        if applied_here:  # a refusal leaves the model as it was
            plan.rollback()
        raise
    return FrozenPrefix(plan, split, front, head)
