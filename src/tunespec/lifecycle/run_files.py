"""Run checkpoint files: one layout, written, read, digested and checked here for every backend.

A run checkpoint is one safetensors file (format ``tunespec-run/3``)::

    model/<canonical name>   every tensor of the model's listing (parameters and state)
    best/<canonical name>    the stage runner's best weights, when it keeps them
    opt/<n>                  the arrays of the optimizer export, numbered as they come
    __metadata__             tunespec.run (the run description: JSON), tunespec.state (names and
                             the optimizer export, arrays as {"T": "opt/<n>"}), tunespec.sha256

The backend only hands over numpy arrays (``read`` and ``export_optimizer(host=True)``); the
digest is computed while the file is written and again while it is read, in one pass
(:func:`tunespec.files.write_checked`). A sharded run (the backend's ``process_group`` says where
the shards live) is a directory: each rank writes ``rank<r>.safetensors`` of its own parts, then
rank 0 adds ``tunespec-run.json`` (the run description, each file's size and digest, its own
digest) and renames the directory into place, so a crash mid-save leaves the last checkpoint.

Example::

    entries = encode_run('{"format": "tunespec-run/3"}', {"w": np.zeros(2)}, None, None)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tunespec.backend_api import OptimizerExport, ProcessGroup
from tunespec.errors import SpecError
from tunespec.recipe.files import (Entry, decode_tree, encode_tree, read_bytes, read_checked, regular_file, writable_directory,
                                   strict_json, write_checked)
from tunespec.recipe.validate import excerpt

FORMAT = "tunespec-run/3"
SHARDED_FORMAT = "tunespec-sharded/2"
SIDECAR = "tunespec-run.json"
RUN_KEY, STATE_KEY = "tunespec.run", "tunespec.state"
MODEL, BEST, OPT = "model/", "best/", "opt/"
MAX_SIDECAR_BYTES = 256 * 2**20
_PARTIAL, _OLD = ".tunespec-partial", ".tunespec-old"

# numpy dtype strings <-> safetensors codes (numpy has no bfloat16: backends export it as float32)
_CODES = {"<f8": "F64", "<f4": "F32", "<f2": "F16", "<i8": "I64", "<i4": "I32", "<i2": "I16", "|i1": "I8",
          "|u1": "U8", "<u2": "U16", "<u4": "U32", "<u8": "U64", "|b1": "BOOL"}
_DTYPES = {v: k for k, v in _CODES.items()}


@dataclass
class Run:
    """A run checkpoint as read: its description and its arrays, nothing applied yet."""

    meta: dict[str, Any]
    model: dict[str, Any]  # canonical name -> numpy array (this rank's part in a sharded run)
    best: dict[str, Any] | None
    optimizer: OptimizerExport | None
    sharded: bool = False


def _numpy() -> Any:
    import numpy  # only when a checkpoint is written or read: import tunespec stays free of numpy

    return numpy


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _entry(array: Any) -> Entry:
    np = _numpy()
    a = np.asarray(array)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # (ascontiguousarray would turn a 0-d array into 1-d)
    code = _CODES.get(a.dtype.str)
    if code is None:
        raise SpecError(f"save_checkpoint: cannot store a {a.dtype} array")
    return code, tuple(int(d) for d in a.shape), a.reshape(-1).view(np.uint8)


def _array(dtype: str, shape: tuple[int, ...], data: Any) -> Any:
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    np = _numpy()
    return np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape)


# --- one file ------------------------------------------------------------------------------------

def encode_run(meta: str, model: Mapping[str, Any], best: Mapping[str, Any] | None,
               optimizer: OptimizerExport | None) -> tuple[dict[str, Entry], dict[str, str]]:
    """(entries, metadata) of a run file: O(n) in arrays (each named once, by a counter)."""
    entries: dict[str, Entry] = {MODEL + k: _entry(v) for k, v in model.items()}
    entries.update({BEST + k: _entry(v) for k, v in (best or {}).items()})
    numbers = itertools.count()

    def add(array: Any) -> str:
        name = f"{OPT}{next(numbers)}"
        entries[name] = _entry(array)
        return name

    opt = None
    if optimizer is not None:
        table: list[Any] = []  # each distinct hyper-parameter mapping once (a group's are shared)
        seen: dict[int, int] = {}
        order = []
        for name, h in optimizer.hyper.items():
            if id(h) not in seen:
                seen[id(h)] = len(table)
                table.append(encode_tree(dict(h), _is_array, add))
            order.append([name, seen[id(h)]])
        opt = {"kind": optimizer.kind, "volatile": sorted(optimizer.volatile),
               "settings": encode_tree(dict(optimizer.settings), _is_array, add),
               "hyper_table": table, "hyper": order,
               "state": encode_tree(dict(optimizer.state), _is_array, add)}
    state = {"model": list(model), "best": None if best is None else list(best), "optimizer": opt}
    return entries, {RUN_KEY: meta, STATE_KEY: json.dumps(state)}


def _names(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{what} is not a list of names")
    return value


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{what} is not a mapping with string keys")
    return value


def decode_run(tensors: Mapping[str, Entry], metadata: Mapping[str, str], where: str) -> Run:
    """The run in a checked file's tensors and metadata; a SpecError for anything malformed."""
    meta = run_meta(metadata.get(RUN_KEY), where)
    try:
        arrays = {k: _array(*v) for k, v in tensors.items()}
        state = _mapping(json.loads(metadata[STATE_KEY]), "the state description")  # no keys of its own repeat
        model = {k: arrays[MODEL + k] for k in _names(state["model"], "model")}
        best = None if state["best"] is None else {k: arrays[BEST + k] for k in _names(state["best"], "best")}
        opt = state["optimizer"]
        export = None
        if opt is not None:
            opt = _mapping(opt, "the optimizer")
            if not isinstance(opt["kind"], str):
                raise ValueError("the optimizer's kind is not a string")
            if not isinstance(opt["hyper"], list) or not isinstance(opt["hyper_table"], list):
                raise ValueError("the optimizer's hyper-parameters are not lists")
            table = [_mapping(decode_tree(h, arrays.__getitem__), "hyper-parameters") for h in opt["hyper_table"]]
            hyper = {}
            for pair in opt["hyper"]:
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                        and type(pair[1]) is int and 0 <= pair[1] < len(table)):
                    raise ValueError("a hyper-parameter entry is not [name, table index]")
                hyper[pair[0]] = table[pair[1]]
            export = OptimizerExport(
                kind=opt["kind"], settings=_mapping(decode_tree(opt["settings"], arrays.__getitem__), "settings"),
                hyper=hyper, state=_mapping(decode_tree(opt["state"], arrays.__getitem__), "the optimizer state"),
                volatile=frozenset(_names(opt["volatile"], "volatile")))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise SpecError(f"{where} is not a complete tunespec run checkpoint "
                        f"({type(exc).__name__}: {excerpt(str(exc))})") from None
    return Run(meta, model, best, export)


