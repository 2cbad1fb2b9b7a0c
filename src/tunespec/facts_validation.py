"""Checking a backend's :class:`~tunespec.backend_api.FrameworkFacts` before it joins the registry.

The core derives cross-framework facts from every registered backend at once (one ignored-state
test, one leaf-spelling table, one suffix table, the shared default optimizer semantics, the
optimizer options the recipe checker accepts), so one broken or greedy record would change what
every other backend does. :func:`check_facts` refuses, naming the field:

- a field of the wrong type (every field, down to the items of tuples and mappings);
- a name that is not a short word, a framework that is not a module name, a backend that is not
  ``'module:attribute'``;
- an ``ignored_state`` that is not a valid regex on its own;
- anything that takes over what another backend declared: a file suffix, zoo or optimizer option
  another backend has (with another value kind), a leaf spelling that renames another's leaf, an
  optimizer option that would re-check an update-rule option, semantics that leave no semantics
  shared with the other backends, or that change the default semantics they share.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from tunespec.backend_api import FrameworkFacts
from tunespec.errors import SpecError
from tunespec.recipe.selectors import KINDS
from tunespec.recipe.validate import _RULES, VALUE_KINDS, excerpt

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MODULE = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_BACKEND = re.compile(rf"{_MODULE}:[A-Za-z_]\w*")
_STRINGS = ("extra", "model_type", "optimizer_type", "server_role_variable")
_STRING_TUPLES = ("file_suffixes", "wrapper_segments", "wrapper_prefixes", "semantics", "zoos")
_LAYOUT_DIMS = ("out", "in", "spatial")


def check_facts(facts: Any, others: Iterable[FrameworkFacts], where: str = "register_backend") -> None:
    """Raise a SpecError naming the first field of ``facts`` that is malformed or would change
    what one of ``others`` (the backends registered now) does."""
    if not isinstance(facts, FrameworkFacts):
        raise SpecError(f"{where}: expected tunespec.FrameworkFacts, got {excerpt(facts)}")
    others = [o for o in others if o.name != facts.name]
    _check_types(facts, where)
    _check_shared(facts, others, where)


def _fail(where: str, facts: Any, field: str, expected: str) -> SpecError:
    value = getattr(facts, field, None)
    name = facts.name if isinstance(facts.name, str) else excerpt(facts.name)
    return SpecError(f"{where}: backend {name!r}: {field} must be {expected}, got {excerpt(value)}")


def _check_types(f: FrameworkFacts, where: str) -> None:
    if not isinstance(f.name, str) or not _NAME.fullmatch(f.name):
        raise _fail(where, f, "name", "a short word (letters, digits, '_', '-', '.')")
    if not isinstance(f.framework, str) or not re.fullmatch(_MODULE, f.framework):
        raise _fail(where, f, "framework", "the framework's top-level module name")
    if not isinstance(f.backend, str) or not _BACKEND.fullmatch(f.backend):
        raise _fail(where, f, "backend", "'module:attr' (backend='module:attr', e.g. 'mypkg.backend:BACKEND')")
    for field in _STRINGS:
        if not isinstance(getattr(f, field), str):
            raise _fail(where, f, field, "a string")
    if not isinstance(f.reads_other_files, bool):
        raise _fail(where, f, "reads_other_files", "True or False")
    for field in _STRING_TUPLES:
        value = getattr(f, field)
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
            raise _fail(where, f, field, "a tuple of non-empty strings")
    if not all(s.startswith(".") and s == s.lower() for s in f.file_suffixes):
        raise _fail(where, f, "file_suffixes", "lower-case suffixes with the dot ('.pt')")
    if not all(re.fullmatch(r"\w+", s) for s in f.wrapper_segments + f.wrapper_prefixes):
        raise _fail(where, f, "wrapper_segments", "name segments without dots")
    if not isinstance(f.ignored_state, str):
        raise _fail(where, f, "ignored_state", "a regex (a string)")
    if f.ignored_state:
        try:
            re.compile(f.ignored_state)
        except (re.error, RecursionError, OverflowError) as exc:
            raise _fail(where, f, "ignored_state", f"a valid regex ({exc})") from None
    if not _str_mapping(f.leaf_spellings, lambda v: isinstance(v, str) and v.isidentifier()) or \
            not all(k.isidentifier() for k in f.leaf_spellings):
        raise _fail(where, f, "leaf_spellings", "a mapping of leaf names to leaf names")
    if not _str_mapping(f.optimizer_options, lambda v: v in VALUE_KINDS):
        raise _fail(where, f, "optimizer_options", f"a mapping of option names to one of {', '.join(VALUE_KINDS)}")
    layouts_ok = _str_mapping(f.weight_layouts, lambda v: isinstance(v, tuple) and all(
        d in _LAYOUT_DIMS for d in v)) and all(k in KINDS or k == "default" for k in f.weight_layouts)
    if not layouts_ok:
        raise _fail(where, f, "weight_layouts", f"a mapping of layer kinds (or 'default') to tuples of "
                                                f"{', '.join(map(repr, _LAYOUT_DIMS))}")


def _str_mapping(value: Any, value_ok: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and k and value_ok(v) for k, v in value.items())


def _check_shared(f: FrameworkFacts, others: list[FrameworkFacts], where: str) -> None:
    def taken(field: str, mine: Iterable[str], theirs: Any) -> None:
        for other in others:
            clash = sorted(set(mine) & set(theirs(other)))
            if clash:
                raise SpecError(f"{where}: backend {f.name!r}: {field} {', '.join(map(repr, clash[:4]))} "
                                f"belong(s) to backend {other.name!r}; a backend may not take over another's")

    taken("file_suffixes", f.file_suffixes, lambda o: o.file_suffixes)
    taken("zoos", f.zoos, lambda o: o.zoos)
    taken("optimizer_options", [k for k, v in f.optimizer_options.items()],
          lambda o: [k for k, v in o.optimizer_options.items() if f.optimizer_options.get(k) != v])
    # A spelling is read for every framework's checkpoints: it may add a native leaf name, never
    # rename a canonical leaf or one another backend spells differently.
    for native, canonical in f.leaf_spellings.items():
        for other in others:
            if native != canonical and (native in other.leaf_spellings.values() or
                                        other.leaf_spellings.get(native, canonical) != canonical):
                raise SpecError(f"{where}: backend {f.name!r}: leaf_spellings {native!r} -> {canonical!r} "
                                f"would rename backend {other.name!r}'s leaves; a backend may not "
                                f"take over another's")
    rule_options = sorted({k for table in _RULES.values() for k in table} & set(f.optimizer_options))
    if rule_options:
        raise SpecError(f"{where}: backend {f.name!r}: optimizer_options {', '.join(map(repr, rule_options))} "
                        f"are update-rule options, checked the same in every framework; declare only "
                        f"options beyond them")
    before = shared_semantics(tuple(others))
    after = shared_semantics(tuple(others) + (f,))
    if f.semantics and (after is None or (before is not None and after != before)):
        offered = sorted({s for o in others for s in o.semantics})
        raise SpecError(f"{where}: backend {f.name!r}: semantics {excerpt(list(f.semantics))} share no "
                        f"default with the other backends' ({', '.join(offered)}); offer "
                        f"{before or 'one of them'!r} too, so recipes mean the same update rules everywhere")


def shared_semantics(facts: tuple) -> str | None:
    """The semantics a recipe gets when it names none: the first one that every backend offering
    semantics shares (so a recipe means the same update rules in every framework)."""
    offering = [f.semantics for f in facts if f.semantics]
    if not offering:
        return None
    return next((s for s in offering[0] if all(s in o for o in offering)), None)
