"""Which tensors each rule selects, and what to suggest when a rule selects nothing.

Models reach 100,000 tensors (mixture-of-experts) and specs 100 rules; trying every regex on
every name would take seconds. Most rules start with literal text (``layer4\\.``,
``blocks\\.3\\.experts\\.``), so names are kept sorted and a rule only tries the names that
start with its literal prefix; rules without one scan everything.

User patterns run on the ``regex`` engine with a time budget per rule (all names together):
a pattern that backtracks catastrophically (``(a|aa)+b``) is a SpecError naming the rule after
at most :func:`budget_for` seconds (1 s plus 20 us a name), instead of hanging planning.
"""

from __future__ import annotations

import bisect
import difflib
import functools
import re
import re._constants as sre_constants
import re._parser as sre_parse
import time
from typing import Any, Callable, Mapping, Sequence

from tunespec.recipe import validate as V
from tunespec.errors import SpecError
from tunespec.recipe.selectors import TOKEN, parse_token
from tunespec.planning.layer_kinds import layer_mask
from tunespec.listing import Listing

# Seconds one rule may spend matching all names: a normal rule needs milliseconds, a rule on the
# slower timed engine about 5 us a name; the per-name part keeps a 100,000-name model from
# failing a legitimate rule on a loaded machine.
MATCH_BUDGET_S = 1.0
MATCH_BUDGET_PER_NAME_S = 20e-6
PLAN_BUDGET_RULES = 3  # a whole plan's matching: at most this many rules' budgets
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
    except (re.error, RecursionError, OverflowError):
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
        self._until: float | None = None

    @property
    def until(self) -> float:
        """The deadline of all rules together (from the first match on): three rules' budgets,
        so many rules each just under its budget cannot add up to minutes."""
        if self._until is None:
            self._until = time.monotonic() + PLAN_BUDGET_RULES * budget_for(len(self._names))
        return self._until

    def select(self, match: str, groups: Mapping[str, Any], origin: str,
               layer: str | None = None) -> list[int]:
        """Positions (in model order) of the parameters a rule's ``match`` selects (and, with
        ``layer``, that belong to layers of that kind)."""
        hits = self._select(match, groups, origin)
        return self._in_kind(hits, layer, origin) if layer is not None else hits

    def select_rule(self, rule: Any, groups: Mapping[str, Any]) -> list[int]:
        """Positions a spec rule selects: by ``match`` or ``native``, then by ``layer``."""
        if rule.native is None:
            return self.select(rule.match, groups, rule.origin, rule.layer)
        hits = self.select_native(rule.native, rule.origin)
        return self._in_kind(hits, rule.layer, rule.origin) if rule.layer is not None else hits

    def select_native(self, pattern: str, origin: str) -> list[int]:
        """Positions of the parameters whose native name ``re.match``-es ``pattern`` (matched at
        the start only, as Gluon's ``collect_params(pattern)`` selects by prefixed name)."""
        natives = self.listing.natives
        return scan(pattern, [natives[row] for row in self.rows], origin, full=False, until=self.until)

    def _in_kind(self, hits: Sequence[int], layer: str, origin: str) -> list[int]:
        ls = self.listing
        mask = layer_mask(layer, ls.layer_kinds, ls.layer_norms, origin)
        rows, layers = self.rows, ls.layers
        return [i for i in hits if mask[layers[rows[i]]]]

    def _select(self, match: str, groups: Mapping[str, Any], origin: str) -> list[int]:
        kind = parse_token(match)
        if kind is not None:
            return self._in_kind(range(len(self.rows)), kind, origin)
        if match.startswith("@"):
            name = match[1:]
            if name in groups and not isinstance(groups[name], str):
                where = f"{origin} (group @{name})"
                hit: set[int] = set()
                for part in groups[name]:
                    if part.match is None:  # a kind alone: no name to match
                        hit.update(self._in_kind(range(len(self.rows)), part.layer, where))
                    else:
                        hit.update(self.select(part.match, {}, where, part.layer))
                return sorted(hit)
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
        prefix = literal_prefix(match)
        lo = bisect.bisect_left(self._names, prefix) if prefix else 0
        hi = bisect.bisect_left(self._names, prefix + "\U0010ffff") if prefix else len(self._names)
        owners = self._owners
        hit = {owners[lo + k] for k in scan(match, self._names[lo:hi], origin, until=self.until)}
        return sorted(hit)

    def suggest(self, regex: str, layer: str | None = None, native: bool = False) -> str:
        """A hint for a rule that matched nothing: close names, or why it missed."""
        if not self.rows:
            return "the model has no parameters"
        ls = self.listing
        if native:
            return "native names look like " + ", ".join(repr(ls.natives[r]) for r in self.rows[:3])
        if layer is not None or regex.startswith(TOKEN):
            kinds = sorted({ls.layer_kinds[ls.layers[row]] for row in self.rows})
            return f"its parameters' layer kinds are {', '.join(kinds)}"
        names = [ls.names[row] for row in self.rows]
        if not regex.startswith("@"):
            where = "suggesting a fix for a rule"
            hits = scan(regex, names, where, full=False, first=True, until=self.until)
            partial = names[hits[0]] if hits else None
            hits = [] if hits else scan(regex, [ls.natives[r] for r in self.rows], where, full=False,
                                        first=True, until=self.until)
            native = self.rows[hits[0]] if hits else None
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


