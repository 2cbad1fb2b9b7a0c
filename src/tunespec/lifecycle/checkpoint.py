"""Save and resume a fine-tuning run: weights, optimizer and lr-scheduler state, the current stage.

A run checkpoint is one safetensors file in both frameworks: the model's tensors, the stage's best
weights and the optimizer state as arrays, and in its metadata the JSON run description (format,
framework, epoch, stage-runner state, the whole recipe in canonical form, the optimizer-state
structure) plus a sha256 digest over all of it. Nothing in it is pickled, so reading it never
runs code; a damaged or foreign file is refused before anything is changed. A sharded model's
(torch FSDP2) run checkpoint is a directory instead: each rank's shards in torch's distributed
checkpoint format plus a JSON sidecar with the same run description and a digest of every file.

Files are written by :func:`tunespec.recipe.files.atomic_write`, so a crash mid-save leaves the previous
checkpoint as it was. Resuming checks the file, the recipe, the stage and the model's tensors
first, then rebuilds the optimizer the way the run built it (stage 0, then every stage change up
to the saved one) so param groups and state line up, and rolls everything back if a later step
fails.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from pathlib import Path
from typing import Any, Mapping

from tunespec.backend_api import RUN_LAYOUT, Sharding
from tunespec.dispatch import backend_for
from tunespec.errors import SpecError, refuse_renamed
from tunespec.recipe.files import atomic_write, excerpt, read_checked, regular_file
from tunespec.lifecycle.stages import StageRunner

FORMAT = "tunespec-run/2"
RUN_KEY = RUN_LAYOUT.meta_key  # the metadata entry holding the run's JSON description


# --- the recipe, canonical ----------------------------------------------------------------------

def canonical(value: Any) -> Any:
    """A parsed recipe value as plain JSON data (dataclasses by field, specs by ``to_dict``)."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return canonical(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))  # an object's address differs per process


def recipe_dict(runner: StageRunner) -> dict[str, Any]:
    """Every section of the schedule's recipe: what resume compares."""
    r = runner.recipe
    out = {"spec": canonical(r.spec), "optimizer": canonical(r.optimizer), "schedule": canonical(r.schedule)}
    out.update({k: canonical(v) for k, v in sorted(r.sections.items())})
    return json.loads(json.dumps(out, sort_keys=True))  # one normal form: what a file gives back


def first_difference(saved: Any, live: Any, path: str) -> tuple[str, Any, Any] | None:
    """(path, saved value, live value) of the first place two JSON values differ."""
    if isinstance(saved, dict) and isinstance(live, dict):
        for k in list(saved) + [k for k in live if k not in saved]:
            if k not in saved or k not in live:
                return f"{path}.{k}".lstrip("."), saved.get(k, "(absent)"), live.get(k, "(absent)")
            d = first_difference(saved[k], live[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(saved, list) and isinstance(live, list) and len(saved) == len(live):
        for i, (a, b) in enumerate(zip(saved, live, strict=True)):
            d = first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    if saved == live and type(saved) is type(live):
        return None
    return path.lstrip(".") or "(the recipe)", saved, live


# Keywords renamed in 0.2.0: the stage runner is passed as runner= (schedule means learning rates).
RENAMED_KEYWORDS = {"schedule": "runner"}


# --- saving -------------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: Any, optimizer: Any, runner: StageRunner | None = None,
                    lr_scheduler: Any = None, epoch: int | None = None,
                    extra: Mapping[str, Any] | None = None, **renamed: Any) -> Path:
    """Write model, optimizer, lr scheduler and stage-runner state to ``path`` atomically.

    ``extra`` is anything JSON-serialisable (the data loader's position, a metric history). A
    symlink ``path`` is written through; a failed write (disk full, read-only directory) is a
    SpecError and leaves the previous checkpoint as it was.

    Example::

        tunespec.save_checkpoint("run.pt", model, opt, runner, epoch=epoch, extra={"best": 0.91})
    """
    refuse_renamed("save_checkpoint", renamed, RENAMED_KEYWORDS)
    be = backend_for(model)
    if epoch is not None:
        try:
            if isinstance(epoch, bool):
                raise TypeError
            epoch = operator.index(epoch)  # numpy integers too
        except TypeError:
            raise SpecError(f"save_checkpoint: epoch must be an integer or None, got {excerpt(epoch)}") from None
    meta: dict[str, Any] = {"format": FORMAT, "backend": be.name, "epoch": epoch,
                            "extra": dict(extra or {})}
    best = None
    if runner is not None:
        meta["schedule"] = runner.state_dict()
        meta["spec"] = runner.stage.spec.to_dict()
        meta["recipe"] = recipe_dict(runner)
        best = runner.best_state
        lr_scheduler = lr_scheduler if lr_scheduler is not None else runner.lr_scheduler
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"save_checkpoint: extra must be JSON-serialisable with finite numbers "
                        f"({excerpt(str(exc))})") from None
    if _sharded(be, model):  # every rank writes its shards: a directory
        if not isinstance(path, (str, Path)) or "\0" in str(path):
            raise SpecError(f"save_checkpoint: expected a directory path, got {excerpt(path)}")
        be.save_sharded_run(str(path), model, optimizer, lr_scheduler, text, best)
        return Path(path)
    atomic_write(path, lambda tmp: be.save_run(tmp, model, optimizer, lr_scheduler, text, best),
                 "save_checkpoint")
    return Path(path)


