"""Readable and JSON views of a plan: per tensor, or collapsed by module for large models."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from tunespec.listing import Listing
from tunespec.planning.decide import Decision, NormDecision
from tunespec.recipe.spec import Spec


class Plan(Protocol):
    """What a report reads of a :class:`tunespec.planning.plan.Plan` (which calls these
    functions: a protocol here keeps the two modules from importing each other)."""

    spec: Spec
    listing: Listing
    backend: Any
    norms: Sequence[NormDecision]

    @property
    def decisions(self) -> Sequence[Decision]: ...

    @property
    def trainable(self) -> Sequence[Decision]: ...

    @property
    def frozen(self) -> Sequence[Decision]: ...

    def groups(self) -> list[Any]: ...


def _shape(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d == 0 else str(d) for d in shape) or "scalar"


def _fmt(x: float) -> str:
    return f"{x:g}"


def _setting(d: "Decision") -> tuple[str, str, str]:
    if not d.trainable:
        return ("frozen", "-", "-")
    return ("train", _fmt(d.lr_mult), _fmt(d.wd_mult))


def _rules(items: list["Decision"]) -> str:
    return ", ".join(dict.fromkeys(r for d in items for r in d.deciding_rules)) or "(default)"


def _numel(decisions: list["Decision"]) -> int | None:
    sizes = [d.tensor.numel for d in decisions]
    return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[misc]


def _row(d: "Decision") -> list[str]:
    return [d.name, d.tensor.native, _shape(d.tensor.shape), *_setting(d),
            "*" if d.changed else "", _rules([d])]


def _rows_collapsed(plan: "Plan") -> list[list[str]]:
    """One row per module subtree whose tensors all share one setting (split where they differ)."""
    rows: list[list[str]] = []

    def visit(prefix: str, items: list["Decision"]) -> None:
        settings = {_setting(d) for d in items}
        if prefix and len(settings) == 1:
            n = _numel(items)
            changed = "*" if any(d.changed for d in items) else ""
            label = prefix if len(items) == 1 and items[0].name == prefix else prefix + ".*"
            size = f"{len(items)} tensors" if len(items) > 1 else _shape(items[0].tensor.shape)
            if n is not None and len(items) > 1:
                size += f", {n:,}"
            rows.append([label, "", size, *settings.pop(), changed, _rules(items)])
            return
        depth = prefix.count(".") + 1 if prefix else 0
        children: dict[str, list["Decision"]] = {}
        for d in items:
            parts = d.name.split(".")
            key = ".".join(parts[: depth + 1]) if len(parts) > depth else d.name
            children.setdefault(key, []).append(d)
        if len(children) == 1 and next(iter(children)) == prefix:  # one name, aliases differ
            rows.extend(_row(d) for d in items)
            return
        for key, sub in children.items():
            visit(key, sub)

    visit("", list(plan.decisions))
    return rows


def table(plan: "Plan", full: bool = True) -> str:
    header = ["canonical name", "native name", "shape", "status", "lr", "wd", "chg", "rule"]
    rows = [_row(d) for d in plan.decisions] if full else _rows_collapsed(plan)
    if not full:
        header[1:3] = ["", "tensors"]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(len(header))]
    keep = [i for i in range(len(header)) if widths[i] > 0 and (full or i != 1)]

    def line(cells: list[str]) -> str:
        return "  ".join(cells[i].ljust(widths[i]) for i in keep).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    s = summary(plan)
    out.append("")
    out.append(_totals_line(s))
    if s["norm_layers"]:
        out.append(f"norm layers with running stats: {s['norm_layers']} "
                   f"({s['norm_stats_frozen']} frozen, {s['norm_layers'] - s['norm_stats_frozen']} "
                   f"updating; bn: {plan.spec.bn})")
    out.append(f"state tensors (never optimised): {s['state_tensors']}")
    if any(d.changed for d in plan.decisions):
        out.append("chg * = this plan changes the current setting")
    return "\n".join(out)


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _totals_line(s: dict[str, Any]) -> str:
    return (f"{s['model_type']} ({s['backend']}): {s['tensors']} parameter tensors, "
            f"{_count(s['elements'])} elements; trainable {s['trainable_tensors']} tensors / "
            f"{_count(s['trainable_elements'])} elements; frozen {s['frozen_tensors']} tensors / "
            f"{_count(s['frozen_elements'])} elements")


def summary(plan: "Plan", lr: float | None = None) -> dict[str, Any]:
    """Counts, totals and the distinct effective learning rates (when ``lr`` is given)."""
    groups = []
    for g in plan.groups():
        entry = {"lr_mult": g["lr_mult"], "wd_mult": g["wd_mult"], "tensors": len(g["params"])}
        if lr is not None:
            entry["lr"] = lr * g["lr_mult"]
        groups.append(entry)
    return {
        "backend": plan.backend.name,
        "model_type": plan.listing.model_type,
        "tensors": len(plan.decisions),
        "elements": _numel(plan.decisions),
        "trainable_tensors": len(plan.trainable),
        "trainable_elements": _numel(plan.trainable),
        "frozen_tensors": len(plan.frozen),
        "frozen_elements": _numel(plan.frozen),
        "changed_tensors": sum(d.changed for d in plan.decisions),
        "norm_layers": len(plan.norms),
        "norm_stats_frozen": sum(n.frozen for n in plan.norms),
        "state_tensors": len(plan.listing.state),
        "groups": groups,
    }


def to_dict(plan: "Plan") -> dict[str, Any]:
    return {
        "spec": plan.spec.to_dict(),
        "summary": summary(plan),
        "params": [
            {"name": d.name, "native": d.tensor.native, "aliases": list(d.tensor.aliases),
             "shape": None if d.tensor.shape is None else list(d.tensor.shape),
             "trainable": d.trainable, "lr_mult": d.lr_mult, "wd_mult": d.wd_mult,
             "rules": list(d.rules), "decided_by": d.deciding_rules, "changed": d.changed}
            for d in plan.decisions
        ],
        "norms": [{"name": n.norm.name, "stats_frozen": n.frozen, "reason": n.reason,
                   "changed": n.changed} for n in plan.norms],
        "state": [{"name": t.canonical, "native": t.native,
                   "shape": None if t.shape is None else list(t.shape)} for t in plan.listing.state],
    }
