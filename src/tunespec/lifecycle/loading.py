"""Partial checkpoint loading: select checkpoint keys, rename them, load what fits, report the rest.

Checkpoint keys are matched onto the model's canonical names, so a torch checkpoint saved from a
DDP- or ``torch.compile``-wrapped model loads into a bare one, and a torch ``state_dict`` loads into
a GluonCV twin (and a Gluon ``.params`` file into a torchvision one) by the names the two share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tunespec.backend_api import CheckpointFiles, require
from tunespec.dispatch import backend_for, load_backend
from tunespec.errors import SpecError
from tunespec.recipe.files import excerpt, has_digest, regular_file
from tunespec.lifecycle.run_files import read_run_file
from tunespec.framework_facts import (
    is_ignored_state,
    leaf_spellings,
    reader_for_suffix,
    wrapper_prefixes,
    wrapper_segments,
)
from tunespec.listing import Listing, TensorInfo
from tunespec.planning.naming import NameMap, Rename


@dataclass
class LoadReport:
    """What ``tunespec.load`` did: every checkpoint key and model tensor is in exactly one list.

    Example::

        report = tunespec.load(model, "imagenet_r18.pt", select=r"(?!fc\\.).*")
        print(report.loaded[:3], report.missing)   # the new head is missing
    """

    loaded: list[str] = field(default_factory=list)  # model canonical names written
    missing: list[str] = field(default_factory=list)  # model tensors nothing was loaded into
    unexpected: list[str] = field(default_factory=list)  # selected keys with no model tensor
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # name, checkpoint, model
    skipped: list[str] = field(default_factory=list)  # keys not selected (or renamed to nothing)
    ignored: list[str] = field(default_factory=list)  # batch counters the model has no place for

    @property
    def ok(self) -> bool:
        """Every selected key loaded (model tensors may still be missing: see ``complete``)."""
        return not (self.unexpected or self.mismatched)

    @property
    def complete(self) -> bool:
        return self.ok and not self.missing

    def __str__(self) -> str:
        lines = [f"load: {len(self.loaded)} loaded, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches, "
                 f"{len(self.skipped)} not selected"]
        lines += [f"  missing (left as they were): {n}" for n in self.missing[:10]]
        lines += [f"  unexpected: {n}" for n in self.unexpected[:10]]
        lines += [f"  shape {n}: checkpoint {c} vs model {m}" for n, c, m in self.mismatched[:10]]
        return "\n".join(lines)


def canonical_key(key: str) -> str:
    """A checkpoint key spelled as a canonical name: every registered framework's wrapper segments
    and prefixes gone, norm leaves spelled canonically (the backends' facts say how)."""
    segments, spellings = wrapper_segments(), leaf_spellings()
    parts = [p for p in key.split(".") if p not in segments]
    if parts and parts[0] in wrapper_prefixes() and len(parts) > 1:
        parts = parts[1:]
    if parts and parts[-1] in spellings:
        parts[-1] = spellings[parts[-1]]
    return ".".join(parts)


def _index(listing: Listing) -> dict[str, TensorInfo]:
    index: dict[str, TensorInfo] = {}
    for t in listing.tensors:
        for name in (t.canonical, *t.aliases):
            index.setdefault(name, t)
    return index


def _reader_for(path: Path, model_backend: Any) -> Any:
    """Which backend reads the file: the one whose facts claim its suffix (or that reads unclaimed
    ones), and the model's own for safetensors, which every backend reads."""
    suffix = path.suffix.lower()
    name = None if suffix == ".safetensors" else reader_for_suffix(suffix)
    reader = model_backend if name is None or name == model_backend.name else load_backend(name)
    return require(reader, CheckpointFiles, f"load {path.name}")


def pick_state(obj: Any, key: str | None, is_tensor: Any, where: str) -> dict[str, Any]:
    """The {name: tensor} mapping inside a loaded checkpoint object.

    A bare state dict is used as it is; a training checkpoint ({'state_dict': ..., 'epoch': ...})
    gives up its one nested state dict; ``key`` names it when there are several.
    """
    def is_state(value: Any) -> bool:
        return isinstance(value, Mapping) and bool(value) and all(is_tensor(v) for v in value.values())

    if key is not None:
        for part in key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                have = ", ".join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
                raise SpecError(f"{where}: no {key!r} in the checkpoint (it holds {have})")
            obj = obj[part]
        if not is_state(obj):
            raise SpecError(f"{where}: {key!r} is not a mapping of tensors")
        return dict(obj)
    if is_state(obj):
        return dict(obj)
    nested = [k for k, v in obj.items() if is_state(v)] if isinstance(obj, Mapping) else []
    if len(nested) == 1:
        return dict(obj[nested[0]])
    have = ", ".join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
    raise SpecError(f"{where}: cannot tell which state dict to load (the checkpoint holds {have}); "
                    f"pass key= naming the mapping of tensors to load")


def read_checkpoint(path: str | Path, model_backend: Any, allow_pickle: bool = False,
                    key: str | None = None) -> dict[str, Any]:
    """A checkpoint file as {key: numpy array}, read by the backend of the file's framework."""
    path = Path(path)
    regular_file(path, "load", None)  # a directory, FIFO or /dev/zero would block or never end
    reader = _reader_for(path, model_backend)
    if has_digest(path):  # a run checkpoint: its digest is checked before any value is used
        return _run_weights(path, key)
    if path.suffix.lower() == ".safetensors":
        obj = reader.read_safetensors(str(path))
    else:
        obj = reader.read_checkpoint(str(path), allow_pickle)
    state = pick_state(obj, key, reader.is_tensor, str(path))
    return checked_state({k: reader.to_numpy(v) for k, v in state.items()}, str(path))


def _run_weights(path: Path, key: str | None) -> dict[str, Any]:
    """The weights in a run checkpoint (``key``: 'model', the default, or 'best', the best epoch's),
    by canonical name, so weights cross frameworks."""
    run = read_run_file(path, "load")
    parts = {"model": run.model, "best": run.best}
    key = "model" if key is None else key
    if parts.get(key) is None:
        have = ", ".join(repr(k) for k, v in parts.items() if v is not None)
        raise SpecError(f"load: {str(path)!r} is a run checkpoint; key={excerpt(key)} is not in it "
                        f"(it holds {have})")
    return checked_state(dict(parts[key]), str(path))


# dtype kinds a weight can have: bool, signed and unsigned integers, floating point.
_NUMERIC_KINDS = "biuf"


def checked_state(state: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """A {name: array} mapping whose names are strings and values numeric arrays of sane shape:
    what a foreign or crafted file holds is data, checked like any other input."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if not isinstance(k, str):
            raise SpecError(f"{where}: key {excerpt(k)} is not a string; a checkpoint maps names to tensors")
        shape = getattr(v, "shape", None)
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SpecError(f"{where}: {excerpt(k)} is a {type(v).__name__}, not an array")
        dtype = getattr(v, "dtype", None)
        kind = getattr(dtype, "kind", "c" if getattr(dtype, "is_complex", False) else None)
        if kind is not None and kind not in _NUMERIC_KINDS:
            raise SpecError(f"{where}: {excerpt(k)} has dtype {excerpt(str(v.dtype))}, not a number type")
        out[k] = v
    return out


def load(model: Any, checkpoint: "str | Path | Mapping[str, Any]", select: str | None = None,
         rename: Rename = None, strict: bool = True, allow_pickle: bool = False,
         key: str | None = None, backend: str | None = None) -> LoadReport:
    """Load the checkpoint keys ``select`` matches, renamed by ``rename``, into ``model``.

    ``checkpoint`` is a torch file (read with ``weights_only=True``; one that needs pickle is
    refused unless ``allow_pickle=True``), a ``.safetensors`` file, a Gluon ``.params`` file or
    an in-memory ``{name: tensor}`` mapping. ``select``/``rename`` act on the checkpoint's own keys
    (see :class:`tunespec.NameMap`); each kept key then lands on the model tensor with that name,
    or with its canonical spelling (wrapper prefixes dropped, Gluon ``gamma``/``beta`` as
    ``weight``/``bias``). ``strict`` (default) refuses unexpected keys and shape mismatches and then
    writes nothing; model tensors the checkpoint does not cover are listed as ``missing`` either way
    (that is what partial loading is for; ``report.complete`` says whether there were any).

    Example::

        report = tunespec.load(model, "imagenet_r18.pt", select=r"(?!fc\\.).*")   # all but the head
        report = tunespec.load(net, "detector.pt", rename={r"model\\.(.*)": r"\\1"}, strict=False)
    """
    be = backend_for(model, backend)
    names = NameMap(select, rename)
    if isinstance(checkpoint, Mapping):
        state = checked_state(checkpoint, "load")
    elif isinstance(checkpoint, (str, Path)):
        state = read_checkpoint(checkpoint, be, allow_pickle, key)
    else:
        raise SpecError(f"load: expected a checkpoint path or a {{name: tensor}} mapping, "
                        f"got {type(checkpoint).__name__}")
    report, writes, listing = match_state(be, model, state, names, "load")
    if not writes and not state:
        raise SpecError("load: the checkpoint holds no tensors")
    names.check_used("load", strict)
    if select is not None and not writes and not report.unexpected and not report.mismatched:
        raise SpecError(f"load: select={select!r} matches none of the checkpoint's keys "
                        f"(they look like {', '.join(list(state)[:3])})")
    if strict and not report.ok:
        raise SpecError(f"{report}\nnothing was loaded; fix select/rename, or pass strict=False to "
                        f"load what fits")
    report.loaded = write_all(be, writes, "load", "nothing was loaded")
    return report


def match_state(be: Any, model: Any, state: Mapping[str, Any], names: NameMap,
                where: str) -> tuple[LoadReport, dict[int, tuple[TensorInfo, Any]], Listing]:
    """Where each of ``state``'s keys lands in ``model`` (``select``/``rename`` applied, then the
    model's canonical names and aliases, then the key's canonical spelling), as a report of
    everything that does not fit plus the writes that do; nothing is written here. ``port`` uses
    it too, with the source model's canonical names as keys."""
    listing = be.listing(model)
    index = _index(listing)
    report = LoadReport()
    writes: dict[int, tuple[TensorInfo, Any]] = {}
    for raw_key, value in state.items():
        new = names(raw_key)
        if new is None:
            report.skipped.append(raw_key)
            continue
        target = index.get(new) or index.get(canonical_key(new))
        label = raw_key if new == raw_key else f"{raw_key} -> {new}"
        if target is None:
            (report.ignored if is_ignored_state(new) else report.unexpected).append(label)
            continue
        if target.shape is None or 0 in target.shape:
            raise SpecError(f"{where}: model tensor {target.canonical!r} has no shape yet; initialise "
                            f"the model (one forward pass) before {where}ing into it")
        shape = tuple(value.shape)
        if shape != tuple(target.shape):
            report.mismatched.append((target.canonical, shape, tuple(target.shape)))
        elif id(target.handle) in writes:
            raise SpecError(f"{where}: keys {label!r} and another one both map onto "
                            f"{target.canonical!r}; narrow select or fix rename")
        else:
            writes[id(target.handle)] = (target, value)
    report.missing = [t.canonical for t in listing.tensors if id(t.handle) not in writes
                      and not is_ignored_state(t.canonical, be.name)]
    return report, writes, listing


def write_all(be: Any, writes: Mapping[int, tuple[TensorInfo, Any]], where: str, undone: str) -> list[str]:
    """Write every matched value, or none: a failing write puts back what was written before it.
    A value with a ``read()`` (a source tensor ``port`` has not copied yet) is read only now."""
    backup = [(t, be.read(t.handle)) for t, _ in writes.values()]
    done, current = [], None
    try:
        for t, value in writes.values():
            current = t.canonical
            be.write(t.handle, value.read() if isinstance(value, Deferred) else value)
            done.append(t.canonical)
    except Exception as exc:
        for t, array in backup:
            be.write(t.handle, array)
        raise SpecError(f"{where}: cannot write {current!r} ({type(exc).__name__}: {excerpt(str(exc))}); "
                        f"{undone}") from None
    return done


@dataclass(frozen=True)
class Deferred:
    """A tensor's shape now and its values on demand: ``port`` matches a whole model before it
    copies any value out of it."""

    shape: tuple[int, ...]
    read: Any  # () -> the values
    dtype: Any = None