def _sharded(be: Any, model: Any) -> bool:
    """Whether ``model`` is sharded (a backend with the Sharding capability says so)."""
    return isinstance(be, Sharding) and be.is_sharded(model)


# --- reading ------------------------------------------------------------------------------------

def read_run_file(path: str | Path, where: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(meta, tensors, metadata) of a run checkpoint, checked: a regular file, a valid digest,
    tunespec's format. ``where`` names the calling function in messages."""
    regular_file(path, where)
    tensors, metadata = read_checked(path, where)
    return _run_meta(metadata.get(RUN_KEY), f"{where}: {str(path)!r}"), tensors, metadata


def _run_meta(text: Any, where: str) -> dict[str, Any]:
    """The run description (JSON) of a checkpoint, in tunespec's format, or a SpecError."""
    try:
        meta = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise SpecError(f"{where} is not a tunespec run checkpoint (no run description)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SpecError(f"{where} is not a tunespec run checkpoint of format {FORMAT} "
                        f"(it says {excerpt(found)})")
    return meta


def read_run(path: str | Path, be: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, run) of a checkpoint of this framework, checked (see :func:`read_run_file`); a
    directory is a sharded run (the backend checks its digests). ``run`` is the backend's view of
    the tensors (not yet applied to anything)."""
    if isinstance(path, (str, Path)) and "\0" not in str(path) and Path(path).is_dir():
        if not isinstance(be, Sharding):
            raise SpecError(f"resume: {str(path)!r} is a directory; the {be.name} backend reads run "
                            f"checkpoints from files only")
        text, run = be.read_sharded_run(str(path), "resume")
        meta = _run_meta(text, f"resume: {str(path)!r}")
    else:
        meta, tensors, metadata = read_run_file(path, "resume")
        run = None
    if meta.get("backend") != be.name:
        raise SpecError(f"resume: {str(path)!r} was saved from a {excerpt(meta.get('backend'))} run; this "
                        f"model is {be.name} (use tunespec.load for weights across frameworks)")
    return meta, run if run is not None else be.load_run(tensors, metadata, str(path))


def _check_runner_state(meta: Mapping[str, Any], runner: StageRunner, where: str) -> dict[str, Any]:
    state = meta.get("schedule")
    if state is None:
        raise SpecError(f"{where}: the checkpoint was saved without a stage runner; resume without runner=")
    if not isinstance(state, dict):
        raise SpecError(f"{where}: the checkpoint's stage-runner state is not a mapping")
    saved = meta.get("recipe")
    diff = first_difference(saved, recipe_dict(runner), "")
    if diff is not None:
        name, was, now = diff
        raise SpecError(f"{where}: this recipe is not the spec the run was saved with: {name} differs: "
                        f"the run used {excerpt(was)}, this recipe has {excerpt(now)}; resume with the "
                        f"run's own recipe")
    index = state.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(runner.stages):
        raise SpecError(f"{where}: the checkpoint is in stage {excerpt(index)}, but the recipe has "
                        f"{len(runner.stages)} stages")
    return state


# --- resuming -----------------------------------------------------------------------------------

def resume(path: str | Path, model: Any, runner: StageRunner | None = None, optimizer: Any = None,
           lr_scheduler: Any = None, **renamed: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Restore a run saved by :func:`save_checkpoint`; returns (model, optimizer, meta).

    With a ``runner`` (a fresh ``tunespec.StageRunner`` of the run's recipe) the optimizer is built
    as the run built it, stage by stage, then given the saved state; a recipe that differs from the
    run's in any section is refused, naming the first difference. Without one, pass the
    ``optimizer`` (and ``lr_scheduler``) to load the state into. ``meta`` holds ``epoch`` (the one
    saved) and ``extra``. Any failure leaves the model, optimizer and runner as they were.

    Example::

        runner = tunespec.StageRunner("examples/two_phase.yaml", steps_per_epoch=len(loader))
        model, opt, meta = tunespec.resume("run.pt", fresh_model, runner)
        start_epoch = meta["epoch"] + 1
    """
    refuse_renamed("resume", renamed, RENAMED_KEYWORDS)
    be = backend_for(model)
    where = "resume"
    meta, run = read_run(path, be)
    if runner is None and optimizer is None:
        raise SpecError("resume: pass runner= (a StageRunner of the run's recipe), or the optimizer to "
                        "load the state into")
    state = _check_runner_state(meta, runner, where) if runner is not None else None
    be.check_run_model(run, model)  # another architecture: refused before anything changes
    weights = [(t, be.read(t.handle)) for t in be.listing(model).tensors]
    saved_runner = dict(vars(runner)) if runner is not None else None
    plans: list[Any] = []
    opt_backup = be.optimizer_backup(optimizer) if optimizer is not None else None
    try:
        if runner is not None:
            model, optimizer = runner.start(model, optimizer)
            plans.append(runner.plan)
            for _ in range(state["index"]):
                model, optimizer = runner.advance(model, optimizer)
                plans.append(runner.plan)
            if runner.stage.spec.to_dict() != meta.get("spec"):
                raise SpecError(f"resume: stage {runner.stage.name!r} of this recipe is not the spec "
                                f"the run was saved with; resume with the run's own recipe")
            lr_scheduler = lr_scheduler if lr_scheduler is not None else runner.lr_scheduler
            runner.load_lr_state(state)  # where ramps started, where the lr schedule restarted
            runner.reinstall_lrs(optimizer, lr_scheduler)  # ramped lrs as the run had them
        be.check_run_optimizer(run, optimizer, lr_scheduler)
        be.load_run_state(run, model, optimizer, lr_scheduler)
        if runner is not None:
            _restore_runner_state(runner, state, run)
    except BaseException:
        for plan in reversed(plans):
            if plan.applied:
                plan.restore()
        for t, array in weights:
            be.write(t.handle, array)
        if saved_runner is not None:
            vars(runner).clear()
            vars(runner).update(saved_runner)
        if opt_backup is not None:
            be.optimizer_restore(optimizer, opt_backup)
        raise
    return model, optimizer, {"epoch": meta.get("epoch"), "extra": meta.get("extra", {})}


def _restore_runner_state(runner: StageRunner, state: Mapping[str, Any], run: Mapping[str, Any]) -> None:
    try:
        best, best_epoch, bad = state["best"], state["best_epoch"], int(state["bad_epochs"])
        history = [(int(e), str(n)) for e, n in state["history"]]
    except (KeyError, TypeError, ValueError):
        raise SpecError("resume: the checkpoint's runner state is incomplete") from None
    runner.best, runner.best_epoch, runner.bad_epochs = best, best_epoch, bad
    runner.history = history
    runner.best_state = run["best"]
    runner.rebaseline()  # verify() compares frozen tensors with the loaded weights
