"""The calls the core makes on a backend. Backends describe and execute; they decide nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from .files import MAX_DIMS, decode_tree, encode_tree, read_bytes, regular_file, write_checked
from .listing import Listing, ListingBuilder, class_names
from .validate import excerpt

__all__ = ["MAX_DIMS", "Backend", "GraphNode", "Group", "Sharding", "Listing", "ListingBuilder",
           "class_names", "decode_tree", "encode_tree", "excerpt", "read_bytes", "regular_file", "write_checked"]


@dataclass(frozen=True)
class GraphNode:
    """One operation of a traced forward pass, as the core needs to see it."""

    name: str  # the backend's node name, for messages
    inputs: tuple[int, ...]  # indices of the earlier nodes whose values it uses
    tensors: tuple[Any, ...] = ()  # parameter / state handles it reads
    is_input: bool = False  # a model input
    in_split: bool = False  # computed inside the split module
    random: bool = False  # draws random numbers when training (dropout)


class Group(dict):
    """One optimizer parameter group: ``params`` (handles) plus lr/wd multipliers and names."""


class Backend(Protocol):
    name: str  # 'torch' or 'mxnet'

    def owns(self, model: Any) -> bool:
        """Whether ``model`` is this framework's model type."""

    def owns_optimizer(self, optimizer: Any) -> bool:
        """Whether ``optimizer`` is this framework's optimizer / Trainer."""

    def listing(self, model: Any) -> Listing:
        """Every parameter and state tensor, norm layers with running statistics, the model type."""

    def snapshot(self, handle: Any) -> Any:
        """The tensor's trainability and multipliers, opaque, for ``restore``."""

    def restore(self, handle: Any, saved: Any, rollback: bool = False) -> None:
        """Put back a ``snapshot``; ``rollback`` (undoing a call that just failed) also gives back
        what setting it dropped, such as a torch gradient."""

    def set_param(self, handle: Any, trainable: bool, lr_mult: float, wd_mult: float) -> None:
        """Set trainability (clearing the gradient of a frozen tensor) and multipliers."""

    def norm_stats_frozen(self, norm: Any) -> bool:
        ...

    def set_norm_stats_frozen(self, norm: Any, frozen: bool, model: Any = None) -> None:
        """Freeze or release a norm layer's running statistics without replacing the layer; a
        released layer takes the train/eval mode ``model`` is in now, where layers have modes."""

    def commit(self, model: Any) -> None:
        """Make changed settings visible to compiled / hybridized graphs."""

    def tensor_bytes(self, handle: Any) -> bytes | None:
        """The tensor's raw bytes (None while a Gluon parameter is not initialised)."""

    def read(self, handle: Any) -> Any:
        """The tensor's values as a numpy array (a copy)."""

    def write(self, handle: Any, array: Any) -> None:
        """Overwrite the tensor's values (cast to its dtype); the array has the tensor's shape."""

    def optimizer_handles(self, optimizer: Any) -> list[Any]:
        """The parameter handles an optimizer / Trainer updates."""

    def build_optimizer(self, groups: Sequence[Group], name: Any, lr: float | None,
                        weight_decay: float, semantics: str = "torch", **options: Any) -> Any:
        """A torch optimizer over ``groups`` or a ``gluon.Trainer`` over their parameters."""

    def optimizer_options(self, name: Any, semantics: str = "torch") -> frozenset[str] | None:
        """The option names ``build_optimizer`` accepts for optimizer ``name`` (None: any), so
        that a misspelt option is refused before the model is touched; raises for an unknown name."""

    def attach_schedule(self, optimizer: Any, factor: Any) -> Any:
        """Make ``optimizer`` use lr = base lr * factor(t) at optimizer step t (0-based)."""

    def optimizer_snapshot(self, optimizer: Any, lr_scheduler: Any) -> Any:
        """Opaque copy of what ``restage_optimizer`` and ``attach_schedule`` change."""

    def optimizer_rollback(self, optimizer: Any, lr_scheduler: Any, saved: Any) -> None:
        """Put back an ``optimizer_snapshot``: groups, per-parameter state, lr scheduler lists."""

    # --- the fine-tuning lifecycle (tunespec.loading, init, stages, checkpoint) -------------
    def read_checkpoint(self, path: str, allow_pickle: bool) -> Any:
        """A checkpoint file's named tensors (torch: weights_only unless ``allow_pickle``)."""

    def read_safetensors(self, path: str) -> dict[str, Any]:
        ...

    def is_tensor(self, value: Any) -> bool:
        ...

    def to_numpy(self, value: Any) -> Any:
        """A checkpoint value as numpy (other values unchanged)."""

    def optimizer_groups(self, optimizer: Any) -> list[dict]:
        """The optimizer's param groups (a Gluon Trainer has none)."""

    def restage_optimizer(self, optimizer: Any, layout: Sequence[dict], added: Sequence[Any],
                          removed: Sequence[Any], lr_scheduler: Any) -> None:
        """Regroup the optimizer as ``layout`` after a stage change, keeping kept parameters' state."""

    def is_distributed_wrapper(self, model: Any) -> bool:
        ...

    def rewrap(self, model: Any) -> Any:
        """A distributed wrapper rebuilt so that it reduces the newly trainable parameters."""

    def save_run(self, path: str, model: Any, optimizer: Any, lr_scheduler: Any, meta: str,
                 best: dict[str, Any] | None) -> None:
        """Write a run checkpoint with ``tunespec.files.write_checked``: tensors plus JSON, no pickle."""

    def load_run(self, tensors: dict[str, Any], metadata: dict[str, str], path: str) -> dict[str, Any]:
        """A checked file's tensors and metadata as the backend's run state (nothing applied yet)."""

    def check_run_model(self, run: dict[str, Any], model: Any) -> None:
        """SpecError unless the model has exactly the saved tensors (names, shapes, dtypes)."""

    def check_run_optimizer(self, run: dict[str, Any], optimizer: Any, lr_scheduler: Any) -> None:
        """SpecError unless the optimizer's settings and layout fit the saved state."""

    def load_run_state(self, run: dict[str, Any], model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Put the checked state into model, optimizer and lr scheduler."""

    def optimizer_backup(self, optimizer: Any) -> Any:
        """What a failed resume needs to put the optimizer back as it was."""

    def optimizer_restore(self, optimizer: Any, backup: Any) -> None:
        ...

    def load_file(self, model: Any, path: str, allow_pickle: bool = False) -> None:
        """A whole weights file into ``model``, every name and shape checked before any is set."""

    def save_file(self, model: Any, path: str) -> None:
        """The model's weights in the framework's own format (callers make it atomic)."""

    # --- cached frozen prefix (tunespec.cache) ----------------------------------------------
    def trace_split(self, model: Any, split: str) -> tuple[list[Any], Any]:
        """The forward graph as GraphNodes (the split module's nodes marked) and a traced handle."""

    def cut_at(self, traced: Any, entry: int, prefix: frozenset[int]) -> tuple[Any, Any]:
        """The prefix up to node ``entry`` and the rest (fed that node's value), sharing parameters."""

    def run_frozen(self, prefix: Any, x: Any) -> Any:
        """The prefix's output with no gradient recorded."""


class Sharding(Protocol):
    """Optional capability: sharded data parallelism (torch: FSDP2). The core decides the units
    (``tunespec.sharding``); a backend without these methods makes ``tunespec.shard`` a SpecError."""

    def check_shard(self, model: Any, **options: Any) -> None:
        """SpecError for anything that would make ``shard`` fail (no process group, already
        sharded, an unknown option), before the model changes."""

    def shard(self, model: Any, units: Sequence[str], **options: Any) -> None:
        """Shard the modules at the canonical paths ``units`` (children first, root ``''`` last)."""

    def is_sharded(self, model: Any) -> bool:
        """Whether the model's parameters are sharded (its run checkpoints are directories)."""

    def save_sharded_run(self, path: str, model: Any, optimizer: Any, lr_scheduler: Any, meta: str,
                         best: dict[str, Any] | None) -> None:
        """Write a run checkpoint directory (every rank calls it): shards plus a JSON sidecar."""

    def read_sharded_run(self, path: str, where: str) -> tuple[str, dict[str, Any]]:
        """(the run's JSON meta, the backend's run state) of a checked checkpoint directory."""
