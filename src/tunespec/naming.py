"""Mapping names from one model (or checkpoint) onto another: select, then rename.

One mechanism for weight porting between frameworks and for partial checkpoint loading.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

from .errors import SpecError

Rename = Mapping[str, str] | Callable[[str], "str | None"] | None


class NameMap:
    """``select`` keeps names that fullmatch it; ``rename`` maps the kept ones.

    ``rename`` is either a mapping ``{regex: replacement}`` tried in order (the first regex that
    fullmatches wins; ``\\1`` refers to its groups; an empty replacement drops the name) or a
    function returning the new name, or None to drop it.
    """

    def __init__(self, select: str | None = None, rename: Rename = None):
        self.select = self._compile(select, "select") if select else None
        self.rename = rename
        self._rules = []
        if isinstance(rename, Mapping):
            self._rules = [(self._compile(k, f"rename[{k!r}]"), v) for k, v in rename.items()]
        elif rename is not None and not callable(rename):
            raise SpecError(f"rename: expected {{regex: replacement}} or a function, got {rename!r}")

    @staticmethod
    def _compile(regex: str, where: str) -> re.Pattern:
        try:
            return re.compile(regex)
        except re.error as exc:
            raise SpecError(f"{where}: invalid regex {regex!r}: {exc}") from None

    def __call__(self, name: str) -> str | None:
        if self.select is not None and not self.select.fullmatch(name):
            return None
        if callable(self.rename) and not isinstance(self.rename, Mapping):
            return self.rename(name)
        for pattern, replacement in self._rules:
            m = pattern.fullmatch(name)
            if m:
                return m.expand(replacement) or None
        return name
