"""Planning: what a spec does to one model, decided entirely here, executed by a backend."""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import report
from .backend_api import Backend, Group
from .cards import card_for, preset_rules
from .errors import SpecError, StalePlanError, TuneSpecWarning
from .listing import Listing, NormInfo, TensorInfo, gc_paused, module_of
from .matching import Matcher
from .recipe import check_semantics
from .spec import Rule, Spec


@dataclass(slots=True)
class Decision:
    """The planned setting of one parameter, and which rules produced it."""

    tensor: TensorInfo
    trainable: bool = True
    lr_mult: float = 1.0
    wd_mult: float = 1.0
    rules: list[str] = field(default_factory=list)  # every rule that matched, in order
    set_by: dict[str, str] = field(default_factory=dict)  # field -> the rule that last set it

    @property
    def deciding_rules(self) -> list[str]:
        """The rules behind the effective setting (a frozen tensor's lr/wd rules have no effect)."""
        keys = ("trainable",) if not self.trainable else ("trainable", "lr_mult", "wd_mult")
        return list(dict.fromkeys(self.set_by[k] for k in keys if k in self.set_by))

    @property
    def name(self) -> str:
        return self.tensor.canonical

    @property
    def changed(self) -> bool:
        t = self.tensor
        return (t.trainable, t.lr_mult, t.wd_mult) != (self.trainable, self.lr_mult, self.wd_mult)


@dataclass
class NormDecision:
    norm: NormInfo
    frozen: bool
    reason: str

    @property
    def changed(self) -> bool:
        return self.norm.stats_frozen != self.frozen


@dataclass
class VerifyReport:
    """Frozen tensors whose bytes changed since ``apply`` (should always be empty)."""

    changed_params: list[str]
    changed_stats: list[str]
    unchecked: list[str]

    @property
    def ok(self) -> bool:
        return not self.changed_params and not self.changed_stats

    def raise_if_changed(self) -> None:
        if not self.ok:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        if self.ok:
            extra = f" ({len(self.unchecked)} had no baseline yet)" if self.unchecked else ""
            return f"verify: all frozen parameters and frozen norm statistics unchanged{extra}"
        lines = ["verify: frozen tensors changed since apply:"]
        lines += [f"  parameter {n}" for n in self.changed_params]
        lines += [f"  norm statistic {n}" for n in self.changed_stats]
        return "\n".join(lines)