_CHAR_OPS = frozenset({sre_constants.LITERAL, sre_constants.NOT_LITERAL, sre_constants.ANY,
                       sre_constants.IN, sre_constants.CATEGORY})
_REPEATS = frozenset({sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT,
                      sre_constants.POSSESSIVE_REPEAT})


def _repeats(items: Any) -> int | None:
    """How many variable repeats a parsed pattern has, or None if it is not simple.

    Simple: every repeat repeats single characters (or fixed text), and there are no
    backreferences, atomic groups or conditionals. Such a pattern costs at most
    O(len(name) ** repeats) steps: each repeat, lookarounds' included, adds one choice per
    position, and nothing multiplies them further.
    """
    n = 0
    for op, arg in items:
        if op in _CHAR_OPS or op is sre_constants.AT:
            continue
        if op in _REPEATS:
            low, high, body = arg
            if not all(b_op in _CHAR_OPS for b_op, _ in body):
                return None
            n += low != high
        elif op is sre_constants.SUBPATTERN:
            inner = _repeats(arg[3])
            if inner is None:
                return None
            n += inner
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):  # (?=...), (?<!...): their
            inner = _repeats(arg[1])  # repeats run at each position reached, so they count too
            if inner is None:
                return None
            n += inner
        elif op is sre_constants.BRANCH:
            for alternative in arg[1]:
                inner = _repeats(alternative)
                if inner is None:
                    return None
                n += inner
        else:
            return None
    return n


@functools.lru_cache(maxsize=4096)
def simple(regex: str) -> bool:
    """True when ``re`` can match ``regex`` in at most O(len(name)**2) steps per name.

    Those patterns (nearly all real rules: ``layer4\\..*``, ``.*\\.bias``) match on ``re``,
    the fastest engine, with the budget checked between names; any other pattern matches on
    the ``regex`` engine, whose calls take a timeout, because one call alone may never end.
    """
    if len(regex) > 1000:
        return False
    try:
        parsed = sre_parse.parse(regex)
    except (re.error, RecursionError, OverflowError):
        return False
    count = _repeats(parsed)
    return count is not None and count <= 2


_CHUNK = 256  # names matched between two looks at the clock on the fast path


def scan(regex: str, names: Sequence[str], origin: str, full: bool = True,
         first: bool = False, until: float | None = None) -> list[int]:
    """Indices of the ``names`` that ``regex`` (full)matches, within one rule's time budget.

    ``first`` stops at the first chunk of names with a hit (for suggestions); ``until`` is an
    earlier deadline (a whole plan's) the rule must also meet.
    """
    budget = Budget(origin, regex, len(names))
    if until is not None and until < budget.deadline:
        budget.deadline, budget.seconds = until, max(0.0, until - time.monotonic())
    deadline, clock = budget.deadline, time.monotonic
    found: list[int] = []
    if simple(regex):
        pattern = re.compile(regex)
        test = pattern.fullmatch if full else pattern.match
        for start in range(0, len(names), _CHUNK):
            if clock() > deadline:
                raise budget.error()
            chunk = names[start:start + _CHUNK]
            found += [start + k for k, name in enumerate(chunk) if test(name)]
            if first and found:
                break
        return found
    pattern = _compile(regex, origin)
    test = pattern.fullmatch if full else pattern.match
    for k, name in enumerate(names):
        left = deadline - clock()
        if left <= 0:  # regex reads a timeout <= 0 as none at all
            raise budget.error()
        try:
            hit = test(name, timeout=left)
        except TimeoutError:
            raise budget.error() from None
        if hit:
            found.append(k)
            if first:
                break
    return found


def budget_for(names: int) -> float:
    """Seconds a rule may take to match ``names`` names."""
    return MATCH_BUDGET_S + MATCH_BUDGET_PER_NAME_S * names


class Budget:
    """One rule's time to match all names (a deadline), and the error for running past it."""

    def __init__(self, origin: str, pattern: str, names: int, seconds: float | None = None):
        self.origin, self.pattern, self.names = origin, pattern, names
        self.seconds = budget_for(names) if seconds is None else seconds
        self.deadline = time.monotonic() + self.seconds

    def error(self) -> SpecError:
        return SpecError(
            f"{self.origin}: regex {V.excerpt(self.pattern)} needed more than {self.seconds:.3g} s to "
            f"match {self.names} names (a rule gets {budget_for(self.names):.3g} s, all rules of a plan "
            f"{PLAN_BUDGET_RULES * budget_for(self.names):.3g} s); it backtracks catastrophically "
            f"(nested or overlapping repeats like (a+)+ or (a|aa)+). Simplify it, e.g. 'layer4\\..*' "
            f"or '.*\\.bias'")


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
