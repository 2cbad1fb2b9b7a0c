"""The calls the core makes on a backend. Backends describe and execute; they decide nothing."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from .listing import Listing


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

    def restore(self, handle: Any, saved: Any) -> None:
        ...

    def set_param(self, handle: Any, trainable: bool, lr_mult: float, wd_mult: float) -> None:
        """Set trainability (clearing the gradient of a frozen tensor) and multipliers."""

    def norm_stats_frozen(self, norm: Any) -> bool:
        ...

    def set_norm_stats_frozen(self, norm: Any, frozen: bool) -> None:
        """Freeze or release a norm layer's running statistics without replacing the layer."""

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

    def attach_schedule(self, optimizer: Any, factor: Any) -> Any:
        """Make ``optimizer`` use lr = base lr * factor(t) at optimizer step t (0-based)."""
