"""Weights files: Gluon .params (layout checked before MXNet reads them) and safetensors (run
checkpoints are the core's: tunespec.run_files)."""

from __future__ import annotations

import struct
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from tunespec.backend_api import MAX_DIMS, excerpt, first_line, read_bytes, read_safetensors_file, regular_file
from tunespec.errors import SpecError

from .listing import _shape

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

