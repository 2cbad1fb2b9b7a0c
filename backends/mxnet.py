"""MXNet Gluon backend (MXNet 1.9.x): lists a ``gluon.Block``'s parameters and executes a plan.

Names are structural (``features.0.weight``), never Gluon's counter-dependent prefixes
(``resnetv1b0_conv0_weight``). Inside a ``SymbolBlock`` (GluonCV's SSD/FPN feature
extractors) the tensors are flat; their names drop the block's common prefix at a
``_`` boundary, which is where the per-process counter (``ssd0_``, ``ssd1_``) lives.
Frozen BatchNorm statistics use the layer's own ``use_global_stats`` (for SymbolBlocks,
the attribute of the BatchNorm node), with cached graphs cleared so hybridized
models pick the change up.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import re
import struct
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon

from tunespec.cache import GraphNode
from tunespec.errors import MissingFrameworkError, SpecError
from tunespec.files import MAX_DIMS, decode_tree, encode_tree, excerpt, read_bytes, regular_file, write_checked
from tunespec.listing import Listing, ListingBuilder, class_names

_TRAINER_OPTIONS = ("kvstore", "compression_params", "update_on_kvstore")
_NORM_CLASSES = tuple(c for c in (getattr(gluon.nn, n, None) for n in (
    "BatchNorm", "BatchNormReLU", "LayerNorm", "InstanceNorm", "GroupNorm")) if c is not None)


def import_gluoncv() -> Any:
    """Import GluonCV beside torch >= 2.

    GluonCV 0.10.5's ``check.py`` raises when it finds torch >= 2.0 (and imports torch
    to find out). Only its optional torch half needs that check, so tunespec loads
    ``gluoncv.check`` first with the torch check turned into "torch absent", then
    imports GluonCV normally. Its MXNet model zoo is untouched.
    """
    if "gluoncv" in sys.modules:
        return sys.modules["gluoncv"]
    spec = importlib.util.find_spec("gluoncv")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("GluonCV is not installed; pip install 'tunespec[mxnet]'")
    path = os.path.join(spec.submodule_search_locations[0], "check.py")
    check_spec = importlib.util.spec_from_file_location("gluoncv.check", path)
    check = importlib.util.module_from_spec(check_spec)
    check_spec.loader.exec_module(check)

    def torch_half_disabled(*args: Any, **kwargs: Any) -> None:
        raise ImportError("gluoncv's torch half is not used by tunespec")

    check._require_pytorch_version = torch_half_disabled
    sys.modules["gluoncv.check"] = check
    try:
        import gluoncv
    except BaseException:
        sys.modules.pop("gluoncv.check", None)
        raise
    return gluoncv


@dataclass(eq=False)
class SymbolNorm:
    """A BatchNorm node inside a SymbolBlock's graph."""

    block: gluon.SymbolBlock
    node: str

    def _symbol(self) -> Any:
        return self.block._cached_graph[1].get_internals()[self.node + "_output"]


def _token_prefix(names: Sequence[str]) -> str:
    """The names' common prefix, cut back to a '_' boundary ('ssd0_mobilenet0_conv' -> 'ssd0_')."""
    if not names:
        return ""
    prefix = os.path.commonprefix(list(names))
    return prefix[: prefix.rfind("_") + 1]


_Constant = gluon.Constant
_KINDS: dict[type, tuple[str, bool, bool]] = {}


def _block_kind(cls: type) -> tuple[str, bool, bool]:
    """(layer type, is a norm layer, is a SymbolBlock), cached per class."""
    name = cls.__name__
    kind = _KINDS[cls] = (name, issubclass(cls, _NORM_CLASSES) or name.endswith("Norm"),
                          issubclass(cls, gluon.SymbolBlock))
    return kind


def _shape(p: gluon.Parameter) -> tuple[int, ...] | None:
    shape = p._shape  # the property re-checks numpy-shape mode on every read: slow on big models
    return shape if shape is None or type(shape) is tuple else tuple(map(int, shape))


# --- fine-tuning lifecycle: checkpoints, init, stages, resume, kvstore ----------------------------


def _prepare_trainer(trainer: gluon.Trainer) -> None:
    """Make a Trainer safe on a parameter server.

    With ``update_on_kvstore=False`` on ``dist_sync``, Trainer.step puts the parameters on the
    kvstore and pushes the first gradients in one go; with PyPI's MXNet 1.9.1 the first gradient
    sum that came back was then wrong in 2 of 5 two-worker runs in a row here (the same wrong
    value each time; the workers then disagree or agree on wrong weights). Putting the parameters
    on the kvstore first, waiting for the engine and passing a barrier made 10 of 10 runs right.
    Every worker builds its Trainer (and changes stage) at the same point of the script, so the
    barrier is met by all. Parameters whose shapes are not known yet keep MXNet's lazy
    initialisation.
    """
    _index_multipliers(trainer)
    kvstore = trainer._kvstore_params["kvstore"]
    kind = kvstore if isinstance(kvstore, str) else getattr(kvstore, "type", "")
    if "dist" not in kind or trainer._kvstore_params["update_on_kvstore"] is not False:
        return
    if any(p._deferred_init or p._data is None for p in trainer._params):
        return
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    mx.nd.waitall()
    trainer._kvstore._barrier()


def _index_multipliers(trainer: gluon.Trainer) -> None:
    """Copy each Parameter's lr_mult/wd_mult into the optimizer's per-index tables.

    Locally MXNet reads the multipliers from ``optimizer.param_dict``; but a Trainer that updates
    on a dist kvstore pickles the optimizer to the servers without ``param_dict`` (MXNet drops it),
    and the servers would then use 1.0 for every parameter. The per-index tables travel along.
    """
    optimizer = trainer._optimizer
    optimizer.lr_mult = {i: p.lr_mult for i, p in enumerate(trainer._params)}
    optimizer.wd_mult = {i: p.wd_mult for i, p in enumerate(trainer._params)}


_NP_CODES = {np.dtype(k): v for k, v in (("float64", "F64"), ("float32", "F32"), ("float16", "F16"),
                                             ("int64", "I64"), ("int32", "I32"), ("int16", "I16"),
                                             ("int8", "I8"), ("uint8", "U8"), ("bool", "BOOL"))}