def _few(names: Sequence[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.blake2b(data, digest_size=16).hexdigest()


def _expand_rules(spec: Spec, listing: Listing) -> tuple[list[Rule], dict[str, str], str]:
    """Preset rules first (from the model card), then the spec's own, with all groups."""
    card = card_for((listing.model_type, *listing.base_types), (t.canonical for t in listing.params))
    groups = dict(card.groups) if card else {}
    groups.update(spec.groups)
    rules: list[Rule] = []
    if spec.preset_name is not None:
        for i, raw in enumerate(preset_rules(card, spec.preset_name, listing.model_type)):
            rules.append(Rule.from_dict(raw, f"preset {spec.preset_name!r}[{i}]", user=False))
    return rules + list(spec.rules), groups, card.family if card else ""


def decide(listing: Listing, spec: Spec) -> tuple[list[Decision], list[NormDecision]]:
    """Run the rules in order over the parameters; each matching rule overrides what it sets."""
    params = listing.params
    rules, groups, family = _expand_rules(spec, listing)
    matcher = Matcher(params)
    matches = [matcher.select(r.match, groups, r.origin) for r in rules]
    decisions = [Decision(t) for t in params]
    for r, hits in zip(rules, matches, strict=True):
        if not hits and not r.user:  # a card that does not fit this model: never a silent no-op
            raise SpecError(f"{r.origin}: the {family} card's {r.match!r} matches no parameter of this "
                            f"{listing.model_type}; the card does not fit this model. Register a card "
                            f"for it (tunespec.register_card) or write freeze/train rules")
    missed = [r for r, hits in zip(rules, matches, strict=True) if not hits and r.user]
    if missed:
        # Suggestions cost a scan each: a few are enough to show the pattern of a mistake.
        first = [f"{r.origin}: {r.match!r} matches no parameter of {listing.model_type}; "
                 f"{matcher.suggest(r.match)}" for r in missed[:3]]
        if spec.strict:
            raise SpecError(first[0] + ". Fix the rule, or set strict: false to allow it")
        more = f" (and {len(missed) - 3} more rules matching nothing)" if len(missed) > 3 else ""
        warnings.warn("; ".join(first) + more, TuneSpecWarning, stacklevel=4)
    for rule, hits in zip(rules, matches, strict=True):
        for i in hits:
            d = decisions[i]
            for key in ("trainable", "lr_mult", "wd_mult"):
                value = getattr(rule, key)
                if value is not None:
                    setattr(d, key, value)
                    d.set_by[key] = rule.origin
            d.rules.append(rule.origin)
    for d in decisions:
        if not d.trainable:  # a frozen tensor has no lr; keep its multipliers neutral
            d.lr_mult = d.wd_mult = 1.0
    for rule, hits in zip(rules, matches, strict=True):
        sets_mult = rule.lr_mult is not None or rule.wd_mult is not None
        if sets_mult and hits and not any(decisions[i].trainable for i in hits):
            warnings.warn(f"{rule.origin}: the multiplier of {rule.match!r} lands only on frozen "
                          f"parameters and has no effect", TuneSpecWarning, stacklevel=4)
    trainable = {id(d.tensor.handle): d.trainable for d in decisions} if listing.norms else {}
    return decisions, [_norm_decision(n, spec.bn, decisions, trainable) for n in listing.norms]


def _norm_decision(norm: NormInfo, policy: str, decisions: Sequence[Decision],
                   trainable: dict[int, bool]) -> NormDecision:
    if policy == "train":
        return NormDecision(norm, False, "bn: train")
    if policy == "freeze":
        return NormDecision(norm, True, "bn: freeze")
    affine = [trainable[id(h)] for h in norm.affine if id(h) in trainable]
    if affine:
        frozen = not any(affine)
        return NormDecision(norm, frozen, "affine frozen" if frozen else "affine trains")
    # No affine parameters: follow the parameters of the enclosing module.
    parent = module_of(norm.name)
    around = [d.trainable for d in decisions if parent == "" or d.name.startswith(parent + ".")]
    frozen = bool(around) and not any(around)
    return NormDecision(norm, frozen, f"no affine; {parent or 'model'} {'frozen' if frozen else 'trains'}")


class Plan:
    """What a spec does to one model; nothing changes until :meth:`apply`."""

    def __init__(self, model: Any, spec: Spec, backend: Backend, listing: Listing):
        self.model = model
        self.spec = spec
        self.backend = backend
        self.listing = listing
        self.decisions, self.norms = decide(listing, spec)
        self._identity = self._fingerprint(listing)
        self._saved: dict[int, Any] | None = None
        self._saved_norms: list[bool] | None = None
        self._checksums: dict[str, str | None] = {}

    # --- inspection -------------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def applied(self) -> bool:
        return self._saved is not None

    @property
    def trainable(self) -> list[Decision]:
        return [d for d in self.decisions if d.trainable]

    @property
    def frozen(self) -> list[Decision]:
        return [d for d in self.decisions if not d.trainable]

    def __getitem__(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name or name in d.tensor.aliases:
                return d
        raise KeyError(f"{name!r} is not a parameter of this plan; "
                       f"{Matcher(self.listing.params).suggest(re.escape(name))}")

    def summary(self, lr: float | None = None) -> dict[str, Any]:
        return report.summary(self, lr)

    def to_dict(self) -> dict[str, Any]:
        return report.to_dict(self)

    def table(self, full: bool = True) -> str:
        return report.table(self, full=full)

    def __str__(self) -> str:
        return report.table(self, full=len(self.decisions) <= 80)

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<tunespec.Plan {self.backend.name} {self.listing.model_type}: "
                f"{s['trainable_tensors']} trainable, {s['frozen_tensors']} frozen, "
                f"{'applied' if self.applied else 'not applied'}>")

    # --- binding to the model's parameter objects ------------------------------------------
    @staticmethod
    def _fingerprint(listing: Listing) -> tuple[int, ...]:
        return tuple(id(t.handle) for t in listing.tensors)

    def _check_fresh(self, action: str) -> None:
        with gc_paused():
            now = self.backend.listing(self.model)
        if self._fingerprint(now) != self._identity:
            before = {id(t.handle): t.canonical for t in self.listing.tensors}
            after = {id(t.handle): t.canonical for t in now.tensors}
            gone = [n for i, n in before.items() if i not in after]
            new = [n for i, n in after.items() if i not in before]
            detail = "; ".join(filter(None, [
                f"replaced or removed: {_few(gone)}" if gone else "",
                f"new: {_few(new)}" if new else "",
            ])) or "layers were added, removed or reordered"
            raise StalePlanError(f"cannot {action}: the model's parameters changed after planning "
                                 f"({detail}); re-plan with tunespec.plan(model, spec)")

    # --- changing the model ----------------------------------------------------------------
    def apply(self) -> "Plan":
        """Set trainability, multipliers and norm policy; take checksums of what is frozen."""
        self._check_fresh("apply")
        be = self.backend
        saved = {id(d.tensor.handle): be.snapshot(d.tensor.handle) for d in self.decisions}
        saved_norms = [be.norm_stats_frozen(n.norm.handle) for n in self.norms]
        try:
            for d in self.decisions:
                be.set_param(d.tensor.handle, d.trainable, d.lr_mult, d.wd_mult)
            for n in self.norms:
                be.set_norm_stats_frozen(n.norm.handle, n.frozen)
            be.commit(self.model)
        except Exception:
            self._put_back(saved, saved_norms)
            raise
        if self._saved is None:  # re-applying keeps the original settings for restore()
            self._saved, self._saved_norms = saved, saved_norms
        self._checksums = self._take_checksums()
        return self

    def restore(self) -> None:
        """Undo :meth:`apply`: trainability, multipliers and norm policy as they were before."""
        if self._saved is None:
            raise SpecError("restore: this plan was never applied")
        self._put_back(self._saved, self._saved_norms or [])
        self._saved = self._saved_norms = None
        self._checksums = {}

    def _put_back(self, saved: dict[int, Any], saved_norms: list[bool]) -> None:
        for d in self.decisions:
            self.backend.restore(d.tensor.handle, saved[id(d.tensor.handle)])
        for n, frozen in zip(self.norms, saved_norms, strict=True):
            self.backend.set_norm_stats_frozen(n.norm.handle, frozen)
        self.backend.commit(self.model)

    def _watched(self) -> list[tuple[str, TensorInfo]]:
        watched = [("param", d.tensor) for d in self.decisions if not d.trainable]
        by_id = {id(t.handle): t for t in self.listing.state}
        for n in self.norms:
            if n.frozen:
                watched += [("stat", by_id[id(h)]) for h in n.norm.stats if id(h) in by_id]
        return watched

    def _take_checksums(self) -> dict[str, str | None]:
        return {f"{kind}:{t.canonical}": _digest(self.backend.tensor_bytes(t.handle))
                for kind, t in self._watched()}

    def verify(self) -> VerifyReport:
        """Compare frozen parameters and frozen norm statistics with their bytes at apply time."""
        if self._saved is None:
            raise SpecError("verify: apply the plan first (plan.apply())")
        now = self._take_checksums()
        changed_params, changed_stats, unchecked = [], [], []
        for key, digest in now.items():
            kind, _, name = key.partition(":")
            before = self._checksums.get(key)
            if before is None:
                unchecked.append(name)
                self._checksums[key] = digest
            elif before != digest:
                (changed_params if kind == "param" else changed_stats).append(name)
        return VerifyReport(changed_params, changed_stats, unchecked)

    # --- optimizers -------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        """Trainable parameters grouped by distinct (lr_mult, wd_mult), in order of first appearance."""
        by_mult: dict[tuple[float, float], Group] = {}
        for d in self.trainable:
            key = (d.lr_mult, d.wd_mult)
            if key not in by_mult:
                by_mult[key] = Group(params=[], lr_mult=d.lr_mult, wd_mult=d.wd_mult, param_names=[])
            by_mult[key]["params"].append(d.tensor.handle)
            by_mult[key]["param_names"].append(d.name)
        return list(by_mult.values())

    def param_groups(self, lr: float | None = None, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """torch-style parameter groups with each group's lr and weight decay already scaled."""
        if lr is None and any(d.lr_mult != 1.0 for d in self.trainable):
            raise SpecError("param_groups: give lr, so that each group's lr_mult can scale it")
        out = []
        for g in self.groups():
            group = dict(g)
            if lr is not None:
                group["lr"] = lr * g["lr_mult"]
            group["weight_decay"] = weight_decay * g["wd_mult"]
            out.append(group)
        return out

    def optimizer(self, name: Any = "sgd", lr: float | None = None, weight_decay: float = 0.0,
                  semantics: str = "torch", **options: Any) -> Any:
        """Apply if needed, then build the framework's optimizer (torch) or Trainer (Gluon).

        ``semantics='torch'`` makes a Gluon Trainer follow torch's update rules (SGD momentum,
        Adam epsilon); ``'native'`` keeps MXNet's own. torch optimizers are always torch's.
        """
        check_semantics(semantics)
        if lr is None:
            raise SpecError("optimizer: give lr (the base learning rate that lr_mult scales)")
        if not self.applied:
            self.apply()
        else:
            self._check_fresh("build an optimizer")
        return self.backend.build_optimizer(self.param_groups(lr, weight_decay), name, lr,
                                            weight_decay, semantics=semantics, **options)

    def check(self, optimizer: Any) -> None:
        """Raise if ``optimizer`` holds frozen parameters or misses trainable ones."""
        self._check_fresh("check an optimizer")
        held = {id(h) for h in self.backend.optimizer_handles(optimizer)}
        frozen = [d.name for d in self.frozen if id(d.tensor.handle) in held]
        missing = [d.name for d in self.trainable if id(d.tensor.handle) not in held]
        problems = []
        if frozen:
            problems.append(f"it updates {len(frozen)} frozen parameter(s): {_few(frozen)} "
                            f"(was it built before freezing?)")
        if missing:
            problems.append(f"it misses {len(missing)} trainable parameter(s): {_few(missing)}")
        if problems:
            raise SpecError("optimizer does not match the plan: " + "; ".join(problems)
                            + ". Build it with plan.optimizer(...) or plan.param_groups(...)")
