"""Staged unfreezing: :class:`StageRunner` runs the ``stages`` recipe section
(:mod:`tunespec.recipe.stages`) live.

```yaml
preset: heads                      # stage 0: the recipe's own spec
optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
stages:
  mode: min                        # the metric given to step() improves downwards (a loss)
  then:
    - {at_epoch: 3, preset: '4+', lr_factor: 0.1, restore_best: true}
    - {on_plateau: 2, preset: all, restore_best: true}
```

A stage switches to its own spec (the spec keys in its entry; ``lr_mult``, ``wd_mult``,
``groups``, ``bn`` and ``strict`` carry over from the recipe unless given), optionally after
restoring the weights of the best epoch of the stage that ends, and gives parameters it newly
unfreezes ``lr_factor`` times their lr, or a ``ramp`` up to it; ``restart`` starts the lr schedule
again at the stage's first step, ``schedule`` gives the stage its own (see :mod:`tunespec.recipe.ramps`).
The optimizer is changed in place where the framework allows: in torch newly trainable parameters
join as new param groups (existing groups and their momentum/Adam state stay, parameters whose
multipliers change move between groups with their state, newly frozen ones leave with theirs),
and the lr scheduler covers the new groups; a Gluon Trainer gets the new parameters appended
(indices, optimizer and kvstore state of the others unchanged; newly frozen ones stay listed but
are skipped, as Gluon skips every ``grad_req='null'`` parameter). A DDP-wrapped model is
re-wrapped, because DDP fixes the parameters it all-reduces when it is built.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from tunespec.backend_api import DistributedWrapping
from tunespec.dispatch import backend_for, check_backend_name
from tunespec.errors import SpecError
from tunespec.lifecycle.ramps import LRClock
from tunespec.lifecycle.stage_lrs import StageLRs
from tunespec.planning.optimizers import check_optimizer
from tunespec.planning.plan import Plan
from tunespec.recipe import validate as V
from tunespec.recipe.recipe import Recipe, load_recipe
from tunespec.recipe.stages import Stage
from tunespec.recipe.validate import excerpt

T = TypeVar("T")


class StageRunner(StageLRs):
    """Runs a recipe's stages on a live model and optimizer, in a hand-written loop::

        schedule = tunespec.StageRunner("two_phase.yaml")
        model, opt = schedule.start(model)           # stage 0 applied, optimizer (+ lr scheduler)
        for epoch in range(epochs):
            ...train, with schedule.lr_scheduler.step() after each opt.step() in torch...
            model, opt = schedule.step(epoch, model, opt, metric=val_loss)

    ``step`` is called after each epoch (``epoch`` counts from 0) with that epoch's metric, or
    after each optimizer step with ``step=`` for ``at_step`` stages. It returns the model and
    optimizer to go on with: the same objects, except a re-wrapped DDP model.

    Triggers: ``at_epoch: N`` starts the stage at the beginning of epoch N, i.e. in the
    ``step(epoch=N-1, ...)`` call; ``at_step: K`` in the first call with ``step >= K`` (a call
    without ``step=`` while an ``at_step`` stage is next is an error, not a silent no-op);
    ``on_plateau: P`` once P epochs in a row did not improve. Stages that are all due in one call
    (epochs were skipped) start one after the other in that call; only the first of them restores
    best weights (``restore_best``): the ones after it had no epoch of their own. Every public call is all or
    nothing: it checks what it can first and, if a later part fails, puts back the weights,
    trainability, multipliers, norm modes, optimizer groups and state, lr scheduler and this
    schedule's own state.

    The core decides every lr: after a stage change (and as a ``ramp`` grows) it computes each
    group's lr and initial lr (torch) or each Parameter's ``lr_mult`` (Gluon) and the backend
    installs them. (This class was called ``Schedule``; that name is a deprecated alias: learning-
    rate schedules are :class:`tunespec.LRSchedule` and :func:`tunespec.scheduler`.)
    """

    def __init__(self, recipe: "Recipe | Mapping[str, Any] | str | Path", steps_per_epoch: int | None = None):
        if steps_per_epoch is not None:
            V.count(steps_per_epoch, "StageRunner: steps_per_epoch")
        self.recipe = load_recipe(recipe)
        section = self.recipe.sections.get("stages")
        later = section.stages if section else ()
        self.mode = section.mode if section else "min"
        self.stages: tuple[Stage, ...] = (Stage("start", self.recipe.spec), *later)
        self.steps_per_epoch = steps_per_epoch
        self.index = 0
        self.plan: Plan | None = None
        self.lr_scheduler: Any = None
        self.history: list[tuple[int, str]] = []  # (epoch, stage name) of each change
        self._reset_best()
        self._factors: dict[int, float] = {}  # id(parameter) -> lr factor it joined with
        self._ramp_of: dict[int, int] = {}  # id(parameter) -> index of the stage whose ramp it follows
        # stage index -> epoch of the step() call that started it (None: not known yet, see _grow),
        # or for a per-step ramp the optimizer step it started at
        self._ramp_from: dict[int, int | None] = {}
        self._last_epoch: int | None = None  # the epoch of the last step() call
        self.clock = LRClock()  # the recipe's schedule joins it in start()
        self._check_steps_per_epoch()

    # --- state ------------------------------------------------------------------------------
    @property
    def stage(self) -> Stage:
        return self.stages[self.index]

    def _reset_best(self) -> None:
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, Any] | None = None

    def _check_steps_per_epoch(self) -> None:
        """A stage's own schedule counted in epochs needs steps_per_epoch, like the recipe's."""
        for stage in self.stages:
            if stage.schedule is not None:
                try:
                    stage.schedule.in_steps(self.steps_per_epoch)
                except SpecError:
                    raise SpecError(f"stage {stage.name!r}: its schedule counts epochs (unit: epoch); "
                                    f"pass steps_per_epoch to StageRunner") from None

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs besides weights and optimizer state (JSON-serialisable)."""
        out = {"index": self.index, "best": self.best, "best_epoch": self.best_epoch,
               "bad_epochs": self.bad_epochs, "history": [list(h) for h in self.history]}
        if self._ramp_from or self.clock.offset:
            out["ramps"] = {str(k): v for k, v in self._ramp_from.items()}
            out["lr_offset"] = self.clock.offset
            out["last_epoch"] = self._last_epoch
        return out

    _FIELDS = ("index", "plan", "lr_scheduler", "best", "best_epoch", "bad_epochs", "best_state",
               "_last_epoch")
    _COPIED = ("history", "_factors", "_ramp_of", "_ramp_from")

    def _save(self) -> dict[str, Any]:
        saved = {k: getattr(self, k) for k in self._FIELDS}
        saved.update({k: type(getattr(self, k))(getattr(self, k)) for k in self._COPIED})
        return {**saved, "_clock": (self.clock.schedule, self.clock.offset)}

    def _load(self, saved: Mapping[str, Any]) -> None:
        for key, value in saved.items():
            if key == "_clock":
                self.clock.schedule, self.clock.offset = value
            else:
                setattr(self, key, type(value)(value) if key in self._COPIED else value)

    def _all_or_nothing(self, model: Any, optimizer: Any, lr_scheduler: Any,
                        change: Callable[[list[Plan]], T], save_weights: bool) -> T:
        """Run ``change`` (which appends every plan it applies to the list it is given); if it
        fails, undo those plans, the optimizer's groups and state, the lr scheduler, the weights
        (when ``save_weights``) and this schedule's state, then re-raise."""
        be = self.plan.backend
        sched = lr_scheduler if lr_scheduler is not None else self.lr_scheduler
        saved = self._save()
        opt_saved = be.optimizer_snapshot(optimizer, sched)
        weights = self._weights(model) if save_weights else None
        applied: list[Plan] = []
        try:
            return change(applied)
        except BaseException:
            for plan in reversed(applied):
                if plan.applied:
                    plan.rollback()
            be.optimizer_rollback(optimizer, sched, opt_saved)
            if weights is not None:
                self._put_weights(model, weights)
            self._load(saved)
            raise

    def _check_objects(self, be: Any, model: Any, optimizer: Any, where: str) -> None:
        if not be.owns(model):
            raise SpecError(f"{where}: the model is a {type(model).__name__}, not a {be.name} model "
                            f"(the schedule started on one)")
        if not be.owns_optimizer(optimizer):
            raise SpecError(f"{where}: optimizer is a {type(optimizer).__name__}, not a {be.name} "
                            f"optimizer; pass the one schedule.start returned")

    def _check_same_model(self, listing: Any, where: str) -> None:
        """A stage change on another model (or one whose parameters were replaced) would move the
        wrong tensors into the optimizer; a wrapper around the same parameters (DDP) is fine."""
        if Plan._fingerprint(listing) != self.plan._identity:
            raise SpecError(f"{where}: this model does not hold the parameters the schedule was started "
                            f"on (another model, or layers replaced since); pass the model "
                            f"schedule.start returned, or start a new StageRunner")

    # --- starting -----------------------------------------------------------------------------
    def start(self, model: Any, optimizer: Any = None, backend: str | None = None) -> tuple[Any, Any]:
        """Apply stage 0 and build the optimizer (and lr scheduler) the recipe describes.

        An ``optimizer`` built elsewhere is checked against stage 0 and used instead. Everything
        (optimizer section and options, lr schedule, a given optimizer) is checked before the
        model changes. Starting again is allowed only while still in stage 0 on the same,
        unchanged model (it re-applies stage 0); otherwise build a new StageRunner.
        """
        check_backend_name(backend, "StageRunner.start: backend")
        if self.plan is not None:
            if self.index > 0 or self.plan.model is not model:
                raise SpecError(f"StageRunner.start: this schedule already started (now in stage "
                                f"{self.stage.name!r}); build a new tunespec.StageRunner(recipe) for a new run")
            self.plan.check_fresh("start the schedule again")
        be = backend_for(model, backend)
        plan = Plan.make(model, self.stages[0].spec, be)  # planning changes nothing
        o = self.recipe.optimizer
        if optimizer is None:
            if o is None or o.lr is None:
                raise SpecError("StageRunner.start: the recipe has no optimizer section with an lr; add "
                                "one, or pass optimizer= built with tunespec.optimizer(model, ...)")
            check_optimizer(be, o.name, o.lr, o.weight_decay, o.semantics, o.options)
        else:
            if not be.owns_optimizer(optimizer):
                raise SpecError(f"StageRunner.start: optimizer is a {type(optimizer).__name__}, not a "
                                f"{be.name} optimizer")
            plan.check(optimizer)
        lr_schedule = None
        if self.recipe.schedule is not None:
            lr_schedule = self.recipe.schedule.in_steps(self.steps_per_epoch)
        # Stages that restart the schedule, give their own or ramp per step need an lr scheduler
        # even when the recipe's schedule is constant (factor 1 until then).
        clocked = lr_schedule is not None or any(
            st.resets_schedule or (st.ramp is not None and st.ramp.per == "step") for st in self.stages)
        saved = self._save()
        opt_saved = None if optimizer is None else be.optimizer_snapshot(optimizer, None)
        plan.apply()
        try:
            if optimizer is None:
                optimizer = plan.optimizer(o.name, lr=o.lr, weight_decay=o.weight_decay,
                                           semantics=o.semantics, **dict(o.options))
            self.clock.schedule, self.clock.offset = lr_schedule, 0
            lr_scheduler = be.attach_schedule(optimizer, self.clock.function()) if clocked else None
        except BaseException:
            plan.rollback()
            if opt_saved is not None:
                be.optimizer_rollback(optimizer, None, opt_saved)
            self._load(saved)
            raise
        self.plan, self.index, self.history, self.lr_scheduler = plan, 0, [], lr_scheduler
        self._reset_best()
        self._factors = {id(d.tensor.handle): 1.0 for d in plan.trainable}
        self._ramp_of, self._ramp_from = {}, {}
        return model, optimizer

    # --- stepping -----------------------------------------------------------------------------
    def _improved(self, metric: float, delta: float) -> bool:
        if self.best is None:
            return True
        return metric < self.best - delta if self.mode == "min" else metric > self.best + delta

    def _due(self, nxt: Stage, epoch: int, step: int | None, bad_epochs: int | None = None) -> bool:
        if nxt.trigger == "at_epoch":
            return epoch + 1 >= nxt.at  # epoch N begins once epoch N-1 has ended
        if nxt.trigger == "at_step":
            return step is not None and step >= nxt.at
        return (self.bad_epochs if bad_epochs is None else bad_epochs) >= nxt.at

    def _due_stages(self, epoch: int, step: int | None, bad_epochs: int) -> list[Stage]:
        """The stages due now, in order: several when a caller skipped epochs. A plateau counts the
        epochs of its own stage, so a stage that starts here has none yet."""
        due: list[Stage] = []
        for stage in self.stages[self.index + 1:]:
            if not self._due(stage, epoch, step, 0 if due else bad_epochs):
                break
            due.append(stage)
        return due

    def step(self, epoch: int, model: Any, optimizer: Any, metric: float | None = None,
             step: int | None = None, lr_scheduler: Any = None) -> tuple[Any, Any]:
        """Record ``metric`` for the epoch that ended, and start the next stage(s) when due.

        Checks come first (arguments, the next stages' plans, best weights for ``restore_best``);
        the best weights are written only after every plan is built, and any failure after that
        puts everything back (see the class docstring).
        """
        if self.plan is None:
            raise SpecError("StageRunner.step: call schedule.start(model) first")
        V.count(epoch, "StageRunner.step: epoch", minimum=0)
        if step is not None:
            V.count(step, "StageRunner.step: step", minimum=0)
        if metric is not None:
            if isinstance(metric, bool) or not isinstance(metric, (int, float)) and not hasattr(metric, "__float__"):
                raise SpecError(f"StageRunner.step: metric must be a number, got {excerpt(metric)}")
            try:
                metric = float(metric)
            except (TypeError, ValueError, OverflowError):
                raise SpecError(f"StageRunner.step: metric must be a number, got {excerpt(metric)}") from None
            if not math.isfinite(metric):
                raise SpecError(f"StageRunner.step: metric {metric!r} is not a finite number")
        be = self.plan.backend
        self._check_objects(be, model, optimizer, "StageRunner.step")
        nxt = self.stages[self.index + 1] if self.index + 1 < len(self.stages) else None
        if nxt is not None and nxt.trigger == "at_step" and step is None:
            raise SpecError(f"StageRunner.step: the next stage {nxt.name!r} starts at_step {nxt.at}, so pass "
                            f"step= (the optimizer steps so far) to schedule.step; without it the stage "
                            f"would never start")
        best, best_epoch, bad, take_best = self.best, self.best_epoch, self.bad_epochs, False
        if metric is not None:
            if self._improved(metric, nxt.min_delta if nxt else 0.0):
                best, best_epoch, bad = metric, epoch, 0
                take_best = nxt is not None and nxt.restore_best
            else:
                bad += 1
        due = self._due_stages(epoch, step, bad)
        if not due:
            best_state = self._weights(model) if take_best else self.best_state
            self.best, self.best_epoch, self.bad_epochs, self.best_state = best, best_epoch, bad, best_state
            self._last_epoch = epoch
            if not self._growing(epoch):
                return model, optimizer
            return self._all_or_nothing(model, optimizer, lr_scheduler, lambda applied: self._grow(
                epoch, model, optimizer, lr_scheduler), save_weights=False)
        first = due[0]
        if first.restore_best and not take_best and self.best_state is None:
            raise SpecError(f"stage {first.name!r} restores the best weights, but step() was never "
                            f"given a metric: pass metric= (e.g. the validation loss) every epoch")
        listing = be.listing(model)
        self._check_same_model(listing, "StageRunner.step")
        plans = [Plan.make(model, stage.spec, be, listing) for stage in due]  # every spec checked first
        # When this very epoch is the best, the weights are already the best ones.
        write_best = first.restore_best and not take_best
        best_state = self.best_state

        def change(applied: list[Plan]) -> tuple[Any, Any]:
            if write_best:
                self._put_weights(model, best_state)
            m, o = model, optimizer
            self._last_epoch = epoch
            for stage, plan in zip(due, plans, strict=True):
                self.history.append((epoch, stage.name))
                m, o = self._advance(m, o, lr_scheduler, applied, plan, epoch)
            if self._growing(epoch):
                self._grow(epoch, m, o, lr_scheduler)
            return m, o

        return self._all_or_nothing(model, optimizer, lr_scheduler, change, save_weights=write_best)

    def advance(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> tuple[Any, Any]:
        """Switch to the next stage now (``step`` calls this when it is due; resuming replays it).
        A per-epoch ramp the stage starts grows from the next ``step`` call on."""
        if self.plan is None:
            raise SpecError("StageRunner.advance: call schedule.start(model) first")
        if self.index + 1 >= len(self.stages):
            raise SpecError(f"StageRunner.advance: no later stage to switch to (stage {self.stage.name!r} "
                            f"is the last of {len(self.stages)})")
        be = self.plan.backend
        self._check_objects(be, model, optimizer, "StageRunner.advance")
        listing = be.listing(model)
        self._check_same_model(listing, "StageRunner.advance")
        plan = Plan.make(model, self.stages[self.index + 1].spec, be, listing)
        return self._all_or_nothing(
            model, optimizer, lr_scheduler,
            lambda applied: self._advance(model, optimizer, lr_scheduler, applied, plan), save_weights=False)

    def _advance(self, model: Any, optimizer: Any, lr_scheduler: Any, applied: list[Plan],
                 plan: Plan, epoch: int | None = None) -> tuple[Any, Any]:
        """One stage change; the caller undoes it (and the plans in ``applied``) if it fails."""
        index = self.index + 1
        nxt = self.stages[index]
        be = self.plan.backend
        sched = lr_scheduler or self.lr_scheduler
        before = {id(d.tensor.handle): d.tensor.handle for d in self.plan.trainable}
        fresh = [id(d.tensor.handle) for d in plan.trainable if id(d.tensor.handle) not in before]
        self._check_lr_options(nxt, fresh, lr_scheduler, plan)
        state = be.lr_state(optimizer, sched)
        applied.append(plan.apply())
        after = {id(d.tensor.handle): d for d in plan.trainable}
        for table in (self._factors, self._ramp_of):
            for key in [k for k in table if k not in after]:
                del table[key]
        for key in after:
            self._factors.setdefault(key, nxt.lr_factor)
        if nxt.ramp is not None:
            self._ramp_of.update({key: index for key in fresh})
            self._ramp_from[index] = state["step"] if nxt.ramp.per == "step" else epoch
        if nxt.resets_schedule:
            self.clock.offset = state["step"]
            if nxt.schedule is not None:
                self.clock.schedule = nxt.schedule.in_steps(self.steps_per_epoch)
        added = [d.tensor.handle for k, d in after.items() if k not in before]
        removed = [h for k, h in before.items() if k not in after]
        self._install(optimizer, sched, plan, added, removed, epoch, state, nxt.resets_schedule)
        if (added or removed) and isinstance(be, DistributedWrapping) and be.is_distributed_wrapper(model):
            model = be.rewrap(model)
        self.plan = plan
        self.index += 1
        self._reset_best()
        return model, optimizer

    def _check_lr_options(self, stage: Stage, fresh: list[int], lr_scheduler: Any, plan: Plan) -> None:
        """A ramp needs parameters to ramp; a restart needs the runner's own lr scheduler."""
        if stage.ramp is not None and not fresh:
            message = (f"stage {stage.name!r}: its ramp has no effect, the stage unfreezes no parameter "
                       f"that was frozen; remove the ramp or unfreeze more")
            if plan.spec.strict:
                raise SpecError(message)
            warnings.warn(message, stacklevel=4)
        if stage.resets_schedule and lr_scheduler is not None and lr_scheduler is not self.lr_scheduler:
            raise SpecError(f"stage {stage.name!r} restarts the lr schedule, which only the runner's own "
                            f"lr scheduler (schedule.lr_scheduler) follows; leave lr_scheduler out")

    def rebaseline(self) -> None:
        """Take the frozen tensors' checksums again (after weights were loaded into the model)."""
        self.plan._checksums = self.plan.take_checksums()

    # --- best weights -------------------------------------------------------------------------
    def _weights(self, model: Any) -> dict[str, Any]:
        be = self.plan.backend
        return {t.canonical: be.read(t.handle) for t in be.listing(model).tensors}

    def _put_weights(self, model: Any, state: Mapping[str, Any]) -> None:
        be = self.plan.backend
        for t in be.listing(model).tensors:
            if t.canonical in state:
                be.write(t.handle, state[t.canonical])


class Schedule(StageRunner):
    """Deprecated name of :class:`StageRunner` (it read like an lr schedule)."""

    def __init__(self, recipe: "Recipe | Mapping[str, Any] | str | Path", steps_per_epoch: int | None = None):
        warnings.warn("tunespec.Schedule is now tunespec.StageRunner (it runs a recipe's stages; lr "
                      "schedules are tunespec.LRSchedule and tunespec.scheduler()); the old name will "
                      "be removed", DeprecationWarning, stacklevel=2)
        super().__init__(recipe, steps_per_epoch)
