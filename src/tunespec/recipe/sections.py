"""The one table of a recipe's sections besides the spec's own keys.

Each section is read by the feature that owns it; the table names the parser by ``module:attr``
so that knowing a section never depends on which modules happen to be imported (a recipe with
``init:`` is valid before ``tunespec.init`` is loaded) and the table imports nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class Section:
    key: str
    describes: str
    parser: str | None = None  # 'module:Class.method' -> parse(value, recipe_data); None: Recipe reads it


SECTIONS: tuple[Section, ...] = (
    Section("optimizer", "optimizer name, lr, weight_decay, semantics and options"),
    Section("schedule", "lr schedule: constant, step, multistep, cosine, onecycle, with linear warmup"),
    Section("stages", "staged unfreezing: later specs switched to at an epoch, step or plateau",
            "tunespec.stages:StagesSpec.from_dict"),
    Section("init", "re-initialise parameters: seed and rules {match/layer, method, arguments}",
            "tunespec.init:InitSpec.from_dict"),
)
SECTION_KEYS: tuple[str, ...] = tuple(s.key for s in SECTIONS)


def resolve(path: str) -> Callable[..., Any]:
    module, _, attrs = path.partition(":")
    value: Any = importlib.import_module(module)
    for attr in attrs.split("."):
        value = getattr(value, attr)
    return value


class _Parsers(Mapping):
    """The sections that have their own parser, resolved on first use."""

    def __getitem__(self, key: str) -> Callable[[Any, Mapping[str, Any]], Any]:
        for s in SECTIONS:
            if s.key == key and s.parser:
                return resolve(s.parser)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (s.key for s in SECTIONS if s.parser)

    def __len__(self) -> int:
        return sum(1 for s in SECTIONS if s.parser)


SECTION_PARSERS: Mapping[str, Callable[[Any, Mapping[str, Any]], Any]] = _Parsers()
RECIPE_SECTIONS: Mapping[str, str] = {s.key: s.describes for s in SECTIONS}
