"""Save and resume a fine-tuning run: weights, optimizer and lr-scheduler state, the current stage.

A run checkpoint is one safetensors file for every backend (layout and digest:
:mod:`tunespec.lifecycle.run_files`): the model's tensors by canonical name, the stage's best weights and
the optimizer's export as arrays, and in its metadata the JSON run description (format,
framework, epoch, stage-runner state, the whole recipe in canonical form, the optimizer export's
structure) plus a sha256 digest over all of it. Nothing in it is pickled, so reading it never
runs code; a damaged or foreign file is refused before anything is changed. A sharded model's
run checkpoint is a directory instead: one such file per rank plus a JSON sidecar. Backends only
hand over arrays (``read``/``write``) and export and import their optimizers; everything else
happens here, the same for every backend.

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

from tunespec.backend_api import Backend, OptimizerExport, Sharding, require
from tunespec.dispatch import backend_for
from tunespec.errors import SpecError, refuse_renamed
from tunespec.recipe import validate
from tunespec.recipe.files import atomic_write, excerpt
from tunespec.lifecycle.run_files import FORMAT, Run, read_run_file, read_sharded, write_run_file, write_sharded
from tunespec.lifecycle.stages import StageRunner


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

def _names(listing: Any) -> dict[Any, str]:
    """handle -> canonical name, for the optimizer export (aliases share their first name)."""
    return dict(zip(listing.handles, listing.names, strict=True))


def _group(be: Any, model: Any) -> Any:
    """Where the model's shards live (None: not sharded)."""
    return be.process_group(model) if isinstance(be, Sharding) else None


def save_checkpoint(path: str | Path, model: Any, optimizer: Any, runner: StageRunner | None = None,
                    lr_scheduler: Any = None, epoch: int | None = None,
                    extra: Mapping[str, Any] | None = None, **renamed: Any) -> Path:
    """Write model, optimizer, lr scheduler and stage-runner state to ``path`` atomically.

    ``extra`` is anything JSON-serialisable (the data loader's position, a metric history). A
    symlink ``path`` is written through; a failed write (disk full, read-only directory) is a
    SpecError and leaves the previous checkpoint as it was. A sharded model (every rank calls
    this) is saved as a directory.

    Example::

        tunespec.save_checkpoint("run.ckpt", model, optimizer, runner, epoch=3)
    """
    refuse_renamed("save_checkpoint", renamed, RENAMED_KEYWORDS)
    be = require(backend_for(model), Backend, "save_checkpoint")
    if epoch is not None:
        try:
            if isinstance(epoch, bool):
                raise TypeError
            epoch = operator.index(epoch)  # numpy integers too
        except TypeError:
            raise SpecError(f"save_checkpoint: epoch must be an integer or None, got {excerpt(epoch)}") from None
    if not be.owns_optimizer(optimizer):
        raise SpecError(f"save_checkpoint: optimizer is a {type(optimizer).__name__}, not a {be.name} optimizer")
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
    group = _group(be, model)
    if group is not None and (not isinstance(path, (str, Path)) or "\0" in str(path)):
        raise SpecError(f"save_checkpoint: expected a directory path, got {excerpt(path)}")
    listing = be.listing(model)
    local = group is not None
    tensors = {t.canonical: be.read(t.handle, local=True) if local else be.read(t.handle)
               for t in listing.tensors}
    exported = be.export_optimizer(optimizer, lr_scheduler, _names(listing), host=True)
    if group is not None:
        write_sharded(path, group, text, tensors, best, exported)
        return Path(path)
    atomic_write(path, lambda tmp: write_run_file(tmp, text, tensors, best, exported), "save_checkpoint")
    return Path(path)


# --- reading ------------------------------------------------------------------------------------

def read_run(path: str | Path, be: Any, group: Any, where: str = "resume") -> Run:
    """A run checkpoint of this framework, checked; a directory is a sharded run."""
    if isinstance(path, (str, Path)) and "\0" not in str(path) and Path(path).is_dir():
        if not isinstance(be, Sharding):
            raise SpecError(f"{where}: {str(path)!r} is a directory; the {be.name} backend reads run "
                            f"checkpoints from files only")
        run = read_sharded(path, group, where)
    else:
        run = read_run_file(path, where)
    if run.meta.get("backend") != be.name:
        raise SpecError(f"{where}: {str(path)!r} was saved from a {excerpt(run.meta.get('backend'))} run; this "
                        f"model is {be.name} (use tunespec.load for weights across frameworks)")
    return run


def _check_runner_state(meta: Mapping[str, Any], runner: StageRunner, where: str) -> dict[str, Any]:
    """The runner state a file recorded, every field checked like a recipe's (a re-signed or
    buggy file must fail here, not at the next step())."""
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
    check_runner_state(state, f"{where}: the checkpoint's schedule state")
    return state


