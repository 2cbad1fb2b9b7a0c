"""The lrs of a staged run: what :class:`tunespec.StageRunner` installs after a stage change and
as ramps grow. The core decides every number here (each torch group's lr and initial lr, each
Gluon Parameter's ``lr_mult``, per-step factor functions); the backends only install them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from tunespec.backend_api import Group
from tunespec.errors import SpecError

if TYPE_CHECKING:
    from tunespec.planning.plan import Plan


class StageLRs:
    """Mixed into StageRunner: its stages, clock, factors and ramp tables are StageRunner's."""

    def load_lr_state(self, state: Mapping[str, Any]) -> None:
        """Resuming: where the ramps started and where the lr schedule last restarted."""
        ramps = state.get("ramps", {})
        offset = state.get("lr_offset", 0)
        if not isinstance(ramps, Mapping) or isinstance(offset, bool) or not isinstance(offset, int):
            raise SpecError("resume: the checkpoint's ramp / lr schedule state is not valid")
        try:
            self._ramp_from = {int(k): None if v is None else int(v) for k, v in ramps.items()}
        except (TypeError, ValueError):
            raise SpecError("resume: the checkpoint's ramp state is not valid") from None
        self.clock.offset = offset
        last = state.get("last_epoch")
        self._last_epoch = last if isinstance(last, int) and not isinstance(last, bool) else None

    def _install(self, optimizer: Any, sched: Any, plan: Plan, added: list[Any], removed: list[Any],
                 epoch: int | None, state: Mapping[str, Any] | None = None, restarted: bool = False) -> None:
        """Give every trainable parameter its multipliers (Gluon reads lr_mult from the Parameter)
        and every optimizer group its lr (torch), then let the backend install them."""
        be = plan.backend
        state = state if state is not None else be.lr_state(optimizer, sched)
        for d in plan.trainable:
            be.set_param(d.tensor.handle, True, self._multiplier(d, epoch), d.wd_mult)
        current = be.optimizer_groups(optimizer, sched)
        layout = self._layout(current, plan)
        self._group_lrs(layout, current, sched, state, epoch, restarted)
        be.restage_optimizer(optimizer, layout, added, removed, sched)

    def _ramp_k(self, index: int, epoch: int | None) -> int:
        """How many times stage ``index``'s per-epoch ramp has grown by now: once per epoch since
        the step(epoch) call that started it (``epoch`` None: the last epoch step() was given)."""
        start = self._ramp_from.get(index)
        if start is None:
            if epoch is None:
                return 0  # started by advance(), no step() since
            # started by advance() after the previous step(): it ran the epoch that just ended
            start = self._ramp_from[index] = epoch - 1
        now = epoch if epoch is not None else self._last_epoch
        return 0 if now is None else max(now - start, 0)

    def _target(self, key: tuple, base: float) -> float:
        """A group's lr without its ramp: base lr x lr_mult x lr_factor."""
        return base * key[0] * key[2]

    def _ramped(self, ramp_index: int | None, target: float, epoch: int | None) -> tuple[float, Any]:
        """(initial lr, per-step factor function or None) of a group under stage ``ramp_index``'s ramp."""
        if ramp_index is None:
            return target, None
        ramp = self.stages[ramp_index].ramp
        if ramp.per == "epoch":
            return ramp.lr(target, self._ramp_k(ramp_index, epoch)), None
        ratio, clock = self._step_ramp(ramp_index), self.clock

        def factor(t: int) -> float:
            return clock.factor(t) * ratio(t)

        return target, factor

    def _step_ramp(self, ramp_index: int) -> Callable[[int], float]:
        """A per-step ramp's factor at optimizer step t, reading where the ramp started when called
        (resuming restores that)."""
        runner, ramp = self, self.stages[ramp_index].ramp

        def ratio(t: int) -> float:
            start = runner._ramp_from.get(ramp_index) or 0
            return ramp.lr(1.0, max(t - start, 0))

        return ratio

    def _multiplier(self, d: Any, epoch: int | None) -> float:
        """A trainable parameter's Gluon lr_mult: lr_mult x lr_factor, ramped where it ramps."""
        key = id(d.tensor.handle)
        ramp_index = self._ramp_of.get(key)
        mult = d.lr_mult * self._factors[key]
        if ramp_index is None:
            return mult
        ramp = self.stages[ramp_index].ramp
        if ramp.per == "step":
            return ramp.lr(mult, 0)  # the lr scheduler grows it from here
        return ramp.lr(mult, self._ramp_k(ramp_index, epoch))

    def _layout(self, current: list[Group], plan: Plan) -> list[Group]:
        """Every trainable parameter's group: existing groups keep their place, new ones follow."""
        key_of = [(g["lr_mult"], g["wd_mult"], g["lr_factor"], g.get("ramp")) for g in current]
        layout = [Group(params=[], param_names=[], lr_mult=k[0], wd_mult=k[1], lr_factor=k[2], ramp=k[3])
                  for k in key_of]
        for d in plan.trainable:
            key = (d.lr_mult, d.wd_mult, self._factors[id(d.tensor.handle)],
                   self._ramp_of.get(id(d.tensor.handle)))
            if key not in key_of:
                key_of.append(key)
                layout.append(Group(params=[], param_names=[], lr_mult=key[0], wd_mult=key[1],
                                    lr_factor=key[2], ramp=key[3]))
            group = layout[key_of.index(key)]
            group["params"].append(d.tensor.handle)
            group["param_names"].append(d.name)
        return layout

    def _group_lrs(self, layout: list[Group], current: list[Group], sched: Any, state: Mapping[str, Any],
                   epoch: int | None, restarted: bool) -> None:
        """Each group's lr and initial lr (the lr scheduler's base lr), where they change: new groups,
        ramped groups, and every group when the lr schedule restarts. Existing groups keep theirs
        otherwise. The lr is the initial lr x the schedule's factor now."""
        base, wd = state["lr"], state["weight_decay"]
        if base is None:
            return
        scale = 1.0
        if sched is not None and current and current[0]["initial_lr"]:
            scale = current[0]["lr"] / current[0]["initial_lr"]
        if restarted:
            scale = self.clock.factor(state["step"])
        for i, g in enumerate(layout):
            key = (g["lr_mult"], g["wd_mult"], g["lr_factor"], g["ramp"])
            old = current[i] if i < len(current) else None
            if old is not None and g["ramp"] is None and not restarted:
                continue
            target = self._target(key, base)
            initial, factor = self._ramped(g["ramp"], target, epoch)
            if old is not None and g["ramp"] is None and old["initial_lr"] is not None:
                initial = old["initial_lr"]  # a restart keeps the group's own base lr
            g["initial_lr"], g["lr"] = initial, initial * scale
            if factor is not None:  # a per-step ramp: torch's LambdaLR and Gluon's adapter grow it
                g["lr"] = initial * factor(state["step"])
                ratio, mult = self._step_ramp(g["ramp"]), g["lr_mult"] * g["lr_factor"]
                g["factor"] = factor
                g["lr_mult_at"] = lambda t, ratio=ratio, mult=mult: mult * ratio(t)
            if old is None and wd is not None:
                g["weight_decay"] = wd * g["wd_mult"]

    def reinstall_lrs(self, optimizer: Any, lr_scheduler: Any = None) -> None:
        """Install the ramped lrs again (resuming restored where the ramps started)."""
        if self._ramp_of:
            self._install(optimizer, lr_scheduler or self.lr_scheduler, self.plan, [], [], None)

    def _growing(self, epoch: int) -> bool:
        """Whether a per-epoch ramp may still be below its ceiling (so this step() call grows it);
        one growth past the count that reaches it, so rounding never stops a ramp short."""
        for i in set(self._ramp_of.values()):
            ramp = self.stages[i].ramp
            if ramp.per == "epoch" and self._ramp_k(i, epoch) <= ramp.steps_to_ceiling() + 1:
                return True
        return False

    def _grow(self, epoch: int, model: Any, optimizer: Any, lr_scheduler: Any) -> tuple[Any, Any]:
        """Per-epoch ramps take the lr of their next epoch."""
        self._install(optimizer, lr_scheduler or self.lr_scheduler, self.plan, [], [], epoch)
        return model, optimizer