_NP_DTYPES = {v: k for k, v in _NP_CODES.items()}
# Optimizer attributes that change while training: restored from the checkpoint, never compared.
_OPTIMIZER_STATE = ("num_update", "begin_num_update", "rescale_grad")


def _np_entry(a: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """(dtype code, shape, bytes) of an array for tunespec.files' safetensors codec."""
    a = np.ascontiguousarray(a)
    if a.dtype not in _NP_CODES:
        raise SpecError(f"save_checkpoint: cannot store a {a.dtype} array")
    return _NP_CODES[a.dtype], tuple(int(d) for d in a.shape), a.tobytes()


def _np_array(dtype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if dtype not in _NP_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    return np.frombuffer(bytes(data), dtype=_NP_DTYPES[dtype]).reshape(shape).copy()


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _optimizer_settings(o: mx.optimizer.Optimizer) -> dict[str, Any]:
    """The optimizer's scalar settings (lr, wd, momentum, betas, clipping...), compared on resume."""
    return {k: v for k, v in sorted(vars(o).items())
            if not k.startswith("_") and k not in _OPTIMIZER_STATE and _is_scalar(v)}


def _scheduler_scalars(sched: Any) -> dict[str, Any] | None:
    if sched is None:
        return None
    return {k: v for k, v in vars(sched).items() if _is_scalar(v) and not (isinstance(v, float) and v != v)}


def _arrays_in(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays_in(v)]
    return []


def _check_run_optimizer_json(states: Any, o: dict[str, Any]) -> None:
    """Structure a crafted file could get wrong, checked before anything is applied."""
    if not isinstance(states, dict):
        raise ValueError("updater states are not a mapping")
    for value in states.values():
        _state_value(value)
    if not isinstance(o["type"], str) or not isinstance(o["settings"], dict):
        raise ValueError("optimizer type or settings malformed")
    counts = o["counts"]
    if not isinstance(counts, dict) or not all(isinstance(v, dict) and all(
            isinstance(i, int) and isinstance(n, int) and not isinstance(n, bool) for i, n in v.items())
            for v in counts.values()):
        raise ValueError("update counts malformed")
    if o["current"] is not None and (isinstance(o["current"], bool) or not isinstance(o["current"], int)):
        raise ValueError("current update-count context is not an integer")
    for key in ("num_update", "begin_num_update"):
        if isinstance(o[key], bool) or not isinstance(o[key], int):
            raise ValueError(f"{key} is not an integer")
    if isinstance(o["rescale_grad"], bool) or not isinstance(o["rescale_grad"], (int, float)):
        raise ValueError("rescale_grad is not a number")
    m = o["multipliers"]
    if not (isinstance(m, dict) and isinstance(m.get("lr_mult"), dict) and isinstance(m.get("wd_mult"), dict)):
        raise ValueError("multipliers malformed")
    if o["lr_scheduler"] is not None and not isinstance(o["lr_scheduler"], dict):
        raise ValueError("lr scheduler state malformed")


def _state_value(value: Any) -> None:
    if value is None or isinstance(value, np.ndarray):
        return
    if isinstance(value, tuple):
        for v in value:
            _state_value(v)
        return
    raise ValueError(f"updater state entry {excerpt(value)} is not arrays")


def _to_context(value: Any, ctx: Any) -> Any:
    """A saved updater state (arrays, tuples of them, None) as NDArrays on ``ctx``."""
    if isinstance(value, np.ndarray):
        return mx.nd.array(value, ctx=ctx, dtype=value.dtype)
    if isinstance(value, tuple):
        return tuple(_to_context(v, ctx) for v in value)
    return value


_LIST_MAGIC = 0x112  # MXNet's NDArray-list file header
_NDARRAY_V2, _NDARRAY_V3 = 0xF993FAC9, 0xF993FACA  # per-array magic (V3: numpy shape semantics)
_ITEM_BYTES = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1, 8: 2, 9: 2, 10: 4, 11: 8, 12: 2}  # mshadow


def _check_params_layout(data: bytes) -> None:
    """Walk the layout of an MXNet ``.params`` file and check that every declared size fits.

    MXNet's reader trusts the sizes in the file: a crafted or damaged shape makes it allocate
    tens of gigabytes before it notices the file is short. Checked here first, it is a clear error.
    Dense arrays of the V2/V3 layouts are accepted (what ``save_parameters``, ``export`` and
    ``mx.nd.save`` write); sparse and legacy (pre-1.0) layouts are refused. Raises ValueError.
    """
    pos = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ValueError(f"truncated at byte {pos}")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    magic, _reserved = take("<QQ")
    if magic != _LIST_MAGIC:
        raise ValueError("wrong magic number")
    (count,) = take("<Q")
    if count > len(data) // 16:
        raise ValueError(f"it claims {count} arrays, more than its {len(data)} bytes can hold")
    for i in range(count):
        (magic,) = take("<I")
        if magic not in (_NDARRAY_V2, _NDARRAY_V3):
            raise ValueError(f"array {i}: a legacy or unknown layout (magic {magic:#x}); re-save it with "
                             f"MXNet >= 1.0")
        (storage,) = take("<i")
        if storage != 0:
            raise ValueError(f"array {i}: sparse storage; tunespec loads dense parameters")
        (ndim,) = take("<i")
        if ndim == (0 if magic == _NDARRAY_V2 else -1):
            continue  # an empty NDArray: nothing follows
        if not 0 <= ndim <= MAX_DIMS:
            raise ValueError(f"array {i}: {ndim} dimensions")
        dims = take(f"<{ndim}q")
        if any(d < 0 for d in dims):
            raise ValueError(f"array {i}: negative size in shape {dims}")
        take("<ii")  # its context: device type and id
        (flag,) = take("<i")
        if flag not in _ITEM_BYTES:
            raise ValueError(f"array {i}: unknown dtype flag {flag}")
        size = _ITEM_BYTES[flag]
        for d in dims:
            size = min(size * d, len(data) + 1)  # stays small: only whether it fits matters
        if pos + size > len(data):
            raise ValueError(f"array {i}: shape {excerpt(dims)} needs more bytes than the file has left")
        pos += size
    (names,) = take("<Q")
    if names not in (0, count):
        raise ValueError(f"{names} names for {count} arrays")
    for i in range(names):
        (length,) = take("<Q")
        if pos + length > len(data):
            raise ValueError(f"name {i} is longer than the rest of the file")
        pos += length
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last name")


class _MXNetLifecycle:
    """Framework calls for the lifecycle; what to load, initialise, add to a Trainer or save is
    decided in tunespec.loading, tunespec.init, tunespec.stages and tunespec.checkpoint."""

    def read_checkpoint(self, path: str, allow_pickle: bool) -> dict[str, Any]:
        """A Gluon ``.params`` file (save_parameters, or export's ``arg:``/``aux:`` keys). MXNet's
        format holds no pickle, so ``allow_pickle`` changes nothing here."""
        regular_file(path, "load", None)
        data = read_bytes(path, "load")
        try:
            _check_params_layout(data)
        except ValueError as exc:
            raise SpecError(f"{path}: not a valid MXNet .params file ({exc})") from None
        try:
            loaded = mx.nd.load_frombuffer(data)
        except Exception as exc:  # MXNetError, and whatever a damaged file makes the reader raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SpecError(f"{path}: not an MXNet .params file ({excerpt(first, 200)})") from None
        if not isinstance(loaded, dict):
            raise SpecError(f"{path}: holds an unnamed list of arrays; tunespec loads named parameters")
        return {k.split(":", 1)[1] if k.startswith(("arg:", "aux:")) else k: v for k, v in loaded.items()}

    def read_safetensors(self, path: str) -> dict[str, Any]:
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise MissingFrameworkError("reading .safetensors needs the safetensors package; "
                                        "pip install 'tunespec[safetensors]'") from None
        regular_file(path, "load", None)
        try:
            return load_file(path)
        except Exception as exc:  # SafetensorError, and TypeError for dtypes numpy lacks (bfloat16)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SpecError(f"{path}: not a safetensors file MXNet can read ({type(exc).__name__}: "
                            f"{excerpt(first, 200)})") from None

    def to_numpy(self, value: Any) -> Any:
        if isinstance(value, mx.nd.NDArray):
            mx.nd.waitall()  # see tensor_bytes
            return value.asnumpy()
        return value

    def optimizer_groups(self, trainer: gluon.Trainer) -> list[dict]:
        return []  # a Trainer has no groups: multipliers live on the Parameters

    def restage_optimizer(self, trainer: gluon.Trainer, layout: Sequence[dict],
                          added: Sequence[Any], removed: Sequence[Any], lr_scheduler: Any) -> None:
        """Append newly trainable parameters under new indices: the others keep their index, so their
        updater (and kvstore) state stays theirs. Removed ones stay listed; Gluon skips grad_req='null'."""
        new = [p for p in added if p.name not in trainer._param2idx]
        if new and trainer._kv_initialized and trainer._update_on_kvstore:
            raise SpecError("a stage adds parameters to a Trainer that updates on the kvstore "
                            "(update_on_kvstore=True, the default for dist kvstores and several devices); "
                            "MXNet cannot add them without resetting the kvstore's optimizer state. Build "
                            "the Trainer with update_on_kvstore=False (tunespec.optimizer(..., "
                            "update_on_kvstore=False)): the kvstore then only sums gradients")
        for p in new:
            index = len(trainer._params)
            trainer._param2idx[p.name] = index
            trainer._params.append(p)
            trainer._optimizer.param_dict[index] = p
            trainer._params_to_init.append(p)  # goes on the kvstore in _prepare_trainer or Trainer.step
        trainer._contexts = trainer._check_contexts()
        _prepare_trainer(trainer)

    def save_run(self, path: str, model: gluon.Block, trainer: gluon.Trainer,
                 lr_scheduler: Any, meta: str, best: dict[str, Any] | None) -> None:
        """One safetensors file: parameters, best weights and the updater's state arrays; the
        optimizer's counters, settings and the state's structure as JSON. Nothing is pickled."""
        if trainer._update_on_kvstore:
            raise SpecError("save_checkpoint: this Trainer keeps its optimizer state on the kvstore "
                            "(update_on_kvstore=True); build it with update_on_kvstore=False to checkpoint it")
        mx.nd.waitall()  # see tensor_bytes
        entries: dict[str, Any] = {}
        params = model._collect_params_with_prefix()
        for k, p in params.items():
            entries[f"model/{k}"] = _np_entry(p.data(p.list_ctx()[0]).asnumpy())
        for k, v in (best or {}).items():
            entries[f"best/{k}"] = _np_entry(np.asarray(v))

        def add(array: mx.nd.NDArray) -> str:
            name = f"opt/{sum(k.startswith('opt/') for k in entries)}"
            entries[name] = _np_entry(array.asnumpy())
            return name

        updater = trainer._updaters[0]
        o = trainer._optimizer
        current = next((k for k, v in o._all_index_update_counts.items() if v is o._index_update_count), None)
        state = {"model": list(params), "best": None if best is None else list(best),
                 "states": encode_tree(dict(updater.states), self.is_tensor, add),
                 "optimizer": {"type": type(o).__name__, "settings": _optimizer_settings(o),
                               "multipliers": encode_tree({"lr_mult": dict(o.lr_mult), "wd_mult": dict(o.wd_mult)},
                                                          self.is_tensor, add),
                               "counts": encode_tree(o._all_index_update_counts, self.is_tensor, add),
                               "current": current, "num_update": o.num_update,
                               "begin_num_update": o.begin_num_update,
                               "rescale_grad": o.rescale_grad,
                               "lr_scheduler": _scheduler_scalars(o.lr_scheduler)}}
        write_checked(path, entries, {"tunespec.run": meta, "tunespec.state": json.dumps(state)})

    def load_run(self, tensors: dict[str, Any], metadata: dict[str, str], path: str) -> dict[str, Any]:
        """The run's state as numpy arrays and plain values; a SpecError for anything malformed."""
        try:
            state = json.loads(metadata["tunespec.state"])
            arrays = {k: _np_array(*v) for k, v in tensors.items()}
            model = {k: arrays.pop(f"model/{k}") for k in state["model"]}
            best = None if state["best"] is None else {k: arrays.pop(f"best/{k}") for k in state["best"]}
            states = decode_tree(state["states"], arrays.__getitem__)
            o = dict(state["optimizer"])
            o["multipliers"] = decode_tree(o["multipliers"], arrays.__getitem__)
            o["counts"] = decode_tree(o["counts"], arrays.__getitem__)
            _check_run_optimizer_json(states, o)
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise SpecError(f"resume: {path!r} is not a complete tunespec run checkpoint "
                            f"({type(exc).__name__}: {excerpt(str(exc))})") from None
        return {"model": model, "best": best, "states": states, "optimizer": o}

    def check_run_model(self, run: dict[str, Any], model: gluon.Block) -> None:
        """The model has exactly the saved parameters, with the saved shapes and dtypes."""
        params = model._collect_params_with_prefix()
        saved = run["model"]
        odd = sorted(set(params) ^ set(saved))
        if odd:
            raise SpecError(f"resume: the model's parameters differ from the saved ones ({', '.join(odd[:4])}"
                            f"{', ...' if len(odd) > 4 else ''}); resume into the architecture the run used")
        for k, p in params.items():
            shape = _shape(p)
            if shape != tuple(saved[k].shape) or np.dtype(p.dtype) != saved[k].dtype:
                raise SpecError(f"resume: parameter {k!r} is {shape} {np.dtype(p.dtype)} in this model but "
                                f"{tuple(saved[k].shape)} {saved[k].dtype} in the checkpoint; resume into "
                                f"the architecture the run used")

    def check_run_optimizer(self, run: dict[str, Any], trainer: gluon.Trainer, lr_scheduler: Any) -> None:
        """Optimizer type and settings as saved, every state array the shape of its parameter."""
        saved, o = run["optimizer"], trainer._optimizer
        if saved["type"] != type(o).__name__:
            raise SpecError(f"resume: the run used optimizer {excerpt(saved['type'])}, this Trainer has "
                            f"{type(o).__name__}; build it from the run's recipe (pass the run's Schedule)")
        live = _optimizer_settings(o)
        for key in list(saved["settings"]) + [k for k in live if k not in saved["settings"]]:
            was, now = saved["settings"].get(key, "(absent)"), live.get(key, "(absent)")
            if was != now and not (was != was and now != now):
                raise SpecError(f"resume: optimizer.{key} differs: the run used {excerpt(was)}, this "
                                f"optimizer has {excerpt(now)}; build it from the run's recipe")
        for key in ("lr_mult", "wd_mult"):
            if {str(k): v for k, v in getattr(o, key).items()} != {str(k): v for k, v in saved["multipliers"][key].items()}:
                raise SpecError(f"resume: the optimizer's per-parameter {key} differ from the run's; build "
                                f"it from the run's recipe (pass the run's Schedule)")
        for index, value in run["states"].items():
            if not isinstance(index, int) or not 0 <= index < len(trainer._params):
                raise SpecError(f"resume: the saved optimizer state names parameter {excerpt(index)}, "
                                f"which the Trainer does not have")
            shape = _shape(trainer._params[index])
            for array in _arrays_in(value):
                if tuple(array.shape) != shape:
                    raise SpecError(f"resume: saved optimizer state of parameter {index} is "
                                    f"{tuple(array.shape)}, the parameter is {shape}")

    def load_run_state(self, run: dict[str, Any], model: gluon.Block,
                       trainer: gluon.Trainer, lr_scheduler: Any) -> None:
        params = model._collect_params_with_prefix()
        for k, v in run["model"].items():
            params[k].set_data(mx.nd.array(v, dtype=v.dtype))
        o, saved = trainer._optimizer, run["optimizer"]
        for updater, ctx in zip(trainer._updaters, trainer._contexts, strict=True):
            updater.states = {i: _to_context(v, ctx) for i, v in run["states"].items()}
            updater.states_synced = dict.fromkeys(updater.states, False)  # as Updater.set_states
        o._all_index_update_counts = {k: {int(i): int(n) for i, n in v.items()} for k, v in saved["counts"].items()}
        current = saved["current"]
        o._index_update_count = o._all_index_update_counts.setdefault(current if current is not None else 0, {})
        o.num_update, o.begin_num_update = int(saved["num_update"]), int(saved["begin_num_update"])
        o.rescale_grad = float(saved["rescale_grad"])
        if o.lr_scheduler is not None and saved["lr_scheduler"]:
            for key, value in saved["lr_scheduler"].items():
                if key in vars(o.lr_scheduler) and _is_scalar(value):
                    setattr(o.lr_scheduler, key, value)

    def optimizer_backup(self, trainer: gluon.Trainer) -> Any:
        """What a failed resume puts back: the Trainer's parameter table and the optimizer state."""
        o = trainer._optimizer
        return {"params": list(trainer._params), "param2idx": dict(trainer._param2idx),
                "param_dict": dict(o.param_dict), "to_init": list(trainer._params_to_init),
                "contexts": trainer._contexts,
                "updaters": [(u.states, u.states_synced) for u in trainer._updaters],
                "optimizer": {k: v for k, v in vars(o).items() if k not in ("param_dict",)},
                "counts": {k: dict(v) for k, v in o._all_index_update_counts.items()},
                "lr_mult": dict(o.lr_mult), "wd_mult": dict(o.wd_mult)}

    def optimizer_restore(self, trainer: gluon.Trainer, backup: Any) -> None:
        o = trainer._optimizer
        trainer._params[:] = backup["params"]
        trainer._param2idx.clear()
        trainer._param2idx.update(backup["param2idx"])
        o.param_dict = backup["param_dict"]
        trainer._params_to_init[:] = backup["to_init"]
        trainer._contexts = backup["contexts"]
        for u, (states, synced) in zip(trainer._updaters, backup["updaters"], strict=True):
            u.states, u.states_synced = states, synced
        vars(o).update(backup["optimizer"])
        for k, v in backup["counts"].items():
            o._all_index_update_counts[k].clear()
            o._all_index_update_counts[k].update(v)
        o.lr_mult, o.wd_mult = backup["lr_mult"], backup["wd_mult"]

    @staticmethod
    def is_tensor(value: Any) -> bool:
        return isinstance(value, (mx.nd.NDArray, np.ndarray))

    def is_distributed_wrapper(self, model: Any) -> bool:
        return False

    def rewrap(self, model: Any) -> Any:
        return model


