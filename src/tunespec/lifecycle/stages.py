"""Staged unfreezing: :class:`StageRunner` runs the ``stages`` recipe section
(:mod:`tunespec.recipe.stages`) live.

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
from typing import Any, Callable, Mapping, Sequence, TypeVar

from tunespec.backend_api import DistributedWrapping, LRState, LRTable
from tunespec.dispatch import backend_for, check_backend_name
from tunespec.errors import SpecError
from tunespec.lifecycle import lrs
from tunespec.planning.optimizers import check_optimizer
from tunespec.planning.plan import Plan
from tunespec.recipe import validate as V
from tunespec.recipe.recipe import Recipe, load_recipe
from tunespec.recipe.stages import Stage
from tunespec.recipe.validate import excerpt

T = TypeVar("T")


class StageRunner:
    """Runs a recipe's stages on a live model and optimizer, in a hand-written loop::

        runner = tunespec.StageRunner("two_phase.yaml")
        model, opt = runner.start(model)           # stage 0 applied, optimizer (+ lr scheduler)
        for epoch in range(epochs):
            ...train, with runner.lr_scheduler.step() after each opt.step() in torch...
            model, opt = runner.step(epoch, model, opt, metric=val_loss)

    ``step`` is called after each epoch (``epoch`` counts from 0) with that epoch's metric, or
    after each optimizer step with ``step=`` for ``at_step`` stages. It returns the model and
    optimizer to go on with: the same objects, except a re-wrapped DDP model.

    Triggers: ``at_epoch: N`` starts the stage in the ``step(epoch=N-1, ...)`` call; ``at_step:
    K`` in the first call with ``step >= K`` (without ``step=`` while one is next: an error);
    ``on_plateau: P`` once P epochs in a row did not improve. Stages all due in one call start in
    order; only the first restores best weights (``restore_best``). Every public call is all or
    nothing: on failure it puts back weights, trainability, multipliers, norm modes, optimizer
    groups and state, lr scheduler and the runner's own state.

    The lrs come from :mod:`tunespec.lifecycle.lrs`: the runner keeps plain lr state (``self.lrs``),
    computes the table after a stage change and as a ``ramp`` grows, and the backend installs it.
    A torch loop that never steps ``lr_scheduler`` is caught at the next ``step``.
    ("Schedule" means learning rates only; this class was called ``Schedule`` before 0.2.0.)
    """

    def __init__(self, recipe: "Recipe | Mapping[str, Any] | str | Path", steps_per_epoch: int | None = None):
        if steps_per_epoch is not None:
            V.count(steps_per_epoch, "StageRunner: steps_per_epoch")
        self.recipe = load_recipe(recipe)
        section = self.recipe.sections.get("stages")
        self.mode = section.mode if section else "min"
        self.stages: tuple[Stage, ...] = (Stage("start", self.recipe.spec), *(section.stages if section else ()))
        self.steps_per_epoch = steps_per_epoch
        self.index = 0
        self.plan: Plan | None = None
        self.lr_scheduler: Any = None
        self.history: list[tuple[int, str]] = []  # (epoch, stage name) of each change
        self._reset_best()
        self.lrs = lrs.LRBook()  # the recipe's schedule joins it in start()
        for stage in self.stages:  # a stage's own schedule counted in epochs needs steps_per_epoch
            if stage.schedule is not None and stage.schedule.unit == "epoch" and not steps_per_epoch:
                raise SpecError(f"stage {stage.name!r}: its schedule counts epochs (unit: epoch); "
                                f"pass steps_per_epoch to StageRunner")
        lrs.check_stage_starts(self.stages, self.recipe.schedule, steps_per_epoch)

    # --- state ------------------------------------------------------------------------------
    @property
    def stage(self) -> Stage:
        """The stage the run is in now (``stages[0]`` until the first change)."""
        return self.stages[self.index]

    def _book(self) -> lrs.LRBook:
        return self.lrs  # read by the installed lr functions when called (resuming replaces it)

    def _reset_best(self) -> None:
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs besides weights and optimizer state (JSON-serialisable)."""
        return {"index": self.index, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": [list(h) for h in self.history],
                **lrs.book_state(self.lrs)}

    def load_lr_state(self, state: Mapping[str, Any]) -> None:
        """Resuming: where the ramps started and where the lr schedule last restarted (validated)."""
        self.lrs = lrs.book_from_state(self.lrs, state, len(self.stages))

    def reinstall_lrs(self, optimizer: Any, lr_scheduler: Any = None) -> None:
        """Install the ramped lrs again (resuming restored where the ramps started)."""
        if self.lrs.ramp_of:
            self._install(optimizer, lr_scheduler or self.lr_scheduler, self.plan)

    _FIELDS = ("index", "plan", "lr_scheduler", "best", "best_epoch", "bad_epochs", "best_state")

    def _save(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self._FIELDS}, "history": list(self.history),
                "lrs": self.lrs.copy()}

    def _load(self, saved: Mapping[str, Any]) -> None:
        for key, value in saved.items():
            setattr(self, key, value)

    def _all_or_nothing(self, model: Any, optimizer: Any, lr_scheduler: Any,
                        change: Callable[[list[Plan]], T], save_weights: bool) -> T:
        """Run ``change`` (which appends every plan it applies to the list it is given); if it
        fails, undo those plans, the optimizer's groups and state, the lr scheduler, the weights
        (when ``save_weights``) and this runner's state, then re-raise."""
        be = self.plan.backend
        sched = lr_scheduler if lr_scheduler is not None else self.lr_scheduler
        saved = self._save()
        opt_saved = be.optimizer_snapshot(optimizer, sched)
        weights = _weights(be, model) if save_weights else None
        applied: list[Plan] = []
        try:
            return change(applied)
        except BaseException:
            for plan in reversed(applied):
                if plan.applied:
                    plan.rollback()
            be.optimizer_rollback(optimizer, sched, opt_saved)
            if weights is not None:
                _put_weights(be, model, weights)
            self._load(saved)
            raise

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
                raise SpecError(f"StageRunner.start: this runner already started (now in stage "
                                f"{self.stage.name!r}); build a new tunespec.StageRunner(recipe) for a new run")
            self.plan.check_fresh("start the runner again")
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
            plan.check(optimizer, before_apply=True)  # stage 0 is applied below
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
            self.lrs = lrs.LRBook(lr_schedule, factors={id(d.tensor.handle): 1.0 for d in plan.trainable})
            table = LRTable(factor=lrs.schedule_function(self._book))
            lr_scheduler = be.install_lrs(optimizer, table) if clocked else None
        except BaseException:
            plan.rollback()
            if opt_saved is not None:
                be.optimizer_rollback(optimizer, None, opt_saved)
            self._load(saved)
            raise
        self.plan, self.index, self.history, self.lr_scheduler = plan, 0, [], lr_scheduler
        self._reset_best()
        return model, optimizer

    # --- stepping -----------------------------------------------------------------------------
    def _due_stages(self, epoch: int, step: int | None, bad_epochs: int) -> list[Stage]:
        """The stages due now, in order: several when a caller skipped epochs. A plateau counts the
        epochs of its own stage, so a stage that starts here has none yet. ``at_epoch: N`` is due
        once epoch N-1 has ended."""
        due: list[Stage] = []
        for nxt in self.stages[self.index + 1:]:
            if not (epoch + 1 >= nxt.at if nxt.trigger == "at_epoch" else
                    step is not None and step >= nxt.at if nxt.trigger == "at_step" else
                    (0 if due else bad_epochs) >= nxt.at):
                break
            due.append(nxt)
        return due

    def step(self, epoch: int, model: Any, optimizer: Any, metric: float | None = None,
             step: int | None = None, lr_scheduler: Any = None) -> tuple[Any, Any]:
        """Record ``metric`` for the epoch that ended, and start the next stage(s) when due.

        Checks come first (arguments, the lr scheduler advanced, the next stages' plans, best
        weights for ``restore_best``); the best weights are written only after every plan is
        built, and any failure after that puts everything back (see the class docstring).
        """
        if self.plan is None:
            raise SpecError("StageRunner.step: call runner.start(model) first")
        V.count(epoch, "StageRunner.step: epoch", minimum=0)
        if step is not None:
            V.count(step, "StageRunner.step: step", minimum=0)
        metric = None if metric is None else _metric(metric)
        be = self.plan.backend
        _check_objects(be, model, optimizer, "StageRunner.step")
        nxt = self.stages[self.index + 1] if self.index + 1 < len(self.stages) else None
        if nxt is not None and nxt.trigger == "at_step" and step is None:
            raise SpecError(f"StageRunner.step: the next stage {nxt.name!r} starts at_step {nxt.at}, so pass "
                            f"step= (the optimizer steps so far) to runner.step; without it the stage "
                            f"would never start")
        if self.lr_scheduler is not None and lr_scheduler in (None, self.lr_scheduler):
            state = be.lr_state(optimizer, self.lr_scheduler)
            self.lrs.steps = lrs.check_stepped(self.lrs, state, self.plan.spec.strict)
        best, best_epoch, bad, take_best = self.best, self.best_epoch, self.bad_epochs, False
        if metric is not None:
            delta = nxt.min_delta if nxt else 0.0
            if self.best is None or (metric < self.best - delta if self.mode == "min" else metric > self.best + delta):
                best, best_epoch, bad = metric, epoch, 0
                take_best = nxt is not None and nxt.restore_best
            else:
                bad += 1
        due = self._due_stages(epoch, step, bad)
        if not due:
            best_state = _weights(be, model) if take_best else self.best_state
            self.best, self.best_epoch, self.bad_epochs, self.best_state = best, best_epoch, bad, best_state
            self.lrs.last_epoch = epoch
            if not lrs.ramps_growing(self.lrs, self.stages, epoch):
                return model, optimizer
            return self._all_or_nothing(model, optimizer, lr_scheduler, lambda applied: self._install(
                optimizer, lr_scheduler or self.lr_scheduler, self.plan, epoch=epoch) or (model, optimizer),
                save_weights=False)
        first = due[0]
        if first.restore_best and not take_best and self.best_state is None:
            raise SpecError(f"stage {first.name!r} restores the best weights, but step() was never "
                            f"given a metric: pass metric= (e.g. the validation loss) every epoch")
        listing = be.listing(model)
        _check_same_model(self.plan, listing, "StageRunner.step")
        plans = [Plan.make(model, stage.spec, be, listing) for stage in due]  # every spec checked first
        # When this very epoch is the best, the weights are already the best ones.
        write_best = first.restore_best and not take_best
        best_state = self.best_state

        def change(applied: list[Plan]) -> tuple[Any, Any]:
            if write_best:
                _put_weights(be, model, best_state)
            m, o = model, optimizer
            self.lrs.last_epoch = epoch
            for stage, plan in zip(due, plans, strict=True):
                self.history.append((epoch, stage.name))
                m, o = self._advance(m, o, lr_scheduler, applied, plan, epoch)
            if lrs.ramps_growing(self.lrs, self.stages, epoch):
                self._install(o, lr_scheduler or self.lr_scheduler, self.plan, epoch=epoch)
            return m, o

        return self._all_or_nothing(model, optimizer, lr_scheduler, change, save_weights=write_best)

    def advance(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> tuple[Any, Any]:
        """Switch to the next stage now (``step`` calls this when it is due; resuming replays it).
        A per-epoch ramp the stage starts grows from the next ``step`` call on."""
        if self.plan is None:
            raise SpecError("StageRunner.advance: call runner.start(model) first")
        if self.index + 1 >= len(self.stages):
            raise SpecError(f"StageRunner.advance: no later stage to switch to (stage {self.stage.name!r} "
                            f"is the last of {len(self.stages)})")
        be = self.plan.backend
        _check_objects(be, model, optimizer, "StageRunner.advance")
        listing = be.listing(model)
        _check_same_model(self.plan, listing, "StageRunner.advance")
        plan = Plan.make(model, self.stages[self.index + 1].spec, be, listing)
        return self._all_or_nothing(
            model, optimizer, lr_scheduler,
            lambda applied: self._advance(model, optimizer, lr_scheduler, applied, plan), save_weights=False)

    def _advance(self, model: Any, optimizer: Any, lr_scheduler: Any, applied: list[Plan],
                 plan: Plan, epoch: int | None = None) -> tuple[Any, Any]:
        """One stage change; the caller undoes it (and the plans in ``applied``) if it fails."""
        index = self.index + 1
        nxt, book, be = self.stages[index], self.lrs, self.plan.backend
        sched = lr_scheduler or self.lr_scheduler
        before = {id(d.tensor.handle): d.tensor.handle for d in self.plan.trainable}
        fresh = [id(d.tensor.handle) for d in plan.trainable if id(d.tensor.handle) not in before]
        _check_lr_options(nxt, fresh, lr_scheduler not in (None, self.lr_scheduler), plan.spec.strict)
        state = be.lr_state(optimizer, sched)
        applied.append(plan.apply())
        after = {id(d.tensor.handle): d for d in plan.trainable}
        book.factors = {k: book.factors.get(k, nxt.lr_factor) for k in after}
        book.ramp_of = {k: i for k, i in book.ramp_of.items() if k in after}
        if nxt.ramp is not None:
            book.ramp_of.update({key: index for key in fresh})
            book.ramp_from[index] = state.step if nxt.ramp.per == "step" else epoch
        if nxt.resets_schedule:
            book.offset = state.step
            if nxt.schedule is not None:
                book.schedule = nxt.schedule.in_steps(self.steps_per_epoch)
        added = [d.tensor.handle for k, d in after.items() if k not in before]
        removed = [h for k, h in before.items() if k not in after]
        self._install(optimizer, sched, plan, added, removed, epoch, state, nxt.resets_schedule)
        if (added or removed) and isinstance(be, DistributedWrapping) and be.is_distributed_wrapper(model):
            model = be.rewrap(model)
        self.plan = plan
        self.index += 1
        self._reset_best()
        return model, optimizer

    def _install(self, optimizer: Any, sched: Any, plan: Plan, added: Sequence[Any] = (),
                 removed: Sequence[Any] = (), epoch: int | None = None, state: LRState | None = None,
                 restarted: bool = False) -> None:
        """Give every trainable parameter its multiplier (Gluon reads lr_mult from the Parameter),
        compute the lr table and let the backend install it."""
        be = plan.backend
        state = state if state is not None else be.lr_state(optimizer, sched)
        for d in plan.trainable:
            mult = lrs.multiplier(self.lrs, self.stages, id(d.tensor.handle), d.lr_mult, epoch)
            be.set_param(d.tensor.handle, True, mult, d.wd_mult)
        trainable = [(d.tensor.handle, d.name, d.lr_mult, d.wd_mult) for d in plan.trainable]
        table = lrs.stage_table(self.lrs, self._book, self.stages, state, trainable, epoch, restarted,
                                sched is not None, added, removed)
        be.install_lrs(optimizer, table, sched)

    def rebaseline(self) -> None:
        """Take the frozen tensors' checksums again (after weights were loaded into the model)."""
        self.plan._checksums = self.plan.take_checksums()



def _check_objects(be: Any, model: Any, optimizer: Any, where: str) -> None:
    if not be.owns(model):
        raise SpecError(f"{where}: the model is a {type(model).__name__}, not a {be.name} model "
                        f"(the runner started on one)")
    if not be.owns_optimizer(optimizer):
        raise SpecError(f"{where}: optimizer is a {type(optimizer).__name__}, not a {be.name} "
                        f"optimizer; pass the one runner.start returned")


def _check_same_model(plan: Plan, listing: Any, where: str) -> None:
    """A stage change on another model (or one whose parameters were replaced) would move the
    wrong tensors into the optimizer; a wrapper around the same parameters (DDP) is fine."""
    if Plan._fingerprint(listing) != plan._identity:
        raise SpecError(f"{where}: this model does not hold the parameters the runner was started "
                        f"on (another model, or layers replaced since); pass the model "
                        f"runner.start returned, or start a new StageRunner")


def _check_lr_options(stage: Stage, fresh: list[int], other_scheduler: bool, strict: bool) -> None:
    """A ramp needs parameters to ramp; a restart needs the runner's own lr scheduler."""
    if stage.ramp is not None and not fresh:
        message = (f"stage {stage.name!r}: its ramp has no effect, the stage unfreezes no parameter "
                   f"that was frozen; remove the ramp or unfreeze more")
        if strict:
            raise SpecError(message)
        warnings.warn(message, stacklevel=4)
    if stage.resets_schedule and other_scheduler:
        raise SpecError(f"stage {stage.name!r} restarts the lr schedule, which only the runner's own "
                        f"lr scheduler (runner.lr_scheduler) follows; leave lr_scheduler out")


def _weights(be: Any, model: Any) -> dict[str, Any]:
    """The model's weights by canonical name (the best epoch's, for restore_best)."""
    return {t.canonical: be.read(t.handle) for t in be.listing(model).tensors}


def _put_weights(be: Any, model: Any, state: Mapping[str, Any]) -> None:
    for t in be.listing(model).tensors:
        if t.canonical in state:
            be.write(t.handle, state[t.canonical])


def _metric(metric: Any) -> float:
    """The epoch's metric as a finite float."""
    if isinstance(metric, bool) or not isinstance(metric, (int, float)) and not hasattr(metric, "__float__"):
        raise SpecError(f"StageRunner.step: metric must be a number, got {excerpt(metric)}")
    try:
        value = float(metric)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(f"StageRunner.step: metric must be a number, got {excerpt(metric)}") from None
    if not math.isfinite(value):
        raise SpecError(f"StageRunner.step: metric {value!r} is not a finite number")
    return value