def run_meta(text: Any, where: str) -> dict[str, Any]:
    """The run description (JSON) of a checkpoint, in tunespec's format, or a SpecError."""
    try:
        meta = strict_json(text)
    except (TypeError, ValueError, RecursionError):
        raise SpecError(f"{where} is not a tunespec run checkpoint (no run description)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        old = " (written by an earlier 0.x tunespec; those are not read)" if isinstance(found, str) \
            and found.startswith("tunespec-run/") else ""
        raise SpecError(f"{where} is not a tunespec run checkpoint of format {FORMAT} "
                        f"(it says {excerpt(found)}){old}")
    return meta


def write_run_file(path: str, meta: str, model: Mapping[str, Any], best: Mapping[str, Any] | None,
                   optimizer: OptimizerExport | None) -> None:
    """One run file at ``path`` (the caller makes it atomic)."""
    entries, metadata = encode_run(meta, model, best, optimizer)
    write_checked(path, entries, metadata)


def read_run_file(path: str | Path, where: str) -> Run:
    """A run file, its digest and format checked (``where`` names the caller in messages)."""
    regular_file(path, where)
    tensors, metadata = read_checked(path, where)
    return decode_run(tensors, metadata, f"{where}: {str(path)!r}")


# --- a sharded run: a directory ------------------------------------------------------------------

def _rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


def _text_digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    """The digest a checked file carries in its header (only the header is read)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header["__metadata__"]["tunespec.sha256"]


def write_sharded(path: str | Path, group: ProcessGroup, meta: str, model: Mapping[str, Any],
                  best: Mapping[str, Any] | None, optimizer: OptimizerExport | None) -> None:
    """Every rank writes its file into ``path`` + '.tunespec-partial'; rank 0 adds the sidecar and
    renames the directory into place. Every rank raises if any rank failed. Only a new path or an
    earlier sharded checkpoint (holding its sidecar) is replaced, never another directory."""
    target = writable_directory(path, "save_checkpoint", SIDECAR)  # links followed
    partial = target.with_name(target.name + _PARTIAL)
    problem: list[str] = []

    def step(action: Any) -> None:
        if not problem:
            try:
                action()
            except OSError as exc:
                problem.append(str(exc.strerror or exc))
        if not group.all_ok(not problem):
            raise SpecError(f"save_checkpoint: cannot write {str(target)!r} "
                            f"({problem[0] if problem else 'another rank failed'}); the previous "
                            f"checkpoint is unchanged")

    def make_directory() -> None:
        if group.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)

    def commit() -> None:
        if group.rank != 0:
            return
        files = {}
        for rank in range(group.world):
            file = partial / _rank_file(rank)
            files[file.name] = {"bytes": file.stat().st_size, "sha256": _file_digest(file)}
        sidecar = {"format": SHARDED_FORMAT, "world": group.world, "meta": meta, "files": files}
        sidecar["digest"] = _text_digest(sidecar)
        (partial / SIDECAR).write_text(json.dumps(sidecar))
        old = target.with_name(target.name + _OLD)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    step(make_directory)
    step(lambda: write_run_file(str(partial / _rank_file(group.rank)), meta, model, best, optimizer))
    step(commit)


def read_sharded(path: str | Path, group: ProcessGroup | None, where: str) -> Run:
    """This rank's part of a sharded run, every size checked against the files before anything
    is read, its file's digest against the sidecar's. Every rank raises if any rank failed."""
    root = Path(path)
    sidecar = root / SIDECAR
    if not sidecar.is_file():
        raise SpecError(f"{where}: {str(path)!r} is a directory without {SIDECAR}; it is not a tunespec "
                        f"sharded run checkpoint")
    if group is None:
        raise SpecError(f"{where}: {str(path)!r} is a sharded run checkpoint; resume it on every rank of the "
                        f"run's process group, into a model sharded as the run's was (shard the fresh model "
                        f"the same way first: tunespec.shard(model, recipe))")
    problem: list[BaseException] = []
    run = None
    try:
        run = _read_own_part(root, sidecar, group, where)
    except SpecError as exc:
        problem.append(exc)
    if not group.all_ok(not problem):
        if problem:
            raise problem[0]
        raise SpecError(f"{where}: another rank refused its file of {str(path)!r} (a digest does not match, "
                        f"or the file is malformed or missing); nothing was changed")
    return run


def _read_own_part(root: Path, sidecar: Path, group: ProcessGroup, where: str) -> Run:
    raw = read_bytes(sidecar, where, MAX_SIDECAR_BYTES)
    try:
        data = strict_json(raw)
        if not isinstance(data, dict) or data.get("format") != SHARDED_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ValueError(f"format {excerpt(found)}, not {SHARDED_FORMAT}")
        saved = data.pop("digest")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SpecError(f"{where}: {str(sidecar)!r} is not a tunespec sharded run description "
                        f"({excerpt(str(exc))})") from None
    if saved != _text_digest(data):
        raise SpecError(f"{where}: {str(sidecar)!r} was changed or damaged after it was written "
                        f"(its digest does not match); use another checkpoint")
    world, files, meta = data.get("world"), data.get("files"), data.get("meta")
    if type(world) is not int or not isinstance(files, dict) or not isinstance(meta, str):
        raise SpecError(f"{where}: {str(sidecar)!r} is not a complete tunespec sharded run description")
    if world != group.world:
        raise SpecError(f"{where}: {str(root)!r} was saved by {excerpt(world)} ranks, this run has "
                        f"{group.world}; resume with as many ranks (buffers such as BatchNorm "
                        f"statistics are per rank)")
    if sorted(files) != sorted(_rank_file(r) for r in range(world)):
        raise SpecError(f"{where}: {str(sidecar)!r} lists files {excerpt(sorted(files))}, not one per rank")
    for name, info in files.items():
        size = regular_file(root / name, where)  # sizes checked before anything is read
        if not (isinstance(info, dict) and info.get("bytes") == size and isinstance(info.get("sha256"), str)):
            raise SpecError(f"{where}: {str(root / name)!r} is {size} bytes, the sidecar says "
                            f"{excerpt(info.get('bytes') if isinstance(info, dict) else info)}; the "
                            f"checkpoint is incomplete or altered")
    own = root / _rank_file(group.rank)
    run = read_run_file(own, where)
    if _file_digest(own) != files[own.name]["sha256"]:
        raise SpecError(f"{where}: {str(own)!r} is not the file the sidecar lists (its digest differs); "
                        f"use another checkpoint")
    if run.meta != run_meta(meta, f"{where}: {str(sidecar)!r}"):
        raise SpecError(f"{where}: {str(own)!r} belongs to another save than its sidecar")
    run.sharded = True
    return run