# --- cached frozen prefix: trace a forward pass, cut it in two ------------------------------------

_FEATURES = "tunespec_features"


class _MXNetCachedPrefix:
    """Framework calls for cache_frozen; whether the cut is clean and the prefix frozen is decided
    in tunespec.cache."""

    def trace_split(self, model: gluon.Block, split: str) -> tuple[list[GraphNode], Any]:
        """Trace ``model`` symbolically; the nodes between ``split``'s input and output are its own."""
        if not isinstance(model, gluon.HybridBlock):
            raise SpecError(f"cache_frozen: {type(model).__name__} is not a HybridBlock; a Gluon model is cut "
                            f"through its symbolic graph")
        block = model
        for part in split.split("."):
            children = getattr(block, "_children", {})
            if part not in children:
                raise SpecError(f"cache_frozen: {type(block).__name__} has no child {part!r} (looking for "
                                f"{split!r}); its children are {', '.join(repr(c) for c in children)}")
            block = children[part]
        seen: dict[str, list[Any]] = {"in": [], "out": []}
        pre = block.register_forward_pre_hook(lambda b, args: seen["in"].extend(args))
        post = block.register_forward_hook(lambda b, args, out: seen["out"].append(out))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = model(mx.sym.var("data"))
        finally:
            pre.detach()
            post.detach()
        out = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
        graph = json.loads(out.tojson())
        raw = graph["nodes"]
        params = model.collect_params()
        for n in raw:  # a Parameter's symbol keeps the dtype/shape of its first use (stale after cast())
            if n["op"] == "null" and n["name"] in params:
                for key in ("__dtype__", "__shape__"):
                    n.get("attrs", {}).pop(key, None)
        out = mx.sym.load_json(json.dumps(graph))
        by_name = {n["name"]: i for i, n in enumerate(raw)}

        def closure(syms: list[Any]) -> set[int]:
            """Graph indices of these symbols' nodes and everything they depend on."""
            todo = [by_name[s.name] for s in syms if isinstance(s, mx.sym.Symbol) and s.name in by_name]
            found: set[int] = set()
            while todo:
                i = todo.pop()
                if i not in found:
                    found.add(i)
                    todo.extend(j for j, _, _ in raw[i]["inputs"])
            return found

        inside = closure([s for o in seen["out"] for s in (o if isinstance(o, (list, tuple)) else [o])])
        inside -= closure(seen["in"])
        ops = [i for i, n in enumerate(raw) if not (n["op"] == "null" and n["name"] in params)]
        index = {g: k for k, g in enumerate(ops)}
        nodes = []
        for g in ops:
            n = raw[g]
            ins = [j for j, _, _ in n["inputs"]]
            random = n["op"] == "Dropout" and float(n.get("attrs", {}).get("p", "0.5")) > 0
            nodes.append(GraphNode(n["name"], tuple(index[j] for j in ins if j in index),
                                   tuple(params[raw[j]["name"]] for j in ins if j not in index),
                                   is_input=n["op"] == "null", in_split=g in inside, random=random))
        heads = tuple(index[j] for j, _, _ in graph["heads"])
        nodes.append(GraphNode("output", heads))
        return nodes, (model, out, graph, ops)

    def cut_at(self, traced: Any, entry: int, prefix: frozenset[int]) -> tuple[Any, Any]:
        """Two SymbolBlocks sharing the model's Parameters: the prefix up to node ``entry``, and the
        rest with that node's value as its only input."""
        model, out, graph, ops = traced
        raw = graph["nodes"]
        e = ops[entry]
        used = {(j, k) for g, n in enumerate(raw) if g not in {ops[i] for i in prefix if i < len(ops)}
                for j, k, _ in n["inputs"] if j == e}
        used |= {(j, k) for j, k, _ in graph["heads"] if j == e}
        if len({k for _, k in used}) != 1:
            raise SpecError(f"cache_frozen: several outputs of {raw[e]['name']!r} cross the split")
        out_index = used.pop()[1]
        internals = out.get_internals()
        names = internals.list_outputs()
        wanted = [f"{raw[e]['name']}_output{out_index}", f"{raw[e]['name']}_output", raw[e]["name"]]
        front_sym = internals[next(w for w in wanted if w in names)]
        in_prefix = {ops[i] for i in prefix if i < len(ops)}
        keep = [g for g, n in enumerate(raw) if g not in in_prefix and n["op"] != "null"]
        needed = {j for g in keep for j, _, _ in raw[g]["inputs"] if j != e}
        keep = sorted(set(keep) | needed)
        new_index = {g: k + 1 for k, g in enumerate(keep)}
        new_index[e] = 0

        def entry_of(j: int, k: int, v: int) -> list[int]:
            return [0, 0, 0] if j == e else [new_index[j], k, v]

        nodes = [{"op": "null", "name": _FEATURES, "inputs": []}]
        nodes += [{**raw[g], "inputs": [entry_of(*i) for i in raw[g]["inputs"]]} for g in keep]
        back_json = {"nodes": nodes, "arg_nodes": [k for k, n in enumerate(nodes) if n["op"] == "null"],
                     "heads": [entry_of(*h) for h in graph["heads"]], "attrs": graph.get("attrs", {})}
        back_sym = mx.sym.load_json(json.dumps(back_json))
        params = model.collect_params()
        dtype = next(iter(params.values())).dtype  # SymbolBlock infers parameter dtypes from its inputs'
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            front = gluon.SymbolBlock(front_sym, [mx.sym.var("data", dtype=dtype)], params=params)
            back = gluon.SymbolBlock(back_sym, [mx.sym.var(_FEATURES, dtype=dtype)], params=params)
        return front, back

    def run_frozen(self, prefix: gluon.Block, x: Any) -> Any:
        with mx.autograd.pause():
            return prefix(x)

    def serve_kvstore(self) -> None:
        """Run the parameter-server loop of this process's DMLC_ROLE, with tunespec's optimizers loaded."""
        from mxnet.kvstore import kvstore_server

        kvstore_server._init_kvstore_server_module()

