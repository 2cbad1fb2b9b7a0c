"""FSDP2 (``fully_shard``) on the units the core chose, and sharded run checkpoints (DCP).

A sharded run checkpoint is a directory written by ``torch.distributed.checkpoint``: every rank
writes its shards (``*.distcp``), and rank 0 writes ``tunespec-run.json`` beside them with the
core's run description (recipe, stage, epoch), the optimizer and lr-scheduler structure, DCP's
metadata as JSON, and a sha256 digest of every data file and of the sidecar itself.

Nothing read runs code: resuming never opens DCP's own ``.metadata`` (a pickle); the reader is
given the metadata rebuilt from the JSON sidecar, the data files are checked against their
digests first, and DCP reads each tensor with ``torch.load(weights_only=True)``. Only tensors are
stored in the data files (DCP would pickle other values), the rest lives in the JSON.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from tunespec.backend_api import (RUN_LAYOUT, decode_tree, encode_tree, excerpt, read_bytes,
                                  writable_directory)
from tunespec.errors import SpecError

from .checkpoints import _check_optimizer_structure, _scheduler_state
from .execute import _is_dtensor
from .listing import _unwrap, _wrapper_attr

SIDECAR = "tunespec-run.json"
FORMAT = "tunespec-sharded/1"
_PARTIAL = ".tunespec-partial"  # the directory being written, renamed into place when complete
_OWN_OPTIONS = ("module", "mesh", "reshard_after_forward", "ignored_params")


def _fully_shard() -> Any:
    from torch.distributed.fsdp import fully_shard

    return fully_shard


def _module_at(model: nn.Module, path: str) -> nn.Module:
    """The module at a canonical path, seeing through wrappers as the listing does."""
    module = model
    for part in path.split(".") if path else ():
        while (attr := _wrapper_attr(module)) is not None:
            module = getattr(module, attr)
        module = module._modules[part]
    return _unwrap(module)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _text_digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --- DCP metadata as JSON ----------------------------------------------------------------------

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: Any) -> torch.dtype:
    value = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"not a dtype: {excerpt(name)}")
    return value


def _metadata_json(md: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries = {}
    for fqn, item in md.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata):
            raise SpecError(f"save_checkpoint: {fqn!r} is not a tensor; a sharded checkpoint stores "
                            f"tensors only")
        entries[fqn] = {"dtype": _dtype_name(item.properties.dtype), "size": list(item.size),
                        "chunks": [[list(c.offsets), list(c.sizes)] for c in item.chunks]}
    storage = [[k.fqn, None if k.offset is None else list(k.offset), k.index, v.relative_path, v.offset,
                v.length] for k, v in md.storage_data.items()]
    return {"entries": entries, "storage": storage, "version": md.version}


def _metadata(data: dict[str, Any]) -> Any:
    """DCP Metadata rebuilt from the sidecar; ValueError/TypeError/KeyError for anything odd."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    def ints(value: Any) -> torch.Size:
        if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
            raise ValueError(f"not a list of sizes: {excerpt(value)}")
        return torch.Size(value)

    entries = {}
    for fqn, e in data["entries"].items():
        chunks = [ChunkStorageMetadata(ints(o), ints(s)) for o, s in e["chunks"]]
        entries[str(fqn)] = TensorStorageMetadata(TensorProperties(dtype=_dtype(e["dtype"])), ints(e["size"]),
                                                  chunks)
    storage = {}
    for fqn, offset, index, rel, start, length in data["storage"]:
        if not isinstance(rel, str) or os.path.basename(rel) != rel or rel.startswith("."):
            raise ValueError(f"a data file outside the checkpoint: {excerpt(rel)}")
        if not all(type(v) is int and v >= 0 for v in (start, length)):
            raise ValueError("a storage offset is not a size")
        key = MetadataIndex(str(fqn), None if offset is None else ints(offset), index)
        storage[key] = _StorageInfo(rel, start, length)
    return Metadata(state_dict_metadata=entries, storage_data=storage,
                    planner_data={k: (k,) for k in entries}, version=data.get("version"))


