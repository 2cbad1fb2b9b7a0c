"""Mapping names from one model (or checkpoint) onto another: select, then rename.

One mechanism for weight porting between frameworks and for partial checkpoint loading.
"""

from __future__ import annotations

import re
import time
import warnings
from typing import Any, Callable, Mapping


from tunespec.recipe import validate as V
from tunespec.errors import SpecError, TuneSpecWarning
from tunespec.planning.matching import budget_for, simple

Rename = Mapping[str, str] | Callable[[str], "str | None"] | None


class _Timed:
    """A user pattern with a time budget over all the names it is tried on (see matching.py).

    A NameMap serves one load or port, so the budget covers all the names of that call.
    """

    def __init__(self, regex: str, where: str):
        self.where, self.spent, self.names = where, 0.0, 0
        # A simple pattern costs O(len(name)**2) at most: ``re``, untimed; any other, ``regex``.
        self.pattern = re.compile(regex) if simple(regex) else V.compiled(regex)
        self.timed = not simple(regex)

    def fullmatch(self, name: str) -> Any:
        if not self.timed:
            return self.pattern.fullmatch(name)
        left = budget_for(self.names + 1) - self.spent
        start = time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return self.pattern.fullmatch(name, timeout=left)
        except TimeoutError:
            raise SpecError(
                f"{self.where}: regex {V.excerpt(self.pattern.pattern)} needed more than "
                f"{budget_for(self.names + 1):.3g} s to match {self.names + 1} names; it backtracks "
                f"catastrophically (nested or overlapping repeats like (a+)+). Simplify it") from None
        finally:
            self.spent += time.monotonic() - start
            self.names += 1


class NameMap:
    """``select`` keeps names that fullmatch it; ``rename`` maps the kept ones.

    ``rename`` is either a mapping ``{regex: replacement}`` tried in order (the first regex that
    fullmatches wins; ``\\1`` refers to its groups; an empty replacement drops the name) or a
    function returning the new name, or None to drop it.
    """

    def __init__(self, select: str | None = None, rename: Rename = None):
        self.select = self._compile(select, "select") if select else None
        self.rename = rename
        self._rules: list[tuple[_Timed, str]] = []
        self._hits: list[int] = []  # per rename rule: how many names it renamed
        self._tried: list[str] = []  # a few of the names rename rules were tried on, for hints
        if isinstance(rename, Mapping):
            for k, v in rename.items():
                where = f"rename[{V.excerpt(k)}]"
                self._rules.append((self._compile(k, where), V.string(v, where, nonempty=False)))
                self._hits.append(0)
        elif rename is not None and not callable(rename):
            raise V.fail("rename", "{regex: replacement} or a function", rename)

    @staticmethod
    def _compile(regex: Any, where: str) -> _Timed:
        return _Timed(V.regex(regex, where), where)

    def __call__(self, name: str) -> str | None:
        if self.select is not None and not self.select.fullmatch(name):
            return None
        if callable(self.rename) and not isinstance(self.rename, Mapping):
            return self.rename(name)
        if len(self._tried) < 1000:
            self._tried.append(name)
        for i, (pattern, replacement) in enumerate(self._rules):
            m = pattern.fullmatch(name)
            if m:
                self._hits[i] += 1
                try:
                    return m.expand(replacement) or None
                except (IndexError, re.error, V.engine().error) as exc:  # a \\3 for a regex with two groups
                    raise SpecError(f"{pattern.where}: replacement {V.excerpt(replacement)} does "
                                    f"not fit its regex: {V.excerpt(str(exc))}") from None
        return name

    def check_used(self, where: str, strict: bool = True) -> None:
        """Refuse (or, not ``strict``, warn about) a rename rule that renamed nothing.

        Such a rule has no effect, and the usual cause is the ``re.sub`` idiom
        (``{r'^module\\.': ''}``): rename patterns fullmatch the whole name, so the hint gives
        the spelling that strips the prefix.
        """
        for (pattern, replacement), hits in zip(self._rules, self._hits, strict=True):
            if hits:
                continue
            text = pattern.pattern.pattern
            message = f"{where}: {pattern.where} renames nothing: no name fullmatches it"
            prefix = next((n for n in self._tried if _starts(pattern, n)), None)
            if prefix is not None:
                groups = pattern.pattern.groups
                fixed = {text.removeprefix("^") + "(.*)": replacement + "\\" + str(groups + 1)}
                message += (f"; it matches the start of {V.excerpt(prefix)}, but rename patterns must "
                            f"match the whole name (not re.sub): write rename={fixed!r}")
            elif self._tried:
                message += f" (names look like {', '.join(map(V.excerpt, self._tried[:3]))})"
            if strict:
                raise SpecError(message)
            warnings.warn(message, TuneSpecWarning, stacklevel=3)


def _starts(pattern: _Timed, name: str) -> bool:
    """Whether ``pattern`` matches a prefix of ``name`` (re.match), within its time budget."""
    try:
        return bool(pattern.pattern.match(name, timeout=1.0) if pattern.timed else pattern.pattern.match(name))
    except TimeoutError:
        return False
