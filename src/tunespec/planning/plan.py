"""Planning: what a spec does to one model, decided entirely here, executed by a backend."""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from array import array
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Sequence

from tunespec.backend_api import Backend, Group
from tunespec.errors import SpecError, StalePlanError
from tunespec.listing import Listing, gc_paused
from tunespec.planning import report
from tunespec.planning.decide import Decision, decide
from tunespec.planning.matching import Matcher
from tunespec.planning.optimizers import check_number, check_optimizer
from tunespec.recipe import validate
from tunespec.recipe.spec import Spec


# --- one model, one change at a time ----------------------------------------------------------
# Plan.apply / restore on one model hold that model's lock, so two threads applying different
# plans end with one of them fully applied (the later one), never a mix of both.
_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_SHARED_LOCK = threading.RLock()  # for models that cannot be weakly referenced


def model_lock(model: Any) -> threading.RLock:
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
            return lock
        except TypeError:
            return _SHARED_LOCK


# The plan tunespec.apply last applied to each model. Only tunespec.apply records (a recorded
# plan keeps its model alive, and a Schedule's models must be freed with their Trainers); whether
# the record still describes the model is checked against the live settings (Plan.is_live).
APPLIED: "weakref.WeakKeyDictionary[Any, Plan]" = weakref.WeakKeyDictionary()


def remember_applied(model: Any, plan: "Plan | None") -> None:
    try:
        if plan is None:
            APPLIED.pop(model, None)
        else:
            APPLIED[model] = plan
    except TypeError:  # a model that cannot be weakly referenced is simply not remembered
        pass


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


