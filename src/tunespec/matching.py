"""Which tensors each rule selects, and what to suggest when a rule selects nothing.

Models reach 100,000 tensors (mixture-of-experts) and specs 100 rules; trying every regex on
every name would take seconds. Most rules start with literal text (``layer4\\.``,
``blocks\\.3\\.experts\\.``), so names are kept sorted and a rule only tries the names that
start with its literal prefix; rules without one scan everything.

User patterns run on the ``regex`` engine with a time budget per rule (all names together):
a pattern that backtracks catastrophically (``(a|aa)+b``) is a SpecError naming the rule after
at most :data:`MATCH_BUDGET_S` seconds, instead of hanging planning.
"""

from __future__ import annotations

import bisect
import difflib
import functools
import re
import re._constants as sre_constants
import re._parser as sre_parse
import time
from typing import Any, Callable, Mapping

from . import validate as V
from .errors import SpecError
from .listing import Listing

MATCH_BUDGET_S = 2.0  # seconds one rule may spend matching all names (a normal rule needs ms)
Selector = Callable[[Listing, int], bool]  # (listing, row) -> selected

_BUILTIN: dict[str, Selector] = {
    # Canonical names spell Gluon's beta 'bias', so norm biases count as biases in both frameworks.
    "bias": lambda ls, row: ls.names[row].rpartition(".")[2] == "bias" or ls.names[row].endswith("_bias"),
    "norm": lambda ls, row: ls.is_norm(row),
    "1d": lambda ls, row: ls.shapes[row] is not None and len(ls.shapes[row]) <= 1,
}


@functools.lru_cache(maxsize=4096)
def literal_prefix(regex: str) -> str:
    """The text every fullmatch of ``regex`` starts with ('' when it can start anyhow)."""
    try:
        parsed = sre_parse.parse(regex)
    except re.error:
        return ""
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
        return ""
    out = []
    for op, arg in parsed:
        if op is not sre_constants.LITERAL:
            break
        out.append(chr(arg))
    return "".join(out)


