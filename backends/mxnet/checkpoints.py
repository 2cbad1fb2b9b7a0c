"""Checkpoint files: Gluon .params (layout checked before MXNet reads them), safetensors, runs."""

from __future__ import annotations

import math
import struct
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from tunespec.backend_api import (MAX_DIMS, RUN_LAYOUT, decode_tree, encode_tree, excerpt, first_line, read_bytes,
                                  read_safetensors_file, regular_file, write_checked)
from tunespec.errors import SpecError

from .listing import _shape
from .update_rules import GLUON_OPTIMIZERS

_NP_CODES = {np.dtype(k): v for k, v in (("float64", "F64"), ("float32", "F32"), ("float16", "F16"),
                                             ("int64", "I64"), ("int32", "I32"), ("int16", "I16"),
                                             ("int8", "I8"), ("uint8", "U8"), ("bool", "BOOL"))}
_NP_DTYPES = {v: k for k, v in _NP_CODES.items()}
# Optimizer attributes that change while training: restored from the checkpoint, never compared.
_OPTIMIZER_STATE = ("num_update", "begin_num_update", "rescale_grad")
# Settings that change speed, never results: not compared on resume (aggregate_num: how many
# parameters one multi-tensor update takes, from MXNET_OPTIMIZER_AGGREGATION_SIZE).
_SPEED_ONLY = ("aggregate_num",)


def _np_entry(a: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """(dtype code, shape, bytes) of an array for tunespec.recipe.files' safetensors codec."""
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
            if not k.startswith("_") and k not in _OPTIMIZER_STATE + _SPEED_ONLY and _is_scalar(v)}


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
    """Arrays, None, tuples of them, or the fused SGD's ``[buffer, lr scale]`` (fused_rules)."""
    if value is None or isinstance(value, np.ndarray):
        return
    if isinstance(value, tuple):
        for v in value:
            _state_value(v)
        return
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], np.ndarray)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool)
            and math.isfinite(value[1]) and value[1] > 0):
        return
    raise ValueError(f"updater state entry {excerpt(value)} is not arrays")


def _to_context(value: Any, ctx: Any) -> Any:
    """A saved updater state (arrays, tuples of them, None) as NDArrays on ``ctx``."""
    if isinstance(value, np.ndarray):
        return mx.nd.array(value, ctx=ctx, dtype=value.dtype)
    if isinstance(value, tuple):
        return tuple(_to_context(v, ctx) for v in value)
    if isinstance(value, list):  # fused SGD: [buffer, lr scale]
        return [_to_context(value[0], ctx), float(value[1])]
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


class MXNetCheckpoints:
    """Framework calls for loading, saving and resuming; what to load is decided in the core."""

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
            raise SpecError(f"{path}: not an MXNet .params file ({excerpt(first_line(exc), 200)})") from None
        if not isinstance(loaded, dict):
            raise SpecError(f"{path}: holds an unnamed list of arrays; tunespec loads named parameters")
        return {k.split(":", 1)[1] if k.startswith(("arg:", "aux:")) else k: v for k, v in loaded.items()}

    def read_safetensors(self, path: str) -> dict[str, Any]:
        # numpy's reader: it refuses dtypes numpy lacks (bfloat16) with a TypeError, reported here
        return read_safetensors_file(path, "safetensors.numpy", "not a safetensors file MXNet can read")

    def to_numpy(self, value: Any) -> Any:
        if isinstance(value, mx.nd.NDArray):
            mx.nd.waitall()  # see tensor_bytes
            return value.asnumpy()
        return value

    def save_run(self, path: str, model: gluon.Block, trainer: gluon.Trainer,
                 lr_scheduler: Any, meta: str, best: dict[str, Any] | None) -> None:
        """One safetensors file: parameters, best weights and the updater's state arrays; the
        optimizer's counters, settings and the state's structure as JSON. Nothing is pickled."""
        if trainer._update_on_kvstore:
            raise SpecError("save_checkpoint: this Trainer keeps its optimizer state on the kvstore "
                            "(update_on_kvstore=True); build it with update_on_kvstore=False to checkpoint it")
        mx.nd.waitall()  # see tensor_bytes
        params = model._collect_params_with_prefix()
        entries = RUN_LAYOUT.pack({k: _np_entry(p.data(p.list_ctx()[0]).asnumpy()) for k, p in params.items()},
                                  None if best is None else {k: _np_entry(np.asarray(v)) for k, v in best.items()})
        add = RUN_LAYOUT.namer(entries, RUN_LAYOUT.optimizer, lambda array: _np_entry(array.asnumpy()))

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
        write_checked(path, entries, RUN_LAYOUT.metadata(meta, state))

    def load_run(self, tensors: dict[str, Any], metadata: dict[str, str], path: str) -> dict[str, Any]:
        """The run's state as numpy arrays and plain values; a SpecError for anything malformed."""
        try:
            arrays = {k: _np_array(*v) for k, v in tensors.items()}
            state, model, best = RUN_LAYOUT.unpack(arrays, metadata)
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
            exact = str(saved["type"]).lower() in GLUON_OPTIMIZERS["portable-exact"].values()
            hint = " with semantics='portable-exact' (the run used the full-precision rules)" if exact else ""
            raise SpecError(f"resume: the run used optimizer {excerpt(saved['type'])}, this Trainer has "
                            f"{type(o).__name__}; build it from the run's recipe (pass the run's Schedule)"
                            f"{hint}")
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

    @staticmethod
    def is_tensor(value: Any) -> bool:
        return isinstance(value, (mx.nd.NDArray, np.ndarray))

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