def _model_key(name: str, t: torch.Tensor, rank: int) -> str:
    """A sharded tensor is one entry (each rank writes its shard); a plain one (a buffer: BatchNorm
    statistics, which FSDP2 neither shards nor synchronises) is saved per rank, so that each rank
    resumes with its own and the resumed run is the uninterrupted one on every rank."""
    return f"{RUN_LAYOUT.model}{name}" if _is_dtensor(t) else f"rank{rank}/{RUN_LAYOUT.model}{name}"


def _writer(path: str) -> Any:
    from torch.distributed.checkpoint import FileSystemWriter

    class Writer(FileSystemWriter):
        """Keeps the metadata the coordinator writes, to put it in the JSON sidecar."""

        metadata: Any = None

        def finish(self, metadata: Any, results: Any) -> None:
            super().finish(metadata, results)
            self.metadata = metadata

    return Writer(path, single_file_per_rank=True, thread_count=1)


def _reader(path: str, metadata: Any) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        """Reads the metadata from the checked sidecar, never from DCP's pickle."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata.storage_meta = StorageMeta(load_id=self.load_id)
            return metadata

    return Reader(path)


class TorchSharding:
    # --- sharding -------------------------------------------------------------------------
    def check_shard(self, model: nn.Module, mesh: Any = None, reshard_after_forward: bool | None = None,
                    **options: Any) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise SpecError("shard: torch.distributed is not initialised; call "
                            "torch.distributed.init_process_group(...) on every rank first")
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise SpecError("shard: the model is wrapped in DistributedDataParallel; shard the bare "
                            "model instead (sharding replaces data parallelism)")
        if self.is_sharded(model):
            raise SpecError("shard: the model is already sharded; shard a fresh model once")
        accepted = [k for k in inspect.signature(_fully_shard()).parameters if k not in _OWN_OPTIONS]
        for key in options:
            if key == "ignored_params":
                raise SpecError("shard: ignored_params would leave parameters out of the units the plan "
                                "chose; freeze them in the spec instead (frozen units hold no gradients "
                                "and no optimizer state)")
            if key not in accepted:
                raise SpecError(f"shard: unknown option {excerpt(key, 40)}; fully_shard takes "
                                f"{', '.join(accepted)} (and mesh, reshard_after_forward)")

    def shard(self, model: nn.Module, units: Sequence[str], **options: Any) -> None:
        fully_shard = _fully_shard()
        modules = [_module_at(model, path) for path in units]  # every path resolved first
        for module in modules:
            fully_shard(module, **options)

    def is_sharded(self, model: nn.Module) -> bool:
        from torch.distributed.fsdp import FSDPModule

        return any(isinstance(m, FSDPModule) for m in _unwrap(model).modules())

    # --- run checkpoints ------------------------------------------------------------------
    def save_sharded_run(self, path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                         lr_scheduler: Any, meta: str, best: dict[str, Any] | None) -> None:
        """Every rank writes its shards into ``path`` + '.tunespec-partial'; rank 0 adds the sidecar
        and renames the directory into place, so a crash mid-save leaves the last checkpoint."""
        import torch.distributed.checkpoint as dcp

        target = writable_directory(path, "save_checkpoint", SIDECAR)  # links followed
        partial = target.with_name(target.name + _PARTIAL)
        rank = dist.get_rank()
        tensors: dict[str, torch.Tensor] = {}

        def add(prefix: str) -> Any:
            def store(t: torch.Tensor) -> str:
                name = f"{prefix}/{sum(k.startswith(prefix + '/') for k in tensors)}"
                tensors[name] = t.detach()
                return name
            return store

        model_state = _unwrap(model).state_dict()
        tensors.update({_model_key(k, t, rank): t.detach() for k, t in model_state.items()})
        tensors.update({f"{RUN_LAYOUT.best}{k}": torch.from_numpy(v) for k, v in (best or {}).items()})
        state = {"world": dist.get_world_size(),
                 "model": {k: [_dtype_name(t.dtype), list(t.shape)] for k, t in model_state.items()},
                 "best": None if best is None else {k: [_dtype_name(torch.from_numpy(v).dtype), list(v.shape)]
                                                    for k, v in best.items()},
                 "optimizer": encode_tree(optimizer.state_dict(), self.is_tensor, add("opt")),
                 "lr_scheduler": None if lr_scheduler is None else encode_tree(
                     _scheduler_state(lr_scheduler), self.is_tensor, add("sched"))}
        try:
            if rank == 0:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
            dist.barrier()
            writer = _writer(str(partial))
            dcp.save(tensors, storage_writer=writer)
            dist.barrier()  # every rank's shards are on disk
            if rank == 0:
                files = {p.name: _sha256(p) for p in sorted(partial.glob("*.distcp"))}
                sidecar = {"format": FORMAT, "meta": meta, "state": state,
                           "dcp": _metadata_json(writer.metadata), "files": files}
                sidecar["digest"] = _text_digest(sidecar)
                (partial / SIDECAR).write_text(json.dumps(sidecar))
                old = target.with_name(target.name + ".tunespec-old")
                shutil.rmtree(old, ignore_errors=True)
                if target.exists():
                    target.rename(old)
                partial.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            dist.barrier()
        except OSError as exc:
            raise SpecError(f"save_checkpoint: cannot write {str(target)!r} ({exc}); the previous "
                            f"checkpoint is unchanged") from None

    def read_sharded_run(self, path: str, where: str) -> tuple[str, dict[str, Any]]:
        """The sidecar's run JSON and the run state, with every digest checked; tensors are
        described (meta tensors of the saved shapes) and read only by ``load_run_state``."""
        root = Path(path)
        sidecar = root / SIDECAR
        if not sidecar.is_file():
            raise SpecError(f"{where}: {path!r} is a directory without {SIDECAR}; it is not a tunespec "
                            f"sharded run checkpoint")
        if not (dist.is_available() and dist.is_initialized()):
            raise SpecError(f"{where}: {path!r} is a sharded run checkpoint; resume it on every rank of "
                            f"the run's process group (call torch.distributed.init_process_group first)")
        try:
            data = json.loads(read_bytes(str(sidecar), where))
            saved = data.pop("digest")
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format {excerpt(data.get('format'))}, not {FORMAT}")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise SpecError(f"{where}: {str(sidecar)!r} is not a tunespec sharded run description "
                            f"({excerpt(str(exc))})") from None
        if saved != _text_digest(data):
            raise SpecError(f"{where}: {str(sidecar)!r} was changed or damaged after it was written "
                            f"(its digest does not match); use another checkpoint")
        try:
            metadata = _metadata(data["dcp"])
            files = data["files"]
            used = {info.relative_path for info in metadata.storage_data.values()}
            for name in used:
                if name not in files:
                    raise ValueError(f"data file {name!r} has no digest")
                if not (root / name).is_file() or _sha256(root / name) != files[name]:
                    raise SpecError(f"{where}: {str(root / name)!r} is missing, changed or damaged (its "
                                    f"digest does not match the sidecar's); use another checkpoint")
            state = data["state"]
            if state["world"] != dist.get_world_size():
                raise SpecError(f"{where}: {path!r} was saved by {excerpt(state['world'])} ranks, this "
                                f"run has {dist.get_world_size()}; resume with as many ranks (buffers "
                                f"such as BatchNorm statistics are per rank under FSDP2)")
            entries = data["dcp"]["entries"]

            def stub(name: str) -> torch.Tensor:
                e = entries[name]
                return torch.empty(e["size"], dtype=_dtype(e["dtype"]), device="meta")

            model = {k: torch.empty(shape, dtype=_dtype(dtype), device="meta")
                     for k, (dtype, shape) in state["model"].items()}
            opt = decode_tree(state["optimizer"], stub)
            sched = None if state["lr_scheduler"] is None else decode_tree(state["lr_scheduler"], stub)
            _check_optimizer_structure(opt, sched)
            best = None if state["best"] is None else list(state["best"])
        except SpecError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, RecursionError) as exc:
            raise SpecError(f"{where}: {path!r} is not a complete tunespec sharded run checkpoint "
                            f"({type(exc).__name__}: {excerpt(str(exc))})") from None
        run = {"sharded": True, "path": path, "metadata": metadata, "model": model, "best": best,
               "best_names": best, "optimizer": opt, "lr_scheduler": sched,
               "trees": (state["optimizer"], state["lr_scheduler"])}
        return data["meta"], run

    def check_run_model(self, run: dict[str, Any], model: nn.Module) -> None:
        """A sharded run resumes into a sharded model and a file checkpoint into an unsharded one;
        then the saved tensors are compared as for any run."""
        if run.get("sharded") and not self.is_sharded(model):
            raise SpecError("resume: this checkpoint is of a sharded run; shard the fresh model the same "
                            "way first (tunespec.shard(model, recipe)), then resume into it")
        if not run.get("sharded") and self.is_sharded(model):
            raise SpecError("resume: this checkpoint is of an unsharded run, the model is sharded; resume "
                            "into an unsharded model (or tunespec.load its weights, then shard)")
        super().check_run_model(run, model)  # type: ignore[misc]

    def load_run_state(self, run: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                       lr_scheduler: Any) -> None:
        """Read the shards into tensors laid out like the live ones (each rank reads its own
        part), then load model, optimizer and lr scheduler."""
        if not run.get("sharded"):
            return super().load_run_state(run, model, optimizer, lr_scheduler)  # type: ignore[misc]
        import torch.distributed.checkpoint as dcp

        live = _unwrap(model).state_dict()
        rank = dist.get_rank()
        targets = {_model_key(k, t, rank): t.detach().clone() for k, t in live.items()}
        for k in run["best_names"] or ():
            s = run["metadata"].state_dict_metadata[f"{RUN_LAYOUT.best}{k}"]
            targets[f"{RUN_LAYOUT.best}{k}"] = torch.empty(s.size, dtype=s.properties.dtype)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        opt_tree, sched_tree = run["trees"]
        index_of: dict[str, torch.Tensor] = {}  # opt tensor name -> the parameter it belongs to

        def find(tree: Any, param: Any) -> None:
            if isinstance(tree, dict) and set(tree) == {"T"}:
                index_of[tree["T"]] = param
            elif isinstance(tree, dict):
                for v in tree.values():
                    find(v, param)
            elif isinstance(tree, list):
                for v in tree:
                    find(v, param)

        for pair in opt_tree["d"] if isinstance(opt_tree, dict) and "d" in opt_tree else ():
            if pair[0] == "state":
                for index, entry in pair[1]["d"]:
                    find(entry, params[index] if type(index) is int and index < len(params) else None)
        for name in [n for n in run["metadata"].state_dict_metadata if n.startswith(("opt/", "sched/"))]:
            # optimizer state shaped like a sharded parameter is sharded like it
            s = run["metadata"].state_dict_metadata[name]
            param = index_of.get(name)
            if param is not None and _is_dtensor(param) and tuple(s.size) == tuple(param.shape):
                targets[name] = torch.zeros_like(param.detach(), dtype=s.properties.dtype)
            else:
                targets[name] = torch.empty(s.size, dtype=s.properties.dtype)
        dcp.load(targets, storage_reader=_reader(run["path"], run["metadata"]))
        opt = decode_tree(opt_tree, targets.__getitem__)
        sched = None if sched_tree is None else decode_tree(sched_tree, targets.__getitem__)
        try:
            optimizer.load_state_dict(opt)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise SpecError(f"resume: the optimizer does not match the saved one ({excerpt(str(exc))}); "
                            f"build it from the run's recipe (pass the run's Schedule)") from None
        _unwrap(model).load_state_dict({k: targets[_model_key(k, t, rank)] for k, t in live.items()})
        if lr_scheduler is not None and sched is not None:
            lr_scheduler.load_state_dict(sched)
        if run["best_names"] is not None:
            run["best"] = {k: targets[f"{RUN_LAYOUT.best}{k}"].numpy() for k in run["best_names"]}