class Matcher:
    """A listing's parameters, indexed by canonical name and alias, for fast rule matching.

    Results are positions in ``listing.param_rows`` (the order of a plan's decisions).
    """

    def __init__(self, listing: Listing):
        self.listing = listing
        self.rows = listing.param_rows
        names = list(map(listing.names.__getitem__, self.rows))
        owners = list(range(len(names)))
        if listing.aliases:
            position = {row: i for i, row in enumerate(self.rows)}
            for row, aliases in listing.aliases.items():
                if row in position:
                    names += aliases
                    owners += [position[row]] * len(aliases)
        order = sorted(range(len(names)), key=names.__getitem__)
        self._names = [names[k] for k in order]
        self._owners = [owners[k] for k in order]
        self._prefixes: dict[int, list[str]] = {}

    def select(self, match: str, groups: Mapping[str, str], origin: str) -> list[int]:
        """Positions (in model order) of the parameters a rule's ``match`` selects."""
        if match.startswith("@"):
            name = match[1:]
            if name in groups:
                return self.select(groups[name], {}, f"{origin} (group @{name})")
            if name not in _BUILTIN:
                raise SpecError(f"{origin}: unknown group {match!r}; known: "
                                f"{', '.join('@' + g for g in list(groups) + list(_BUILTIN))}")
            ls = self.listing
            if name == "1d":
                missing = next((row for row in self.rows if ls.shapes[row] is None), None)
                if missing is not None:
                    raise SpecError(f"{origin}: @1d needs tensor shapes, but {ls.names[missing]!r} has "
                                    f"none yet; initialise the model (one forward pass) before planning")
            pred = _BUILTIN[name]
            return [i for i, row in enumerate(self.rows) if pred(ls, row)]
        pattern = _compile(match, origin)
        prefix = literal_prefix(match)
        lo = bisect.bisect_left(self._names, prefix) if prefix else 0
        hi = bisect.bisect_left(self._names, prefix + "\U0010ffff") if prefix else len(self._names)
        budget = Budget(origin, match, hi - lo)
        fullmatch, left = pattern.fullmatch, budget.left
        hit = set()
        try:
            for k in range(lo, hi):
                if fullmatch(self._names[k], timeout=left()):
                    hit.add(self._owners[k])
        except TimeoutError:
            raise budget.error() from None
        return sorted(hit)

    def suggest(self, regex: str) -> str:
        """A hint for a rule that matched nothing: close names, or why it missed."""
        if not self.rows:
            return "the model has no parameters"
        ls = self.listing
        names = [ls.names[row] for row in self.rows]
        if not regex.startswith("@"):
            pattern = _compile(regex, "a rule")
            budget = Budget("suggesting a fix for a rule", regex, 2 * len(names))
            try:
                partial = next((n for n in names if pattern.match(n, timeout=budget.left())), None)
                native = None if partial is not None else next(
                    (row for row in self.rows if pattern.match(ls.natives[row], timeout=budget.left())),
                    None)
            except TimeoutError:
                raise budget.error() from None
            if partial is not None:
                return (f"it matches the start of {partial!r} but rules must match the whole name; "
                        f"add '.*' at the end")
            if native is not None:
                return (f"it matches the framework's own name {ls.natives[native]!r}, but rules "
                        f"fullmatch canonical names; that tensor is {ls.names[native]!r}")
        literal = _literal(regex).strip(".")
        depth = max(1, literal.count(".") + 1)
        close = difflib.get_close_matches(literal, self._neighbours(literal, depth), n=3, cutoff=0.4)
        if close:
            return "closest names: " + ", ".join(repr(c) for c in close)
        return "names look like " + ", ".join(repr(n) for n in names[:3])

    def _neighbours(self, literal: str, depth: int, around: int = 40) -> list[str]:
        """Name prefixes of up to ``depth`` dotted parts that sort near ``literal``.

        Close names sort close ('layer5' sits by 'layer4...'); comparing only those keeps a
        suggestion cheap on a model with 100,000 tensors.
        """
        if depth not in self._prefixes:
            seen: set[str] = set()
            for name in self.listing.param_names():
                parts = name.split(".")
                for k in range(1, min(depth, len(parts)) + 1):
                    seen.add(".".join(parts[:k]))
            self._prefixes[depth] = sorted(seen)
        prefixes = self._prefixes[depth]
        at = bisect.bisect_left(prefixes, literal)
        return prefixes[max(0, at - around): at + around]


class Budget:
    """The time one rule has left to match names; ``left()`` is the timeout for the next call."""

    def __init__(self, origin: str, pattern: str, names: int, seconds: float | None = None):
        self.origin, self.pattern, self.names = origin, pattern, names
        self.seconds = MATCH_BUDGET_S if seconds is None else seconds
        self.deadline = time.monotonic() + self.seconds

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def error(self) -> SpecError:
        return SpecError(
            f"{self.origin}: regex {V.excerpt(self.pattern)} needed more than {self.seconds:g} s to "
            f"match {self.names} names; it backtracks catastrophically (nested or overlapping "
            f"repeats like (a+)+ or (a|aa)+). Simplify it, e.g. 'layer4\\..*' or '.*\\.bias'")


def _compile(pattern: str, origin: str) -> Any:
    """The ``regex`` engine's compiled pattern (it can time out); syntax was checked when read."""
    try:
        return V.compiled(pattern)
    except Exception as exc:  # a card's or group's pattern that only ``re`` accepts
        raise SpecError(f"{origin}: invalid regex {V.excerpt(pattern)}: {V.excerpt(str(exc))}") from None


def _literal(regex: str) -> str:
    """The plain text a regex spells, for similarity search ('layer5\\..*' -> 'layer5.')."""
    text = re.sub(r"\\(.)", r"\1", regex)
    return re.sub(r"[\^\$\*\+\?\(\)\[\]\{\}\|]|\.\*|\.\+", "", text)