def check_runner_state(state: Mapping[str, Any], path: str) -> None:
    """Every field of a recorded stage-runner state, through the recipes' validation layer."""
    validate.keys(state, path, ("index", "best", "best_epoch", "bad_epochs", "history", "ramps",
                                "lr_offset", "last_epoch"))
    if state.get("best") is not None:
        validate.number(state["best"], f"{path}.best")
    for key in ("best_epoch", "last_epoch"):
        if state.get(key) is not None:
            validate.count(state[key], f"{path}.{key}", minimum=0)
    validate.count(state.get("bad_epochs"), f"{path}.bad_epochs", minimum=0)
    history = validate.sequence(state.get("history"), f"{path}.history")
    for i, entry in enumerate(history):
        item = validate.sequence(entry, f"{path}.history[{i}]", what="an [epoch, stage name] pair")
        if len(item) != 2:
            raise validate.fail(f"{path}.history[{i}]", "an [epoch, stage name] pair", entry)
        validate.count(item[0], f"{path}.history[{i}][0]", minimum=0)
        validate.string(item[1], f"{path}.history[{i}][1]")
    if "ramps" in state:
        ramps = validate.mapping(state["ramps"], f"{path}.ramps", "{epoch: start}")
        for k, v in ramps.items():
            if not (isinstance(k, str) and k.lstrip("-").isdigit()):
                raise validate.fail(f"{path}.ramps", "integer keys", k)
            if v is not None:
                validate.number(v, f"{path}.ramps[{k}]", integer=True, minimum=-1, maximum=validate.MAX_COUNT)
    if "lr_offset" in state:
        validate.count(state["lr_offset"], f"{path}.lr_offset", minimum=0)


def _check_model(run: Run, live: Mapping[str, Any], where: str) -> None:
    """The model has exactly the saved tensors, with the saved shapes and dtypes."""
    odd = sorted(set(live) ^ set(run.model))
    if odd:
        raise SpecError(f"{where}: the model's tensors differ from the saved run's ({', '.join(map(excerpt, odd[:4]))}"
                        f"{', ...' if len(odd) > 4 else ''}); resume into the architecture the run used")
    for k, a in live.items():
        s = run.model[k]
        if tuple(a.shape) != tuple(s.shape) or a.dtype != s.dtype:
            raise SpecError(f"{where}: tensor {k!r} is {tuple(a.shape)} {a.dtype} in this model but "
                            f"{tuple(s.shape)} {s.dtype} in the checkpoint; resume into the architecture "
                            f"the run used")


def _same(saved: Any, live: Any) -> bool:
    if isinstance(saved, (list, tuple)) and isinstance(live, (list, tuple)):
        return len(saved) == len(live) and all(_same(a, b) for a, b in zip(saved, live, strict=True))
    if hasattr(saved, "shape") or hasattr(live, "shape"):
        return True  # array-valued settings (a capturable lr) follow the state
    return saved == live or (saved != saved and live != live)


def check_optimizer(saved: OptimizerExport, live: OptimizerExport, shapes: Mapping[str, Any],
                    where: str) -> None:
    """The live optimizer (built from the run's recipe) can take the saved state: the same rule,
    parameters in the same order, the same settings (but for what follows the lr schedule), and
    every saved state array the shape of its parameter."""
    if saved.kind != live.kind:
        rules = saved.settings.get("semantics")
        hint = f" with semantics={rules!r} (the run used those update rules)" if isinstance(rules, str) else ""
        raise SpecError(f"{where}: the run used optimizer {excerpt(saved.kind)}, this one is "
                        f"{excerpt(live.kind)}; build it from the run's recipe (pass the run's StageRunner)"
                        f"{hint}")
    skip = saved.volatile | live.volatile
    for key in [k for k in saved.settings if k not in skip] + [k for k in live.settings
                                                                 if k not in saved.settings and k not in skip]:
        was, now = saved.settings.get(key, "(absent)"), live.settings.get(key, "(absent)")
        if not _same(was, now):
            raise SpecError(f"{where}: optimizer.{key} differs: the run used {excerpt(was)}, this "
                            f"optimizer has {excerpt(now)}; build it from the run's recipe")
    if list(saved.hyper) != list(live.hyper):
        raise SpecError(f"{where}: the optimizer's parameter groups differ from the saved ones (it holds "
                        f"{len(live.hyper)} parameters, the run's held {len(saved.hyper)}); build it from "
                        f"the run's recipe (pass the run's StageRunner)")
    for name, hyper in live.hyper.items():
        was = saved.hyper[name]
        for key, value in hyper.items():
            if key in skip or key not in was:
                continue
            if not _same(was[key], value):
                raise SpecError(f"{where}: optimizer setting {key}={excerpt(value)} of {name!r} differs from "
                                f"the run's {excerpt(was[key])}; build the optimizer from the run's recipe")
    for name, tree in saved.state.items():
        if name == "":
            continue
        if name not in saved.hyper:
            raise SpecError(f"{where}: the saved optimizer state names parameter {excerpt(name)}, which "
                            f"the optimizer does not have")
        for array in _arrays_in(tree):
            if array.ndim > 0 and tuple(array.shape) != tuple(shapes[name]):
                raise SpecError(f"{where}: saved optimizer state of parameter {name!r} is "
                                f"{tuple(array.shape)}, the parameter is {tuple(shapes[name])}")