class Plan:
    """What a spec does to one model; nothing changes until :meth:`apply`."""

    @classmethod
    def make(cls, model: Any, spec: Spec, backend: Backend, listing: Listing | None = None) -> "Plan":
        """The one way every call makes a plan: ``listing`` (the backend's, listed here when not
        given, e.g. to share one listing between several specs) plus the spec, nothing applied."""
        with gc_paused():  # see gc_paused: a burst of small objects, none in cycles
            return cls(model, spec, backend, backend.listing(model) if listing is None else listing)

    def __init__(self, model: Any, spec: Spec, backend: Backend, listing: Listing):
        self.model = model
        self.spec = spec
        self.backend = backend
        self.listing = listing
        self._decided, self.norms = decide(listing, spec)
        self._identity = self._fingerprint(listing)
        self._saved: dict[int, Any] | None = None
        self._saved_norms: list[bool] | None = None
        self._checksums: dict[str, str | None] = {}
        self._live: tuple[list[Any], list[bool]] | None = None  # settings right after apply

    # --- inspection -------------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def applied(self) -> bool:
        return self._saved is not None

    @cached_property
    def decisions(self) -> list[Decision]:
        """One :class:`Decision` per parameter, in model order."""
        return self._decided.decisions(self.listing.params)

    @property
    def trainable(self) -> list[Decision]:
        return [d for d in self.decisions if d.trainable]

    @property
    def frozen(self) -> list[Decision]:
        return [d for d in self.decisions if not d.trainable]

    def __getitem__(self, name: str) -> Decision:
        ls = self.listing
        for i, row in enumerate(ls.param_rows):
            if ls.names[row] == name or name in ls.aliases.get(row, ()):
                return self.decisions[i]
        raise KeyError(f"{name!r} is not a parameter of this plan; "
                       f"{Matcher(ls).suggest(re.escape(name))}")

    def _settings(self) -> Iterator[tuple[int, Any, int, float, float]]:
        """(listing row, handle, trainable, lr_mult, wd_mult) per parameter, without Decision objects."""
        d, handles = self._decided, self.listing.handles
        rows = self.listing.param_rows
        return zip(rows, (handles[row] for row in rows), d.trainable, d.lr_mult, d.wd_mult, strict=True)

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
    def _fingerprint(listing: Listing) -> array:
        return array("Q", map(id, listing.handles))

    def check_fresh(self, action: str) -> None:
        """StalePlanError unless the model still has exactly the tensors this plan was made for
        (a replaced head or a re-wrapped module means re-planning); ``action`` says what waits."""
        with gc_paused():
            now = self.backend.listing(self.model)
        if self._fingerprint(now) != self._identity:
            before = dict(zip(map(id, self.listing.handles), self.listing.names, strict=True))
            after = dict(zip(map(id, now.handles), now.names, strict=True))
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
        """Set trainability, multipliers and norm policy; take checksums of what is frozen.

        All or nothing: a failure part-way puts every setting back. Holds the model's lock, so
        concurrent applies to one model happen one after the other.
        """
        with model_lock(self.model):
            self.check_fresh("apply")
            be = self.backend
            saved = {id(handle): be.snapshot(handle) for _, handle, *_ in self._settings()}
            saved_norms = [be.norm_stats_frozen(n.norm.handle) for n in self.norms]
            try:
                for _, handle, trainable, lr_mult, wd_mult in self._settings():
                    be.set_param(handle, bool(trainable), lr_mult, wd_mult)
                for n in self.norms:
                    be.set_norm_stats_frozen(n.norm.handle, n.frozen, self.model)
                be.commit(self.model)
                checksums = self.take_checksums()
            except BaseException:
                self._put_back(saved, saved_norms, rollback=True)
                raise
            if self._saved is None:  # re-applying keeps the original settings for restore()
                self._saved, self._saved_norms = saved, saved_norms
            self._checksums = checksums
            self._live = self._live_settings()
            return self

    def restore(self) -> None:
        """Undo :meth:`apply`: trainability, multipliers and norm policy as they were before.

        A released torch norm layer takes the mode the model is in now (not the one it had at
        apply), so ``model.eval(); plan.restore()`` leaves an eval model.
        """
        self._restore(rollback=False)

    def rollback(self) -> None:
        """Undo an apply made by a call that then failed: :meth:`restore`, plus what apply dropped
        (torch gradients of tensors it froze), so the failed call leaves everything as it was."""
        self._restore(rollback=True)

    def _restore(self, rollback: bool) -> None:
        with model_lock(self.model):
            if self._saved is None:
                raise SpecError("restore: this plan was never applied")
            self._put_back(self._saved, self._saved_norms or [], rollback)
            self._saved = self._saved_norms = None
            self._checksums = {}
            self._live = None
            if APPLIED.get(self.model) is self:
                remember_applied(self.model, None)

    def _put_back(self, saved: dict[int, Any], saved_norms: list[bool], rollback: bool = False) -> None:
        for _, handle, *_ in self._settings():
            self.backend.restore(handle, saved[id(handle)], rollback)
        for n, frozen in zip(self.norms, saved_norms, strict=True):
            self.backend.set_norm_stats_frozen(n.norm.handle, frozen, self.model)
        self.backend.commit(self.model)

    def _live_settings(self) -> tuple[list[Any], list[bool]]:
        be = self.backend
        return ([be.snapshot(h) for _, h, *_ in self._settings()],
                [be.norm_stats_frozen(n.norm.handle) for n in self.norms])

    def is_live(self) -> bool:
        """Whether the model still has exactly the settings this plan applied (no other plan, and
        no hand-made change, altered trainability, multipliers or norm policy since)."""
        if self._saved is None or self._live is None:
            return False
        try:
            self.check_fresh("compare")
        except StalePlanError:
            return False
        return self._live_settings() == self._live

    def _watched(self) -> list[tuple[str, int]]:
        """('param' or 'stat', listing row) of every tensor that must not change."""
        watched = [("param", row) for row, _, trainable, *_ in self._settings() if not trainable]
        ls = self.listing
        state_rows = {id(ls.handles[row]): row for row, state in enumerate(ls.is_state) if state}
        for n in self.norms:
            if n.frozen:
                watched += [("stat", state_rows[id(h)]) for h in n.norm.stats if id(h) in state_rows]
        return watched

    def take_checksums(self) -> dict[str, str | None]:
        """Digests of every tensor the plan promises not to change (frozen weights, frozen norm
        statistics), for ``verify``; taken again after weights are loaded (``rebaseline``)."""
        ls = self.listing
        return {f"{kind}:{ls.names[row]}": _digest(self.backend.tensor_bytes(ls.handles[row]))
                for kind, row in self._watched()}


    # the names these had before they were shared across modules
    _check_fresh = check_fresh
    _rollback = rollback
    _take_checksums = take_checksums

    def verify(self) -> VerifyReport:
        """Compare frozen parameters and frozen norm statistics with their bytes at apply time."""
        if self._saved is None:
            raise SpecError("verify: apply the plan first (plan.apply())")
        now = self.take_checksums()
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
        names = self.listing.names
        for row, handle, trainable, lr_mult, wd_mult in self._settings():
            if not trainable:
                continue
            key = (lr_mult, wd_mult)
            if key not in by_mult:
                by_mult[key] = Group(params=[], lr_mult=lr_mult, wd_mult=wd_mult, param_names=[])
            by_mult[key]["params"].append(handle)
            by_mult[key]["param_names"].append(names[row])
        return list(by_mult.values())

    def param_groups(self, lr: float | None = None, weight_decay: float = 0.0,
                     lr_scale: bool = False) -> list[dict[str, Any]]:
        """torch-style parameter groups with each group's lr and weight decay already scaled.

        ``lr_scale`` adds the keys timm's schedulers read: ``lr_scale`` (the group's lr_mult) and
        ``initial_lr`` (the base lr). A timm scheduler computes one schedule from ``initial_lr``
        and sets each group's lr to it times ``lr_scale``, so warm-up start and floor scale with
        the group too. A torch lr scheduler also reads ``initial_lr`` and would then drop the
        multipliers: use these groups with a timm scheduler only.
        """
        if lr is not None:
            check_number(lr, "param_groups: lr", positive=True)
        check_number(weight_decay, "param_groups: weight_decay")
        validate.boolean(lr_scale, "param_groups: lr_scale")
        groups = self.groups()
        if lr is None and (lr_scale or any(g["lr_mult"] != 1.0 for g in groups)):
            raise SpecError("param_groups: give lr, so that each group's lr_mult can scale it")
        out = []
        for g in groups:
            group = dict(g)
            if lr is not None:
                group["lr"] = lr * g["lr_mult"]
            if lr_scale:
                group["lr_scale"] = g["lr_mult"]
                group["initial_lr"] = lr
            group["weight_decay"] = weight_decay * g["wd_mult"]
            out.append(group)
        return out

    def optimizer(self, name: Any = "sgd", lr: float | None = None, weight_decay: float = 0.0,
                  semantics: str | None = None, lr_scale: bool = False, **options: Any) -> Any:
        """Apply if needed, then build the framework's optimizer (torch) or Trainer (Gluon).

        ``semantics='torch'`` makes a Gluon Trainer follow torch's update rules (SGD momentum,
        Adam epsilon) on MXNet's fused operators (float32 hyper-parameters); ``'torch-exact'``
        in full precision (float64 parity runs); ``'native'`` keeps MXNet's own. torch optimizers
        are always torch's.
        Name, lr, weight decay and options are checked before the model is touched, and an apply
        made here is undone if building still fails. ``lr_scale``: see :meth:`param_groups`.
        """
        semantics = check_optimizer(self.backend, name, lr, weight_decay, semantics, options)
        validate.boolean(lr_scale, "optimizer: lr_scale")
        self.check_fresh("build an optimizer")
        applied_here = not self.applied
        if applied_here:
            self.apply()
        try:
            opt = self.backend.build_optimizer(self.param_groups(lr, weight_decay, lr_scale), name, lr,
                                               weight_decay, semantics=semantics, **options)
            if lr_scale and not all("lr_scale" in g for g in getattr(opt, "param_groups", [{}])):
                raise SpecError(f"optimizer: lr_scale is for optimizers with parameter groups that a "
                                f"timm scheduler drives; this {type(opt).__name__} has none: drop lr_scale")
            return opt
        except BaseException:
            if applied_here:
                self.rollback()
            raise

    def check(self, optimizer: Any) -> None:
        """Raise if ``optimizer`` holds frozen parameters or misses trainable ones."""
        if not self.backend.owns_optimizer(optimizer):
            raise SpecError(f"check: expected a {self.backend.name} optimizer, got {type(optimizer).__name__}")
        self.check_fresh("check an optimizer")
        held = {id(h) for h in self.backend.optimizer_handles(optimizer)}
        names = self.listing.names
        frozen = [names[row] for row, h, trainable, *_ in self._settings() if not trainable and id(h) in held]
        missing = [names[row] for row, h, trainable, *_ in self._settings() if trainable and id(h) not in held]
        problems = []
        if frozen:
            problems.append(f"it updates {len(frozen)} frozen parameter(s): {_few(frozen)} "
                            f"(was it built before freezing?)")
        if missing:
            problems.append(f"it misses {len(missing)} trainable parameter(s): {_few(missing)}")
        if problems:
            raise SpecError("optimizer does not match the plan: " + "; ".join(problems)
                            + ". Build it with plan.optimizer(...) or plan.param_groups(...)")
