"""Which tensors each rule selects, and what to suggest when a rule selects nothing."""

from __future__ import annotations

import difflib
import re
from typing import Callable, Mapping, Sequence

from .errors import SpecError
from .listing import TensorInfo

Selector = Callable[[TensorInfo], bool]

_BUILTIN: dict[str, Selector] = {
    # Canonical names spell Gluon's beta 'bias', so norm biases count as biases in both frameworks.
    "bias": lambda t: t.canonical.rpartition(".")[2] == "bias" or t.canonical.endswith("_bias"),
    "norm": lambda t: t.is_norm,
    "1d": lambda t: t.ndim is not None and t.ndim <= 1,
}


def selector(match: str, groups: Mapping[str, str], origin: str) -> Selector:
    """A predicate for one rule's ``match``: a regex fullmatched on any alias, or ``@group``."""
    if match.startswith("@"):
        name = match[1:]
        if name in groups:
            return selector(groups[name], {}, f"{origin} (group @{name})")
        if name == "1d":
            return _needs_shape(_BUILTIN[name], origin)
        if name in _BUILTIN:
            return _BUILTIN[name]
        raise SpecError(f"{origin}: unknown group {match!r}; known: "
                        f"{', '.join('@' + g for g in list(groups) + list(_BUILTIN))}")
    pattern = re.compile(match)

    def by_name(t: TensorInfo) -> bool:
        if pattern.fullmatch(t.canonical):
            return True
        return any(pattern.fullmatch(a) for a in t.aliases)

    return by_name


def _needs_shape(pred: Selector, origin: str) -> Selector:
    def checked(t: TensorInfo) -> bool:
        if t.ndim is None:
            raise SpecError(f"{origin}: @1d needs tensor shapes, but {t.canonical!r} has none yet; "
                            f"initialise the model (one forward pass) before planning")
        return pred(t)

    return checked


def match_all(selectors: Sequence[Selector], tensors: Sequence[TensorInfo]) -> list[list[int]]:
    """For each selector, the indices of the tensors it selects (in model order)."""
    return [[i for i, t in enumerate(tensors) if sel(t)] for sel in selectors]


def _literal(regex: str) -> str:
    """The plain text a regex spells, for similarity search ('layer5\\..*' -> 'layer5.')."""
    text = re.sub(r"\\(.)", r"\1", regex)
    return re.sub(r"[\^\$\*\+\?\(\)\[\]\{\}\|]|\.\*|\.\+", "", text)


def suggest(regex: str, tensors: Sequence[TensorInfo]) -> str:
    """A hint for a rule that matched nothing: close canonical names, or why it missed."""
    names = [t.canonical for t in tensors]
    if not names:
        return "the model has no parameters"
    if not regex.startswith("@"):
        pattern = re.compile(regex)
        partial = [n for n in names if pattern.match(n)]
        if partial:
            return (f"it matches the start of {partial[0]!r} but rules must match the whole name; "
                    f"add '.*' at the end")
        native = next((t for t in tensors if pattern.match(t.native)), None)
        if native is not None:
            return (f"it matches the framework's own name {native.native!r}, but rules fullmatch "
                    f"canonical names; that tensor is {native.canonical!r}")
    literal = _literal(regex)
    prefixes: dict[str, None] = {}
    for n in names:
        parts = n.split(".")
        for k in range(1, len(parts) + 1):
            prefixes.setdefault(".".join(parts[:k]), None)
    close = difflib.get_close_matches(literal, list(prefixes), n=3, cutoff=0.4)
    if close:
        return "closest names: " + ", ".join(repr(c) for c in close)
    return "names look like " + ", ".join(repr(n) for n in names[:3])