def _arrays_in(tree: Any) -> list[Any]:
    if hasattr(tree, "shape") and hasattr(tree, "ndim"):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [a for v in tree for a in _arrays_in(v)]
    if isinstance(tree, Mapping):
        return [a for v in tree.values() for a in _arrays_in(v)]
    return []


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

        model, optimizer, meta = tunespec.resume("run.ckpt", fresh_model, tunespec.StageRunner(recipe))
    """
    refuse_renamed("resume", renamed, RENAMED_KEYWORDS)
    be = require(backend_for(model), Backend, "resume")
    where = "resume"
    group = _group(be, model)
    run = read_run(path, be, group)
    if runner is None and optimizer is None:
        raise SpecError("resume: pass runner= (a StageRunner of the run's recipe), or the optimizer to "
                        "load the state into")
    if optimizer is not None and not be.owns_optimizer(optimizer):
        raise SpecError(f"resume: optimizer is a {type(optimizer).__name__}, not a {be.name} optimizer")
    if run.sharded != (group is not None):
        raise SpecError("resume: this checkpoint is of an unsharded run, the model is sharded; resume into "
                        "an unsharded model (or tunespec.load its weights, then shard)")
    if run.optimizer is None:
        raise SpecError(f"resume: {str(path)!r} holds no optimizer state")
    state = _check_runner_state(run.meta, runner, where) if runner is not None else None
    listing = be.listing(model)
    local = group is not None
    # the one copy all-or-nothing needs: the weights as they are, to write back on failure
    weights = {t.canonical: (t.handle, be.read(t.handle, local=True) if local else be.read(t.handle))
               for t in listing.tensors}
    _check_model(run, {k: a for k, (_, a) in weights.items()}, where)  # another architecture: refused first
    saved_runner = dict(vars(runner)) if runner is not None else None
    plans: list[Any] = []
    backup = None
    if optimizer is not None:
        backup = be.export_optimizer(optimizer, lr_scheduler, _names(listing), host=False)
    try:
        if runner is not None:
            model, optimizer = runner.start(model, optimizer)
            plans.append(runner.plan)
            for _ in range(state["index"]):
                model, optimizer = runner.advance(model, optimizer)
                plans.append(runner.plan)
            if runner.stage.spec.to_dict() != run.meta.get("spec"):
                raise SpecError(f"resume: stage {runner.stage.name!r} of this recipe is not the spec "
                                f"the run was saved with; resume with the run's own recipe")
            lr_scheduler = lr_scheduler if lr_scheduler is not None else runner.lr_scheduler
            runner.load_lr_state(state)  # where ramps started, where the lr runner restarted
            runner.reinstall_lrs(optimizer, lr_scheduler)  # ramped lrs as the run had them
        live = be.listing(model)
        names = _names(live)
        handles = {t.canonical: t.handle for t in live.tensors}
        check_optimizer(run.optimizer, be.export_optimizer(optimizer, lr_scheduler, names, host=False),
                        {k: a.shape for k, a in run.model.items()}, where)
        for name, (handle, _) in weights.items():
            if local:
                be.write(handle, run.model[name], local=True)
            else:
                be.write(handle, run.model[name])
        be.import_optimizer(optimizer, lr_scheduler, run.optimizer, handles)
        if runner is not None:
            _restore_runner_state(runner, state, run.best)
    except BaseException:
        for plan in reversed(plans):
            if plan.applied:
                plan.restore()
        for handle, array in weights.values():
            if local:
                be.write(handle, array, local=True)
            else:
                be.write(handle, array)
        if saved_runner is not None:
            vars(runner).clear()
            vars(runner).update(saved_runner)
        if backup is not None:
            be.import_optimizer(optimizer, lr_scheduler, backup, {t.canonical: t.handle for t in listing.tensors})
        raise
    return model, optimizer, {"epoch": run.meta.get("epoch"), "extra": run.meta.get("extra", {})}


def _restore_runner_state(runner: StageRunner, state: Mapping[str, Any], best: Mapping[str, Any] | None) -> None:
    """The runner's state (checked by :func:`_check_runner_state`) and its best weights."""
    runner.best, runner.best_epoch = state["best"], state["best_epoch"]
    runner.bad_epochs = state["bad_epochs"]
    runner.history = [(e, n) for e, n in state["history"]]
    runner.best_state = None if best is None else {k: v.copy() for k, v in best.items()}
    runner.rebaseline()  # verify() compares frozen tensors with the loaded weights
