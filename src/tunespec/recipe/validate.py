"""The one validation layer every recipe section goes through.

A recipe may come from anywhere (a colleague's repo, a web form, a fuzzer), so every value is
checked once, when the recipe is read, by the small checkers here. They share one wording:
``<path>: expected <what>, got <excerpt>``, where the excerpt never renders more than about 80
characters of the bad value (a 10 MB string, a 400-digit integer or a deeply nested list in an
error message must not cost memory or raise while the message is being built).

Choices this module makes for every section:

* ``bool`` is never a number (YAML ``yes`` is not 1), and counts are ``int`` only: ``3.0`` is
  refused where a count goes, because a float count usually means a computed value that was
  meant to be something else.
* Counts (steps, epochs, milestones, patience) are at most :data:`MAX_COUNT` (10**12); a
  multiplier or factor is finite and at most :data:`MAX_FACTOR`, so the products tunespec forms
  (lr x lr_mult x lr_factor) stay finite.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import reprlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import regex as regex_engine

from tunespec.errors import SpecError

EXCERPT_CHARS = 80
MAX_COUNT = 10**12
MAX_FACTOR = 1e6
MAX_REGEX_CHARS = 4096  # a longer pattern is generated, not written; compile time grows with it
MAX_DEPTH = 32          # nesting of mappings/lists in a recipe
MAX_NODES = 100_000     # values in a whole recipe (a real one has a few hundred)
MAX_STRING_CHARS = 65_536


class _Excerpt(reprlib.Repr):
    """reprlib with ints that never go through ``int.__repr__`` (huge ones raise in 3.11+)."""

    def repr_int(self, x: int, level: int) -> str:
        if abs(x) < 10**30:
            return repr(x)
        digits = int(x.bit_length() * math.log10(2)) + 1
        return f"<{'-' if x < 0 else ''}integer of about {digits} digits>"

    def repr_bool(self, x: bool, level: int) -> str:
        return repr(x)

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            text = repr(x)
        except Exception:  # a hostile __repr__ must not break an error message
            return f"<{type(x).__name__}>"
        return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 3] + "..."


_EXCERPT = _Excerpt()
_EXCERPT.maxlevel = 3
_EXCERPT.maxstring = 60
_EXCERPT.maxother = 60
_EXCERPT.maxdict = _EXCERPT.maxlist = _EXCERPT.maxtuple = _EXCERPT.maxset = 6


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A repr of ``value`` of at most ``limit`` characters, whatever its size or depth."""
    try:
        text = _EXCERPT.repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def suggestion(word: Any, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or ''."""
    if not isinstance(word, str) or len(word) > 200:
        return ""
    hits = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {hits[0]!r}?)" if hits else ""


def fail(path: str, expected: str, value: Any) -> SpecError:
    """The error every checker raises: path, what was expected, an excerpt of what was given."""
    return SpecError(f"{path}: expected {expected}, got {excerpt(value)}")


# --- scalars ----------------------------------------------------------------------------------
def _bounds_text(minimum: float | None, maximum: float | None, min_exclusive: bool,
                 max_exclusive: bool) -> str:
    if maximum in (MAX_FACTOR, MAX_COUNT) and minimum is not None:  # a sanity cap, not a range
        return f"{_bounds_text(minimum, None, min_exclusive, False)} (at most {_num(maximum)})"
    if minimum is not None and maximum is not None:
        return (f" in {'(' if min_exclusive else '['}{_num(minimum)}, "
                f"{_num(maximum)}{')' if max_exclusive else ']'}")
    if minimum is not None:
        return f" {'>' if min_exclusive else '>='} {_num(minimum)}"
    if maximum is not None:
        return f" {'<' if max_exclusive else '<='} {_num(maximum)}"
    return ""


def _num(x: float) -> str:
    if isinstance(x, int) and x >= 10**6 and x == 10 ** (len(str(x)) - 1):
        return f"10**{len(str(x)) - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def number(value: Any, path: str, *, minimum: float | None = None, maximum: float | None = None,
           min_exclusive: bool = False, max_exclusive: bool = False,
           integer: bool = False) -> Any:
    """A finite number (an ``int`` when ``integer``) within the bounds; returns float or int."""
    if integer:
        what = ("a positive integer" if minimum == 1 and not min_exclusive or minimum == 0 and min_exclusive
                else "an integer")
        if what == "a positive integer":
            bounds = "" if maximum is None else f" (at most {_num(maximum)})"
        else:
            bounds = _bounds_text(minimum, maximum, min_exclusive, max_exclusive)
    else:
        what = "a finite number"
        bounds = _bounds_text(minimum, maximum, min_exclusive, max_exclusive)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(path, what + bounds, value)
    if integer and not isinstance(value, int):
        raise fail(path, what + bounds, value)
    given = value
    if not integer:
        try:
            value = float(value)
        except OverflowError:
            raise fail(path, what + bounds, given) from None
        if not math.isfinite(value):
            raise fail(path, what + bounds, given)
    if minimum is not None and (value <= minimum if min_exclusive else value < minimum):
        raise fail(path, what + bounds, given)
    if maximum is not None and (value >= maximum if max_exclusive else value > maximum):
        raise fail(path, what + bounds, given)
    return value


def count(value: Any, path: str, *, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """An integer count (steps, epochs, patience) in [minimum, maximum]."""
    return number(value, path, minimum=minimum, maximum=maximum, integer=True)


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise fail(path, "true or false", value)
    return value


def string(value: Any, path: str, *, nonempty: bool = True, max_length: int = MAX_STRING_CHARS) -> str:
    if not isinstance(value, str) or (nonempty and not value) or len(value) > max_length:
        raise fail(path, f"a {'non-empty ' if nonempty else ''}string of at most {max_length} "
                         f"characters", value)
    return value


def choice(value: Any, path: str, options: Sequence[str], hint: str = "") -> str:
    """One of a closed set of names, with a did-you-mean for a near miss."""
    if not isinstance(value, str) or value not in options:
        raise SpecError(f"{path}: {excerpt(value)} is not one of {', '.join(options)}"
                        f"{suggestion(value, options)}{'; ' + hint if hint else ''}")
    return value


def mapping(value: Any, path: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(path, f"a mapping like {example}", value)
    return value


def sequence(value: Any, path: str, *, what: str = "a list", max_length: int = MAX_NODES,
             nonempty: bool = False) -> list[Any]:
    if not isinstance(value, (list, tuple)) or len(value) > max_length or (nonempty and not value):
        raise fail(path, f"{'a non-empty ' + what[2:] if nonempty else what}", value)
    return list(value)


def keys(data: Mapping[Any, Any], path: str, allowed: Sequence[str], what: str = "key") -> None:
    """Refuse a key a section does not have, suggesting the closest one it does."""
    for key in data:
        if key not in allowed:
            where = f"{path}: " if path else ""
            raise SpecError(f"{where}unknown {what} {excerpt(key)}{suggestion(key, allowed)}; "
                            f"{what}s are {', '.join(allowed)}")


# --- regexes ----------------------------------------------------------------------------------
def engine() -> Any:
    """The ``regex`` module (imported under another name: :func:`regex` is this module's check)."""
    return regex_engine


@functools.lru_cache(maxsize=4096)
def compiled(pattern: str) -> Any:
    """The compiled pattern tunespec matches with (the ``regex`` engine, which can time out)."""
    return engine().compile(pattern)


def regex(value: Any, path: str) -> str:
    """A non-empty regex string that compiles (Python syntax; lookarounds allowed)."""
    if not isinstance(value, str) or not value or len(value) > MAX_REGEX_CHARS:
        raise fail(path, f"a non-empty regex string of at most {MAX_REGEX_CHARS} characters", value)
    try:
        compiled(value)
    except (engine().error, OverflowError, RecursionError, ValueError) as exc:
        raise SpecError(f"{path}: invalid regex {excerpt(value)}: {excerpt(str(exc))[1:-1]}. Escape "
                        f"literal dots and brackets, e.g. 'fc\\..*'") from None
    return value


def group_reference(value: Any, path: str) -> str:
    """A ``@group`` reference (resolved at plan time, when model cards' groups are known too)."""
    if not isinstance(value, str) or len(value) > 200 or not re.fullmatch(r"@[A-Za-z0-9_][\w+-]*", value):
        raise SpecError(f"{path}: {excerpt(value)} is not a group reference like '@heads' or '@bias'")
    return value


# --- whole documents --------------------------------------------------------------------------
def tree(data: Any, path: str = "recipe", *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse a document nested deeper than ``max_depth`` or with more than ``max_nodes`` values.

    Checked before any section is read, so no checker can be made slow (or recurse without end,
    for a mapping built in memory that contains itself) by the document's shape.
    """
    nodes = 0
    stack: list[tuple[Any, int, str]] = [(data, 0, path)]
    while stack:
        value, depth, where = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise SpecError(f"{path}: more than {max_nodes} values; a recipe has a few hundred. "
                            f"Split it, or use regexes instead of long lists")
        if isinstance(value, Mapping):
            children = [(v, f"{where}.{excerpt(k) if not isinstance(k, str) else k[:40]}")
                        for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            children = [(v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            continue
        if depth >= max_depth:
            raise SpecError(f"{where}: nested more than {max_depth} levels deep; a recipe needs a "
                            f"handful")
        stack.extend((v, depth + 1, w) for v, w in children)


# --- optimizers -------------------------------------------------------------------------------
Checker = Callable[[Any, str], Any]


def _unit(value: Any, path: str) -> float:
    return number(value, path, minimum=0.0, maximum=1.0)


def _beta(value: Any, path: str) -> float:
    return number(value, path, minimum=0.0, maximum=1.0, max_exclusive=True)


def _betas(value: Any, path: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise fail(path, "a pair [beta1, beta2] of numbers in [0, 1)", value)
    return [_beta(value[0], f"{path}[0]"), _beta(value[1], f"{path}[1]")]


def _positive(value: Any, path: str) -> float:
    return number(value, path, minimum=0.0, min_exclusive=True, maximum=MAX_FACTOR)


def _nonneg(value: Any, path: str) -> float:
    return number(value, path, minimum=0.0, maximum=MAX_FACTOR)


def _optional_positive(value: Any, path: str) -> float | None:
    return None if value is None else _positive(value, path)


def _optional_boolean(value: Any, path: str) -> bool | None:
    """true, false or null (null: let the framework decide)."""
    return None if value is None else boolean(value, path)


def _name_or_object(value: Any, path: str) -> Any:
    """A name ('device', 'dist_sync', ...) or, given in code, an object the framework built (the
    core cannot name its type, so anything that is not plain data passes)."""
    if isinstance(value, (bool, int, float, list, tuple, dict)) or value is None:
        raise fail(path, "a name like 'device' or 'dist_sync', or an object the framework built", value)
    return string(value, path, max_length=64) if isinstance(value, str) else value


def _compression(value: Any, path: str) -> Mapping[str, Any]:
    data = mapping(value, path, "{type: 2bit, threshold: 0.5}")
    keys(data, path, ("type", "threshold"))
    if "type" in data:
        choice(data["type"], f"{path}.type", ("2bit", "1bit"))
    if "threshold" in data:
        _positive(data["threshold"], f"{path}.threshold")
    return data


# Options of the update rules themselves, besides name, lr, weight_decay and semantics; options a
# framework adds (its facts' optimizer_options) join them with the checker their value kind names.
_COMMON: dict[str, Checker] = {
    "maximize": boolean, "foreach": _optional_boolean, "differentiable": boolean, "fused": _optional_boolean,
}
VALUE_KINDS: dict[str, Checker] = {
    "boolean": boolean, "optional_boolean": _optional_boolean, "positive": _positive,
    "optional_positive": _optional_positive, "unit": _unit, "name_or_object": _name_or_object,
    "compression": _compression,
}
_ADAM: dict[str, Checker] = {
    "betas": _betas, "eps": _positive, "amsgrad": boolean, "capturable": boolean,
    "decoupled_weight_decay": boolean,
    "beta1": _beta, "beta2": _beta, "epsilon": _positive,  # Gluon's names for betas and eps
}
_RULES: dict[str, dict[str, Checker]] = {
    "sgd": {"momentum": _unit, "dampening": _unit, "nesterov": boolean, **_COMMON},
    "adam": {**_ADAM, **_COMMON},
    "adamw": {**_ADAM, **_COMMON},
}


def optimizer_tables(extra: Mapping[str, str] | None = None) -> dict[str, dict[str, Checker]]:
    """Per known optimizer, its options and their checkers; ``extra`` adds options a framework
    takes (name -> value kind, from its facts' ``optimizer_options``)."""
    extras = {k: VALUE_KINDS[v] for k, v in (extra or {}).items() if v in VALUE_KINDS}
    return {name: {**table, **extras} for name, table in _RULES.items()}


def check_optimizer(name: Any, options: Mapping[str, Any], path: str = "optimizer",
                    extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check the options of a known optimizer against its table; return them checked.

    ``extra`` None (reading a recipe, before any backend is chosen): only the options the update
    rule itself has are checked, the others wait for the backend. With ``extra`` (the options the
    frameworks add, when an optimizer is made) an option in neither is refused. A name not in
    :func:`optimizer_tables` passes here (the backend knows its framework's other optimizers and
    checks them when it builds one).
    """
    checked = dict(options)
    table = optimizer_tables(extra).get(name.lower()) if isinstance(name, str) else None
    if table is None:
        for key in checked:
            if not isinstance(key, str):
                raise fail(path, "option names that are strings", key)
        return checked
    for key, value in checked.items():
        if key not in table and extra is None and isinstance(key, str):
            continue  # maybe a framework's own option: checked when the optimizer is made
        if key not in table:
            raise SpecError(f"{path}.{excerpt(key) if not isinstance(key, str) else key[:60]}: unknown "
                            f"option of {name.lower()}{suggestion(key, table)}; its options are "
                            f"{', '.join(table)}")
        checked[key] = table[key](value, f"{path}.{key}")
    if checked.get("nesterov") and not (checked.get("momentum", 0) > 0 and checked.get("dampening", 0) == 0):
        raise SpecError(f"{path}.nesterov: needs momentum > 0 and dampening 0")
    return checked