class MXNetBackend(_MXNetLifecycle, _MXNetCachedPrefix):
    name = "mxnet"

    def owns(self, model: Any) -> bool:
        return isinstance(model, gluon.Block)

    def load_file(self, model: gluon.Block, path: str, allow_pickle: bool = False) -> None:
        """A whole ``.params`` file into ``model``: every name and shape checked before any is set."""
        loaded = self.read_checkpoint(path, allow_pickle)
        params = model._collect_params_with_prefix()
        odd = sorted(set(params) ^ set(loaded))
        if odd:
            raise SpecError(f"{path}: its names differ from the model's ({', '.join(map(excerpt, odd[:4]))}); "
                            f"use tunespec.load for partial loading")
        for k, p in params.items():
            if tuple(loaded[k].shape) != _shape(p):
                raise SpecError(f"{path}: {k!r} is {tuple(loaded[k].shape)} in the file, {_shape(p)} in the model")
        for k, p in params.items():
            p.set_data(loaded[k].astype(p.dtype))

    def save_file(self, model: gluon.Block, path: str) -> None:
        mx.nd.waitall()  # see tensor_bytes
        model.save_parameters(path)

    def owns_optimizer(self, optimizer: Any) -> bool:
        return isinstance(optimizer, gluon.Trainer)

    def listing(self, model: gluon.Block) -> Listing:
        found = ListingBuilder()
        add, layer = found.add, found.layer  # called per tensor / per block on 100,000-tensor models
        visited: list[tuple[gluon.Block, tuple[str, ...]]] = []
        dicts: list[OrderedDict] = []  # each block's own ParameterDict storage, read while it is hot
        stack: list[tuple[gluon.Block, tuple[str, ...]]] = [(model, ())]  # pre-order, as recursion
        while stack:
            block, path = entry = stack.pop()
            visited.append(entry)
            dicts.append(block._params._params)
            layer_type, is_norm, is_symbol = _KINDS.get(type(block)) or _block_kind(type(block))
            if is_symbol:
                self._list_symbol_block(block, path, found)
                continue
            layer(path, layer_type, is_norm)
            regs = block._reg_params
            for leaf, p in regs.items():  # _grad_req: the grad_req property's own storage
                add(p, leaf, p.name, _shape(p), not p._differentiable or isinstance(p, _Constant),
                    p._grad_req != "null", p.lr_mult, p.wd_mult)
            if is_norm and "running_mean" in regs:
                kwargs = getattr(block, "_kwargs", None) or {}
                if "use_global_stats" in kwargs:
                    found.add_norm(block, tuple(regs[k] for k in ("gamma", "beta") if k in regs),
                                   tuple(regs[k] for k in ("running_mean", "running_var") if k in regs),
                                   bool(kwargs["use_global_stats"]), layer_type)
            children = block._children
            if children:
                stack.extend([(child, path + (name,)) for name, child in reversed(children.items())])
        # Parameters made with self.params.get() but never assigned to an attribute (what
        # collect_params() adds): name them under the deepest block whose prefix they carry
        # (still counter-free).
        strays = found.unknown(itertools.chain.from_iterable(map(OrderedDict.items, dicts))) \
            if found.missing(itertools.chain.from_iterable(map(dict.values, dicts))) else []
        owners = [(b.prefix, path) for b, path in visited] if strays else []
        for full, p in strays:
            prefix, path = max((o for o in owners if full.startswith(o[0])), key=lambda o: len(o[0]),
                               default=("", ()))
            layer(path, "Parameter")
            add(p, full[len(prefix):], p.name, _shape(p), not p._differentiable or isinstance(p, _Constant),
                p.grad_req != "null", p.lr_mult, p.wd_mult)
        types = class_names(type(model))
        return found.build(types[0], types[1:])

    def _list_symbol_block(self, block: gluon.SymbolBlock, path: tuple[str, ...], found: ListingBuilder) -> None:
        params = block.params
        full_names = list(params.keys())
        strip = len(_token_prefix(full_names))
        graph = json.loads(block._cached_graph[1].tojson())
        nodes = graph["nodes"]
        norm_inputs: dict[str, tuple[str, list[str]]] = {}
        for node in nodes:
            if node["op"] == "BatchNorm":
                inputs = [nodes[i[0]]["name"] for i in node["inputs"]]
                norm_inputs[node["name"]] = (node.get("attrs", {}).get("use_global_stats", "False"),
                                             inputs[1:])
        in_norm = {n for _, ins in norm_inputs.values() for n in ins}
        # A SymbolBlock makes its own Parameters for layers it was not given (GluonCV's SSD
        # expansion layers), marking running statistics only by grad_req: the graph knows.
        aux = set(block._cached_graph[1].list_auxiliary_states())
        for full in full_names:
            p = params[full]
            found.layer(path, "SymbolBlock", full in in_norm)
            found.add(p, full[strip:], p.name, _shape(p),
                      full in aux or not p._differentiable or isinstance(p, _Constant),
                      p.grad_req != "null", p.lr_mult, p.wd_mult)
        for node, (global_stats, (gamma, beta, mean, var)) in norm_inputs.items():
            layer = node[strip:]
            found.layer(path + (layer[: -len("_fwd")] if layer.endswith("_fwd") else layer,), "BatchNorm", True)
            found.add_norm(SymbolNorm(block, node), tuple(params[n] for n in (gamma, beta) if n in full_names),
                           tuple(params[n] for n in (mean, var) if n in full_names),
                           global_stats == "True", "BatchNorm")

    # --- trainability ---------------------------------------------------------------------
    def snapshot(self, handle: gluon.Parameter) -> tuple[str, float, float]:
        return handle.grad_req, handle.lr_mult, handle.wd_mult

    def restore(self, handle: gluon.Parameter, saved: tuple[str, float, float], rollback: bool = False) -> None:
        handle.grad_req, handle.lr_mult, handle.wd_mult = saved

    def set_param(self, handle: gluon.Parameter, trainable: bool, lr_mult: float, wd_mult: float) -> None:
        if not trainable:
            handle.grad_req = "null"  # Gluon drops the gradient buffer: no stale gradient is left
        elif handle.grad_req == "null":
            handle.grad_req = "write"
        handle.lr_mult = lr_mult
        handle.wd_mult = wd_mult

    # --- norm statistics ------------------------------------------------------------------
    def norm_stats_frozen(self, norm: Any) -> bool:
        if isinstance(norm, SymbolNorm):
            return norm._symbol().attr("use_global_stats") == "True"
        return bool(norm._kwargs["use_global_stats"])

    def set_norm_stats_frozen(self, norm: Any, frozen: bool, model: Any = None) -> None:
        """Gluon has no per-block mode (train or predict is chosen per forward by autograd), so the
        flag itself is the whole state: restore sets exactly the flag saved before apply."""
        if isinstance(norm, SymbolNorm):
            norm._symbol()._set_attr(use_global_stats=str(bool(frozen)))
        else:
            norm._kwargs["use_global_stats"] = bool(frozen)

    def commit(self, model: gluon.Block) -> None:
        """Drop hybridized graphs so the next forward is traced with the new settings."""
        def clear(block: gluon.Block) -> None:
            if isinstance(block, gluon.HybridBlock):
                block._clear_cached_op()
            for child in block._children.values():
                clear(child)

        clear(model)

    # --- tensors and optimizers -----------------------------------------------------------
    def tensor_bytes(self, handle: gluon.Parameter) -> bytes | None:
        if handle._data is None:
            return None
        # MXNet 1.9.1's oneDNN build reorders a conv weight into its own layout in place,
        # asynchronously, after an inference-mode forward; asnumpy() does not wait for that
        # reorder and can return permuted bytes (the weight itself stays correct). Waiting
        # for all pending engine work first makes the read exact.
        mx.nd.waitall()
        return b"".join(d.asnumpy().tobytes() for d in handle.list_data())

    def read(self, handle: gluon.Parameter) -> Any:
        mx.nd.waitall()  # see tensor_bytes
        return handle.data().asnumpy().copy()

    def write(self, handle: gluon.Parameter, array: Any) -> None:
        handle.set_data(mx.nd.array(array, dtype=handle.dtype))

    def optimizer_handles(self, trainer: gluon.Trainer) -> list[Any]:
        return list(trainer._params)

    def build_optimizer(self, groups: Sequence[dict], name: Any, lr: float | None,
                        weight_decay: float, semantics: str = "torch", **options: Any) -> gluon.Trainer:
        params = [p for g in groups for p in g["params"]]
        trainer_options = {k: options.pop(k) for k in _TRAINER_OPTIONS if k in options}
        opt = self._optimizer_name(name, semantics)
        optimizer_params = {"wd": weight_decay, **options}
        if lr is not None:
            optimizer_params["learning_rate"] = lr
        trainer = gluon.Trainer(params, opt, optimizer_params, **trainer_options)
        _prepare_trainer(trainer)  # for parameter servers (see there)
        return trainer

    def optimizer_options(self, name: Any, semantics: str = "torch") -> frozenset[str] | None:
        """The options a Trainer with this optimizer takes: the registered optimizer's ``__init__``
        keywords up its class chain (MXNet passes **kwargs on to the base Optimizer), the Trainer's
        own and tunespec's ``weight_decay``; None if some class takes arbitrary keywords."""
        opt = self._optimizer_name(name, semantics)
        names = set(_TRAINER_OPTIONS) | {"weight_decay"}
        # The Trainer sets the first three itself; tunespec sets the others from lr, weight_decay
        # and tunespec.scheduler, so passing them as options would bypass the plan's multipliers.
        internal = {"param_idx2name", "param_dict", "sym", "learning_rate", "wd", "lr_scheduler",
                    "begin_num_update"}
        for cls in mx.optimizer.Optimizer.opt_registry[opt].__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters
            names.update(k for k, p in params.items()
                         if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                return frozenset(names - internal)
            if cls is mx.optimizer.Optimizer:
                break
        return None

    @staticmethod
    def _optimizer_name(name: Any, semantics: str) -> str:
        if not isinstance(name, str):
            raise SpecError(f"Gluon optimizers are named by string ('sgd', 'adam', 'adamw', ...), "
                            f"got {type(name).__name__}")
        opt = _GLUON_OPTIMIZERS.get(semantics, {}).get(name.lower(), name.lower())
        if opt not in mx.optimizer.Optimizer.opt_registry:
            raise SpecError(f"unknown MXNet optimizer {name[:40]!r}; registered: "
                            f"{', '.join(sorted(mx.optimizer.Optimizer.opt_registry))}, adamw")
        return opt

    def optimizer_snapshot(self, trainer: gluon.Trainer, lr_scheduler: Any) -> Any:
        """What restage_optimizer / attach_schedule change on a Trainer (local kvstores: a dist
        kvstore's server state cannot be taken back, which is why restage refuses to grow one)."""
        o = trainer._optimizer
        if lr_scheduler is not None and lr_scheduler is not o.lr_scheduler:
            raise SpecError(f"lr_scheduler: a Gluon Trainer steps its own lr scheduler, so another one "
                            f"({type(lr_scheduler).__name__}) would have no effect; leave lr_scheduler out")
        return {"params": list(trainer._params), "param2idx": dict(trainer._param2idx),
                "param_dict": dict(o.param_dict), "to_init": list(trainer._params_to_init),
                "contexts": trainer._contexts, "lr_mult": dict(o.lr_mult), "wd_mult": dict(o.wd_mult),
                "lr_scheduler": o.lr_scheduler, "states": [dict(u.states) for u in trainer._updaters]}

    def optimizer_rollback(self, trainer: gluon.Trainer, lr_scheduler: Any, saved: Any) -> None:
        o = trainer._optimizer
        trainer._params[:] = saved["params"]
        trainer._param2idx.clear()
        trainer._param2idx.update(saved["param2idx"])
        o.param_dict.clear()
        o.param_dict.update(saved["param_dict"])
        trainer._params_to_init[:] = saved["to_init"]
        trainer._contexts = saved["contexts"]
        o.lr_mult, o.wd_mult, o.lr_scheduler = saved["lr_mult"], saved["wd_mult"], saved["lr_scheduler"]
        for updater, states in zip(trainer._updaters, saved["states"], strict=True):
            updater.states.clear()
            updater.states.update(states)

    def attach_schedule(self, trainer: gluon.Trainer, factor: Any) -> ScheduleAdapter:
        optimizer = trainer._optimizer
        base = optimizer.lr_scheduler.base_lr if optimizer.lr_scheduler else optimizer.lr
        optimizer.lr_scheduler = ScheduleAdapter(factor, base)
        return optimizer.lr_scheduler


def _rescaled(opt: mx.optimizer.Optimizer, grad: mx.nd.NDArray) -> mx.nd.NDArray:
    grad = grad * opt.rescale_grad  # 1/batch_size from trainer.step(batch_size)
    if opt.clip_gradient is not None:
        grad = mx.nd.clip(grad, -opt.clip_gradient, opt.clip_gradient)
    return grad


@mx.optimizer.register
class TorchSGD(mx.optimizer.Optimizer):
    """SGD with torch.optim.SGD's update rule, so runs match torch when the lr changes.

    torch: g += wd*w; buf = momentum*buf + (1-dampening)*g (buf = g at the first step);
    w -= lr*buf. MXNet's own SGD keeps lr inside the buffer (mom = momentum*mom - lr*g),
    which differs from the step after an lr change on. Scalars stay float64 here, while
    MXNet's fused update ops take lr, momentum and wd as float32 attributes.
    """

    def __init__(self, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov

    def create_state(self, index: int, weight: mx.nd.NDArray) -> Any:
        return mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype) if self.momentum else None

    def update(self, index: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray, state: Any) -> None:
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        grad = _rescaled(self, grad) + wd * weight
        if self.momentum:
            if self._index_update_count[index] == 1:
                state[:] = grad
            else:
                state[:] = self.momentum * state + (1 - self.dampening) * grad
            grad = grad + self.momentum * state if self.nesterov else state
        weight[:] = weight - lr * grad


class _TorchAdamRule(mx.optimizer.Optimizer):
    """Adam with torch's update rule: w -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps).

    MXNet's own Adam uses eps without the bias correction (m / (sqrt(v) + eps) scaled by
    sqrt(bc2)/bc1), which differs from torch while v is small.
    """

    decoupled = False

    def __init__(self, learning_rate: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon

    def create_state(self, index: int, weight: mx.nd.NDArray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        return (mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype),
                mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype))

    def update(self, index: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray, state: Any) -> None:
        self._update_count(index)
        t = self._index_update_count[index]
        lr, wd = self._get_lr(index), self._get_wd(index)
        grad = _rescaled(self, grad)
        if self.decoupled:
            weight[:] = weight * (1 - lr * wd)
        else:
            grad = grad + wd * weight
        mean, var = state
        mean[:] = self.beta1 * mean + (1 - self.beta1) * grad
        var[:] = self.beta2 * var + (1 - self.beta2) * grad * grad
        bc1, bc2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
        denom = mx.nd.sqrt(var) / bc2 ** 0.5 + self.epsilon
        weight[:] = weight - (lr / bc1) * mean / denom


@mx.optimizer.register
class TorchAdam(_TorchAdamRule):
    """torch.optim.Adam: weight decay added to the gradient (L2)."""


@mx.optimizer.register
class TorchAdamW(_TorchAdamRule):
    """torch.optim.AdamW: decoupled weight decay, w -= lr*wd*w before the Adam step.

    MXNet 1.9.1 has no AdamW optimizer, so this serves both semantics.
    """

    decoupled = True


# Optimizer names under each semantics: 'torch' follows torch's update rules in Gluon too.
_GLUON_OPTIMIZERS = {
    "torch": {"sgd": "torchsgd", "adam": "torchadam", "adamw": "torchadamw"},
    "native": {"adamw": "torchadamw"},
}


class ScheduleAdapter(mx.lr_scheduler.LRScheduler):
    """An MXNet lr scheduler computing lr from tunespec's framework-neutral schedule.

    MXNet calls it with the update count starting at 1; torch's LambdaLR uses 0 for the
    first step. Shifting by one gives both frameworks the same lr at every step.
    """

    def __init__(self, factor: Any, base_lr: float):
        super().__init__(base_lr=base_lr)
        self.factor = factor

    def __call__(self, num_update: int) -> float:
        return self.base_lr * self.factor(max(num_update - 1, 0))


def build_model(zoo: str, name: str, input_size: int | None = None) -> gluon.Block:
    """A GluonCV model built offline, initialised, with shapes inferred by one small forward."""
    gcv = import_gluoncv()
    factories = gcv.model_zoo.model_zoo._models
    if name.lower() not in factories:
        close = [n for n in factories if name.lower().split("_")[0] in n][:5]
        raise SpecError(f"GluonCV has no model {name!r}; similar: "
                        f"{', '.join(close) or 'see gluoncv.model_zoo'}")
    factory = factories[name.lower()]
    kwargs: dict[str, Any] = {"pretrained": False}
    params = inspect.signature(factory).parameters
    if "pretrained_base" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs["pretrained_base"] = False
    with warnings.catch_warnings():  # GluonCV's SymbolBlocks warn about untyped inputs
        warnings.simplefilter("ignore")
        try:
            net = factory(**kwargs)
        except TypeError:
            kwargs.pop("pretrained_base", None)
            net = factory(**kwargs)
    net.initialize()
    size = input_size or int((re.findall(r"_(\d{3})_", f"_{name}_") or ["224"])[0])
    with mx.autograd.pause():
        try:
            net(mx.nd.zeros((1, 3, size, size)))
        except mx.MXNetError:
            pass  # shapes stay deferred; the plan shows them as '?'
    return net


BACKEND = MXNetBackend()
