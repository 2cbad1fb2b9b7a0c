"""Weights files: torch files (weights_only unless opted in) and safetensors (run checkpoints are the
core's: tunespec.run_files)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunespec.backend_api import excerpt, first_line, read_safetensors_file, regular_file
from tunespec.errors import SpecError

from .listing import _unwrap

_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                       torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
                       torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


class TorchCheckpoints:
    """Framework calls for loading, saving and resuming; what to load is decided in the core."""

    def read_checkpoint(self, path: str, allow_pickle: bool) -> Any:
        """A torch file, read with ``weights_only=True`` unless the caller opted into pickle."""
        regular_file(path, "load", None)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except Exception as exc:
            first = first_line(exc)
            if not allow_pickle and "weights_only" in str(exc).lower():
                raise SpecError(f"{path}: this checkpoint needs pickle to load ({excerpt(first, 200)}); "
                                f"unpickling can run arbitrary code, so tunespec refuses it. If you trust "
                                f"the file, pass allow_pickle=True") from None
            raise SpecError(f"{path}: not a torch checkpoint ({type(exc).__name__}: {excerpt(first, 200)})") from None
        return obj.state_dict() if isinstance(obj, nn.Module) else obj

    def read_safetensors(self, path: str) -> dict[str, torch.Tensor]:
        return read_safetensors_file(path, "safetensors.torch", "not a valid safetensors file", device="cpu")

    def to_numpy(self, value: Any) -> Any:
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        return value.numpy()

    @staticmethod
    def is_tensor(value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def load_file(self, model: nn.Module, path: str, allow_pickle: bool = False) -> None:
        """A whole state_dict into ``model``: every key and shape checked before any is copied
        (torch's own load_state_dict copies what matches before it reports the rest)."""
        state = self.read_checkpoint(path, allow_pickle)
        live = _unwrap(model).state_dict()
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise SpecError(f"{path}: not a state_dict of named tensors; use tunespec.load(model, path, "
                            f"key=...) for training checkpoints")
        odd = sorted(set(live) ^ set(state))
        if odd:
            raise SpecError(f"{path}: its keys differ from the model's ({', '.join(map(excerpt, odd[:4]))}); "
                            f"use tunespec.load for partial loading")
        for k, t in live.items():
            if tuple(state[k].shape) != tuple(t.shape):
                raise SpecError(f"{path}: {k!r} is {tuple(state[k].shape)} in the file, {tuple(t.shape)} "
                                f"in the model")
            if not (state[k].dtype.is_floating_point or state[k].dtype in _SAFETENSORS_DTYPES):
                raise SpecError(f"{path}: {k!r} has dtype {state[k].dtype}, not a number type")
        _unwrap(model).load_state_dict(state)

    def save_file(self, model: nn.Module, path: str) -> None:
        torch.save(_unwrap(model).state_dict(), path)

