"""What the core derives from the registered backends' facts, for questions that span frameworks.

A checkpoint may come from any framework, so reading its keys uses every backend's wrapper
segments, norm-leaf spellings and framework-only state at once; which backend reads a file is
decided by its suffix. Results are cached per registry state (registering a backend refreshes them).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from tunespec.registry import registered, version

_cache: tuple[int, dict[str, Any]] | None = None


def _derived(facts: tuple) -> dict[str, Any]:
    spellings: dict[str, str] = {}
    for f in facts:
        spellings.update(f.leaf_spellings)
    ignored = [f.ignored_state for f in facts if f.ignored_state]
    return {
        "segments": frozenset(s for f in facts for s in f.wrapper_segments),
        "prefixes": frozenset(s for f in facts for s in f.wrapper_prefixes),
        "spellings": spellings,
        "ignored": re.compile("|".join(f"(?:{r})" for r in ignored)) if ignored else None,
        "suffixes": {s: f.name for f in facts for s in f.file_suffixes},
        "fallback": next((f.name for f in facts if f.reads_other_files), None),
        "semantics": tuple(dict.fromkeys(s for f in facts for s in f.semantics)),
        "options": {k: v for f in facts for k, v in f.optimizer_options.items()},
        "default": _shared_semantics(facts),
    }


def _shared_semantics(facts: tuple) -> str | None:
    offering = [f.semantics for f in facts if f.semantics]
    if not offering:
        return None
    return next((s for s in offering[0] if all(s in o for o in offering)), None)


def derived(what: str) -> Any:
    global _cache
    now = version()
    cached = _cache
    if cached is None or cached[0] != now:
        cached = _cache = (now, _derived(tuple(registered().values())))
    return cached[1][what]


def wrapper_segments() -> frozenset[str]:
    """Name segments any framework's wrappers insert into saved names."""
    return derived("segments")


def wrapper_prefixes() -> frozenset[str]:
    """Leading name segments any framework's data-parallel wrappers add."""
    return derived("prefixes")


def leaf_spellings() -> Mapping[str, str]:
    """Every framework's native norm-leaf spelling -> the canonical one."""
    return derived("spellings")


def is_ignored_state(name: str) -> bool:
    """State that only one framework has (never ported, never missed)."""
    pattern = derived("ignored")
    return bool(pattern and pattern.fullmatch(name))


def reader_for_suffix(suffix: str) -> str | None:
    """The backend that reads weights files with this suffix (None: no backend claims it)."""
    return derived("suffixes").get(suffix.lower()) or derived("fallback")


def semantics_names() -> tuple[str, ...]:
    """Every optimizer semantics some backend offers."""
    return derived("semantics")


def default_semantics() -> str | None:
    """The semantics a recipe gets when it names none: the first one that every backend offering
    semantics shares (so a recipe means the same update rules in every framework)."""
    return derived("default")


def framework_options() -> Mapping[str, str]:
    """Optimizer options beyond the update rules' own that some backend takes, with their value kind."""
    return derived("options")
