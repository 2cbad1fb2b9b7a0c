"""The protocol between the core and the backends: every type and call a backend sees.

A backend describes a framework and executes what the core decided; it decides nothing. It is
three things, all declared here:

- a :class:`FrameworkFacts` record: the few facts about its framework the core must know without
  importing it (its module, pip extra, file suffixes, the name segments its wrappers insert, state
  the other frameworks lack, how it spells norm leaves, its optimizer semantics and zoos);
- the required :class:`Backend` protocol: listing, trainability and multipliers, norm statistics,
  commit, tensor read/write, optimizer handles, building optimizers from the core's groups,
  reading where an optimizer's lrs stand and installing the lr table the core computed
  (``lr_state``, ``install_lrs``), and exporting / importing an optimizer as plain data
  (:class:`OptimizerExport`: what run checkpoints store and rollbacks put back);
- optional capabilities, each its own protocol (checkpoint files, distributed wrappers, graph
  tracing for cached prefixes, a model zoo for the CLI, parameter servers, sharding: its
  :class:`ProcessGroup` hook is all sharded run checkpoints need). :func:`require` turns a
  missing one into one clear error.

Run checkpoints are the core's (``tunespec.lifecycle.run_files``): no backend lays out, digests or
checks them.

Backends import only this module and ``tunespec.errors`` from the core; a third-party backend
joins through ``tunespec.register_backend`` or the ``tunespec.backends`` entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable
import importlib

from tunespec.errors import MissingFrameworkError, SpecError
from tunespec.recipe.files import MAX_DIMS, read_bytes, regular_file
from tunespec.listing import Listing, ListingBuilder, class_names, flat_prefix_length
from tunespec.recipe.validate import excerpt

__all__ = ["Backend", "CheckpointFiles", "class_names", "DistributedWrapping", "excerpt", "first_line",
           "flat_prefix_length", "FrameworkFacts", "GraphNode", "GraphTracing", "Group", "LRGroup", "LRState", "LRTable", "Listing",
           "ListingBuilder", "MAX_DIMS", "ModelZoo", "OptimizerExport", "ParameterServer", "ProcessGroup",
           "read_bytes", "read_safetensors_file", "regular_file", "require", "Sharding"]


@dataclass(frozen=True)
class FrameworkFacts:
    """What the core knows about a framework, declared by its backend in a module that does not
    import the framework (so dispatch can look at ``sys.modules`` before importing anything).

    Example::

        FACTS = tunespec.FrameworkFacts(name="jax", framework="jax", backend="my_backend.backend:BACKEND",
                                        model_type="a flax.nnx.Module")   # see docs/contributing/design.md
        tunespec.register_backend(FACTS)
    """

    name: str  # the backend's name, as users pass it (backend='...')
    framework: str  # the framework's top-level module: a model can only be its type once imported
    backend: str  # 'module:attribute' of the backend object, imported on first use
    extra: str = ""  # pip extra that installs the framework (for the missing-framework message)
    model_type: str = ""  # the model base class, for messages ('package.Class')
    optimizer_type: str = ""  # what its optimizers are, for messages
    file_suffixes: tuple[str, ...] = ()  # weights files it reads (lower case, with the dot)
    reads_other_files: bool = False  # reads weights files whose suffix no backend claims
    wrapper_segments: tuple[str, ...] = ()  # name segments wrappers insert into saved names
    wrapper_prefixes: tuple[str, ...] = ()  # leading segments a wrapper adds to saved names
    ignored_state: str = ""  # regex of state names other frameworks have no counterpart for
    leaf_spellings: Mapping[str, str] = field(default_factory=dict)  # native norm leaf -> canonical
    semantics: tuple[str, ...] = ()  # optimizer update-rule semantics it offers; the first is its default
    former_semantics: Mapping[str, str] = field(default_factory=dict)  # an earlier version's name -> today's
    optimizer_options: Mapping[str, str] = field(default_factory=dict)  # extra option -> value kind
    zoos: tuple[str, ...] = ()  # model zoos its ModelZoo capability builds from
    server_role_variable: str = ""  # environment variable naming a parameter-server process's role
    # Per layer kind (tunespec.recipe.selectors.KINDS; 'default' for the rest), how a weight's
    # dimensions are laid out: ('out', 'in', 'spatial') names fan-out, fan-in and the kernel
    # dims, for init's fan-based methods. Empty: the backend declares none (those methods refuse).
    weight_layouts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerExport:
    """An optimizer (with its lr scheduler) as plain data: what ``export_optimizer`` gives and
    ``import_optimizer`` takes. The core writes it into run checkpoints, compares it on resume and
    keeps one (``host=False``: by reference) to roll a failed call back.

    Arrays are numpy arrays (``host=True``) or, in a ``host=False`` export, whatever the same
    backend's ``import_optimizer`` takes back. Trees are JSON scalars, arrays, tuples, lists and
    dicts with string or integer keys.
    """

    kind: str  # the optimizer's rule as the backend names it ('AdamW'); another kind is refused on resume
    settings: Mapping[str, Any]  # optimizer-level hyper-parameters, compared on resume
    hyper: Mapping[str, Mapping[str, Any]]  # canonical name -> its hyper-parameters, in the optimizer's order
    state: Mapping[str, Any]  # canonical name -> its state tree; "" -> optimizer-level state (counters, lr scheduler)
    volatile: frozenset[str] = frozenset()  # hyper/settings keys not compared (they follow the lr schedule)


@dataclass(frozen=True)
class ProcessGroup:
    """Where a sharded model's shards live: this process's rank among ``world`` and a collective
    ``all_ok(ok)``: True when every rank passed True (every rank calls it; it is also a barrier)."""

    rank: int
    world: int
    all_ok: Callable[[bool], bool]


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


@dataclass(frozen=True)
class LRGroup:
    """One group of the lr table the core computed (``install_lrs``), or as installed (``lr_state``).

    ``lr`` / ``initial_lr`` (the lr the schedule scales: lr(t) = initial_lr x factor(t)) and
    ``weight_decay`` are installed where not None; ``factor`` is the group's own factor at step t
    (a per-step ramp x the schedule; None: the table's); ``mult_at`` the parameters' lr multiplier
    at step t where multipliers live on parameters (Gluon). ``lr_mult``, ``wd_mult``,
    ``lr_factor`` and ``ramp`` (the stage whose ramp it follows) identify the group: a backend
    that keeps groups stores them on the group and gives them back in ``lr_state``.
    """

    params: tuple[Any, ...]
    names: tuple[str, ...] = ()
    lr_mult: float = 1.0
    wd_mult: float = 1.0
    lr_factor: float = 1.0
    ramp: int | None = None
    lr: float | None = None
    initial_lr: float | None = None
    weight_decay: float | None = None
    factor: Callable[[int], float] | None = None
    mult_at: Callable[[int], float] | None = None


@dataclass(frozen=True)
class LRTable:
    """What ``install_lrs`` installs: every trainable parameter's group (installed groups first,
    in their order, then new ones), or no groups to install only the schedule ``factor`` (None:
    no lr scheduler wanted); ``added`` / ``removed``: parameters that join / leave the optimizer."""

    groups: tuple[LRGroup, ...] = ()
    factor: Callable[[int], float] | None = None
    added: tuple[Any, ...] = ()
    removed: tuple[Any, ...] = ()


@dataclass(frozen=True)
class LRState:
    """Where an optimizer stands (``lr_state``): its base lr and weight decay, the optimizer steps
    its lr scheduler has counted (the next step's t), the optimizer steps taken where the backend
    counts them (None: it does not), and its groups as installed (() where it keeps none)."""

    lr: float | None
    weight_decay: float | None
    step: int = 0
    optimizer_steps: int | None = None
    groups: tuple[LRGroup, ...] = ()


@runtime_checkable
class Backend(Protocol):
    """What every backend implements: enough to plan, apply, restore and optimise a model."""

    name: str
    facts: FrameworkFacts

    def owns(self, model: Any) -> bool:
        """Whether ``model`` is this framework's model type."""

    def owns_optimizer(self, optimizer: Any) -> bool:
        """Whether ``optimizer`` is this framework's optimizer."""

    def listing(self, model: Any) -> Listing:
        """Every parameter and state tensor, norm layers with running statistics, the model type."""

    def snapshot(self, handle: Any) -> Any:
        """The tensor's trainability and multipliers, opaque, for ``restore``."""

    def restore(self, handle: Any, saved: Any, rollback: bool = False) -> None:
        """Put back a ``snapshot``; ``rollback`` (undoing a call that just failed) also gives back
        what setting it dropped, such as a gradient."""

    def set_param(self, handle: Any, trainable: bool, lr_mult: float, wd_mult: float) -> None:
        """Set trainability (clearing the gradient of a frozen tensor) and multipliers."""

    def norm_stats_frozen(self, norm: Any) -> bool:
        """Whether the norm layer's running statistics are frozen (used, never updated)."""

    def set_norm_stats_frozen(self, norm: Any, frozen: bool, model: Any = None) -> None:
        """Freeze or release a norm layer's running statistics without replacing the layer; a
        released layer takes the train/eval mode ``model`` is in now, where layers have modes."""

    def commit(self, model: Any) -> None:
        """Make changed settings visible to compiled / hybridized graphs."""

    def tensor_bytes(self, handle: Any) -> bytes | None:
        """The tensor's raw bytes, for checksums (None while its values do not exist yet)."""

    def read(self, handle: Any) -> Any:
        """The tensor's values as a numpy array (a copy)."""

    def write(self, handle: Any, array: Any) -> None:
        """Overwrite the tensor's values (cast to its dtype); the array has the tensor's shape."""

    def optimizer_handles(self, optimizer: Any) -> list[Any]:
        """The parameter handles an optimizer updates."""

    def build_optimizer(self, groups: Sequence[Group], name: Any, lr: float | None,
                        weight_decay: float, semantics: str | None = None, **options: Any) -> Any:
        """The framework's optimizer over ``groups``, with the lrs and decays the core computed."""

    def optimizer_options(self, name: Any, semantics: str | None = None) -> frozenset[str] | None:
        """The option names ``build_optimizer`` accepts for optimizer ``name`` (None: any), so
        that a misspelt option is refused before the model is touched; raises for an unknown name."""

    def lr_state(self, optimizer: Any, lr_scheduler: Any = None) -> LRState:
        """Where ``optimizer`` (and its lr scheduler) stand: read only, see :class:`LRState`."""

    def install_lrs(self, optimizer: Any, table: LRTable, lr_scheduler: Any = None) -> Any:
        """Install the lr table the core computed, never recomputing a number; returns the lr
        scheduler in use (None: none). ``table.groups`` empty: the groups stay, only the schedule
        is installed. Otherwise ``groups[i]`` replaces installed group i's parameter list (state
        follows its parameter), later groups are appended (without groups: ``added`` parameters
        are appended under new indices), ``removed`` parameters' state is dropped, and each
        group's ``lr``, ``initial_lr``, ``weight_decay`` are set where not None. Without
        ``lr_scheduler`` and with ``table.factor``, the framework's scheduler is created: lr =
        initial lr x factor(t) at step t (0-based), one factor per group (``group.factor`` or
        ``table.factor``); a given one is updated (new groups: their factor, else the table's,
        else its first group's)."""

    def export_optimizer(self, optimizer: Any, lr_scheduler: Any, names: Mapping[Any, str],
                         host: bool = True) -> OptimizerExport:
        """The optimizer and lr scheduler as an :class:`OptimizerExport`, keyed by the canonical
        names ``names`` gives each handle. ``host``: arrays as numpy (this rank's part of sharded
        state), for files; otherwise the framework's own objects by reference, for rollback."""

    def import_optimizer(self, optimizer: Any, lr_scheduler: Any, exported: OptimizerExport,
                         handles: Mapping[str, Any]) -> None:
        """Make the optimizer (and lr scheduler, where given) hold exactly the parameters of
        ``exported.hyper`` (``handles``: canonical name -> handle), in that order, with those
        hyper-parameters, settings and state. Never writes into arrays it did not create, so an
        earlier ``host=False`` export stays a valid rollback."""

    def optimizer_snapshot(self, optimizer: Any, lr_scheduler: Any) -> Any:
        """Opaque copy of what ``install_lrs`` changes (groups, state, lr scheduler)."""

    def optimizer_rollback(self, optimizer: Any, lr_scheduler: Any, saved: Any) -> None:
        """Put back an ``optimizer_snapshot``: groups, per-parameter state, lr scheduler lists."""


# --- optional capabilities -------------------------------------------------------------------

@runtime_checkable
class CheckpointFiles(Protocol):
    """Reading and writing the framework's weights files (``load``, ``port``, the CLI)."""

    def read_checkpoint(self, path: str, allow_pickle: bool) -> Any:
        """A checkpoint file's named tensors; nothing that runs code unless ``allow_pickle``."""

    def read_safetensors(self, path: str) -> dict[str, Any]:
        """A safetensors file's tensors."""

    def is_tensor(self, value: Any) -> bool:
        """Whether a checkpoint value is a tensor of this framework (or numpy)."""

    def to_numpy(self, value: Any) -> Any:
        """A checkpoint value as numpy (other values unchanged)."""

    def load_file(self, model: Any, path: str, allow_pickle: bool = False) -> None:
        """A whole weights file into ``model``, every name and shape checked before any is set."""

    def save_file(self, model: Any, path: str) -> None:
        """The model's weights in the framework's own format (callers make it atomic)."""


@runtime_checkable


@runtime_checkable
class DistributedWrapping(Protocol):
    """Frameworks whose data-parallel wrapper fixes at construction which parameters it reduces."""

    def is_distributed_wrapper(self, model: Any) -> bool:
        """Whether ``model`` is such a wrapper."""

    def rewrap(self, model: Any) -> Any:
        """A wrapper rebuilt so that it reduces the newly trainable parameters."""


@runtime_checkable
class GraphTracing(Protocol):
    """Tracing a forward pass into core graph nodes and cutting it (``cache_frozen``)."""

    def trace_split(self, model: Any, split: str) -> tuple[list[GraphNode], Any]:
        """The forward graph as GraphNodes (the split module's nodes marked) and a traced handle."""

    def cut_at(self, traced: Any, entry: int, prefix: frozenset[int]) -> tuple[Any, Any]:
        """The prefix up to node ``entry`` and the rest (fed that node's value), sharing parameters."""

    def run_frozen(self, prefix: Any, x: Any) -> Any:
        """The prefix's output with no gradient recorded."""


@runtime_checkable
class ModelZoo(Protocol):
    """Building zoo models offline, for the CLI (``facts.zoos`` names the zoos)."""

    def build_model(self, zoo: str, name: str, input_size: int | None = None) -> Any:
        """Model ``name`` of ``zoo`` with no pretrained weights, shapes known where that needs a forward."""


@runtime_checkable
class ParameterServer(Protocol):
    """Running a parameter-server process (``python -m tunespec.lifecycle.distributed``)."""

    def serve_parameters(self) -> None:
        """Run this process's server or scheduler loop until the workers finish."""


@runtime_checkable
class Sharding(Protocol):
    """Optional capability: sharded data parallelism (torch: FSDP2). The core decides the units
    (``tunespec.lifecycle.sharding``); a backend without these methods makes ``tunespec.shard`` a SpecError."""

    def check_shard(self, model: Any, **options: Any) -> None:
        """SpecError for anything that would make ``shard`` fail (no process group, already
        sharded, an unknown option), before the model changes."""

    def shard(self, model: Any, units: Sequence[str], **options: Any) -> None:
        """Shard the modules at the canonical paths ``units`` (children first, root ``''`` last)."""

    def process_group(self, model: Any) -> ProcessGroup | None:
        """None for a model that is not sharded; otherwise where its shards live (the one hook
        sharded run checkpoints need: the core writes and reads them)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for errors
    that quote what a framework's reader said about a damaged file."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_safetensors_file(path: str, loader: str, refusal: str, **options: Any) -> dict[str, Any]:
    """A safetensors file read by ``loader`` (the safetensors module for the backend's arrays,
    e.g. ``'safetensors.numpy'``): a regular file only, and any reader error a SpecError that
    says ``refusal`` (what the file is not) and quotes the reader."""
    try:
        load_file = importlib.import_module(loader).load_file
    except ImportError:
        raise MissingFrameworkError("reading .safetensors needs the safetensors package; "
                                    "pip install 'tunespec[safetensors]'") from None
    regular_file(path, "load", None)
    try:
        return load_file(path, **options)
    except Exception as exc:  # SafetensorError, and OSError/ValueError/TypeError from a damaged header
        raise SpecError(f"{path}: {refusal} ({type(exc).__name__}: {excerpt(first_line(exc), 200)})") from None


def require(backend: Any, capability: type, what: str) -> Any:
    """``backend`` if it has ``capability``; otherwise the one error that says which is missing."""
    if isinstance(backend, capability):
        return backend
    missing = sorted(k for k in capability.__dict__ if not k.startswith("_") and callable(
        capability.__dict__[k]) and not hasattr(backend, k))
    raise SpecError(f"{what}: the {getattr(backend, 'name', type(backend).__name__)!r} backend lacks the "
                    f"{capability.__name__} capability ({', '.join(missing)}); use a backend that has it")
