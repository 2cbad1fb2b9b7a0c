"""Save and resume a fine-tuning run: weights, optimizer and lr-scheduler state, the current stage.

One file per checkpoint, written to a temporary file in the same directory and renamed over the
target, so a crash mid-save leaves the previous checkpoint as it was. Resuming rebuilds the
optimizer the way the run built it (stage 0, then every stage change up to the saved one), so the
param groups and their state line up exactly with the saved ones, also after a stage unfroze layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from .dispatch import backend_for
from .errors import SpecError
from .stages import Schedule

FORMAT = "tunespec-run/1"


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, model: Any, optimizer: Any, schedule: Schedule | None = None,
                    lr_scheduler: Any = None, epoch: int | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write model, optimizer, lr scheduler and schedule state to ``path`` atomically.

    ``extra`` is anything JSON-serialisable (the data loader's position, a metric history).
    """
    be = backend_for(model)
    meta: dict[str, Any] = {"format": FORMAT, "backend": be.name, "epoch": epoch,
                            "extra": dict(extra or {})}
    best = None
    if schedule is not None:
        meta["schedule"] = schedule.state_dict()
        meta["spec"] = schedule.stage.spec.to_dict()
        best = schedule.best_state
        lr_scheduler = lr_scheduler if lr_scheduler is not None else schedule.lr_scheduler
    try:
        text = json.dumps(meta)
    except TypeError as exc:
        raise SpecError(f"save_checkpoint: extra must be JSON-serialisable ({exc})") from None
    path = Path(path)
    _atomic_write(path, lambda tmp: be.save_run(tmp, model, optimizer, lr_scheduler, text, best))
    return path


def resume(path: str | Path, model: Any, schedule: Schedule | None = None, optimizer: Any = None,
           lr_scheduler: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Restore a run saved by :func:`save_checkpoint`; returns (model, optimizer, meta).

    With a ``schedule`` (a fresh ``tunespec.Schedule`` of the run's recipe) the optimizer is built
    as the run built it, stage by stage, then given the saved state. Without one, pass the
    ``optimizer`` (and ``lr_scheduler``) to load the state into. ``meta`` holds ``epoch`` (the one
    saved) and ``extra``.
    """
    be = backend_for(model)
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"resume: checkpoint {str(path)!r} does not exist")
    run = be.load_run(str(path))
    meta = json.loads(run["meta"])
    if meta.get("format") != FORMAT:
        raise SpecError(f"resume: {str(path)!r} is not a tunespec run checkpoint")
    if meta["backend"] != be.name:
        raise SpecError(f"resume: {str(path)!r} was saved from a {meta['backend']} run; this model is "
                        f"{be.name} (use tunespec.load for weights across frameworks)")
    if schedule is not None:
        state = meta.get("schedule")
        if state is None:
            raise SpecError("resume: the checkpoint was saved without a schedule; resume without one")
        if state["index"] >= len(schedule.stages):
            raise SpecError(f"resume: the checkpoint is in stage {state['index']}, but the recipe has "
                            f"{len(schedule.stages)} stages")
        model, optimizer = schedule.start(model, optimizer)
        for _ in range(state["index"]):
            model, optimizer = schedule.advance(model, optimizer)
        if schedule.stage.spec.to_dict() != meta["spec"]:
            raise SpecError(f"resume: stage {schedule.stage.name!r} of this recipe is not the spec the "
                            f"run was saved with; resume with the run's own recipe")
        lr_scheduler = lr_scheduler if lr_scheduler is not None else schedule.lr_scheduler
    elif optimizer is None:
        raise SpecError("resume: pass the run's schedule, or the optimizer to load the state into")
    be.load_run_state(run, model, optimizer, lr_scheduler)
    if schedule is not None:
        schedule.best, schedule.best_epoch = state["best"], state["best_epoch"]
        schedule.bad_epochs = state["bad_epochs"]
        schedule.history = [tuple(h) for h in state["history"]]
        schedule.best_state = run["best"]
        schedule.rebaseline()  # verify() compares frozen tensors with the loaded weights
    return model, optimizer, {"epoch": meta["epoch"], "extra": meta["extra"]}
