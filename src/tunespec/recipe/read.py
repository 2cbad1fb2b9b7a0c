"""Reading recipe files (.yaml/.yml, .json, .toml) as untrusted input: bounded, regular files
only, UTF-8, plain data, no duplicate keys.

```python
from tunespec.recipe.read import RECIPE_TYPES
assert ".yaml" in RECIPE_TYPES
```
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tunespec.errors import SpecError
from tunespec.recipe import validate as V

MAX_RECIPE_BYTES = 1 << 20  # 1 MiB: a real recipe is a few KiB
RECIPE_TYPES = (".yaml", ".yml", ".json", ".toml")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe file (.yaml/.yml, .json or .toml) into a mapping, as untrusted input.

    At most :data:`MAX_RECIPE_BYTES` are read, and only from a regular file (a FIFO or
    ``/dev/zero`` neither hangs nor fills memory); the text must be UTF-8; YAML is read without
    anchors, aliases or tags beyond plain data, and a key given twice (in any of the three
    formats, at any depth) is an error instead of the last one silently winning.
    """
    path = Path(path)
    name = V.excerpt(str(path))
    suffix = path.suffix.lower()
    if suffix not in RECIPE_TYPES:
        raise SpecError(f"recipe {name}: unknown file type {V.excerpt(suffix)}; use .yaml, .json or .toml")
    text = _read_text(path, name)
    if suffix in (".yaml", ".yml"):
        data = _parse_yaml(text, name)
    elif suffix == ".json":
        data = _parse_json(text, name)
    else:
        data = _parse_toml(text, name)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"recipe {name}: the top level must be a mapping, got {type(data).__name__}")
    V.tree(data)
    return data


def _read_text(path: Path, name: str) -> str:
    """The file's text: a regular file of at most MAX_RECIPE_BYTES, UTF-8, no NUL bytes."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not block; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SpecError(f"cannot read recipe {name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(f"recipe {name} is not a regular file; give the path of a .yaml, .json "
                            f"or .toml file")
        if info.st_size > MAX_RECIPE_BYTES:
            raise _too_big(name)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            raw = f.read(MAX_RECIPE_BYTES + 1)  # the size can change after fstat
    except OSError as exc:
        raise SpecError(f"cannot read recipe {name}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > MAX_RECIPE_BYTES:
        raise _too_big(name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"recipe {name} is not UTF-8 text (byte {exc.start} is invalid); save it "
                        f"as UTF-8") from None
    if "\x00" in text:
        raise SpecError(f"recipe {name} contains NUL bytes: it is a binary file, not a recipe")
    return text


def _too_big(name: str) -> SpecError:
    return SpecError(f"recipe {name} is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a "
                     f"few KiB (use regexes instead of listing every tensor)")


def _yaml_loader() -> type:
    class Loader(yaml.SafeLoader):
        """SafeLoader without anchors/aliases (a 'billion laughs' cannot expand) or duplicate keys."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise SpecError(f"line {event.start_mark.line + 1}: YAML aliases (*name) are not "
                                f"allowed in a recipe; write the value out")
            event = self.peek_event()
            if getattr(event, "anchor", None) is not None:
                raise SpecError(f"line {event.start_mark.line + 1}: YAML anchors (&name) are not "
                                f"allowed in a recipe; write the value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        raise SpecError(f"line {key_node.start_mark.line + 1}: YAML merge keys (<<) are "
                                        f"not allowed in a recipe")
                    key = self.construct_object(key_node, deep=True)
                    try:
                        duplicate = key in seen
                        seen.add(key)
                    except TypeError:  # an unhashable key; SafeLoader reports it
                        continue
                    if duplicate:
                        raise SpecError(f"line {key_node.start_mark.line + 1}: duplicate key "
                                        f"{V.excerpt(key)}; each key may appear once (the last one "
                                        f"would silently win)")
            return super().construct_mapping(node, deep)

    return Loader


def _parse_yaml(text: str, name: str) -> Any:
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except SpecError as exc:
        raise SpecError(f"recipe {name}, {exc}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise SpecError(f"recipe {name} is not valid yaml: {V.excerpt(str(exc))[1:-1]}") from None


def _parse_json(text: str, name: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise SpecError(f"duplicate key {V.excerpt(key)}; each key may appear once (the "
                                f"last one would silently win)")
            out[key] = value
        return out

    def constant(word: str) -> Any:
        raise SpecError(f"{word} is not a JSON number; recipes take finite numbers")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except SpecError as exc:
        raise SpecError(f"recipe {name}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge int digits
        raise SpecError(f"recipe {name} is not valid json: {V.excerpt(str(exc))[1:-1]}") from None


def _parse_toml(text: str, name: str) -> Any:
    try:
        return tomllib.loads(text)  # rejects duplicate keys itself
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise SpecError(f"recipe {name} is not valid toml: {V.excerpt(str(exc))[1:-1]}") from None
