"""MMEngine's ``_base_`` inheritance for configs read as data (JSON, YAML, TOML).

An MMEngine config may name base configs in ``_base_`` (a path or a list of paths, relative to the
file that names them); the bases are merged in order, then the file's own keys are merged into
the result: mappings key by key, anything else replaced, and a mapping with ``_delete_=True``
replaces the base's mapping whole (``mmengine.Config._merge_a_into_b``). Converting a config
without its bases would silently drop the base's ``paramwise_cfg``, so bases are resolved here,
as data only: no file's code runs, each file is read by :func:`tunespec.recipe.read.read_recipe` (a
regular file of at most 1 MiB), inheritance nests at most :data:`MAX_DEPTH` levels over at most
:data:`MAX_FILES` files, and a cycle is an error. What cannot be reproduced without running code
is refused by name: a ``.py`` base, a package base (``mmdet::...``) and ``{{_base_.x}}`` variables.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from tunespec.errors import SpecError
from tunespec.recipe import validate as V
from tunespec.recipe.read import read_recipe

BASE_KEY, DELETE_KEY = "_base_", "_delete_"
MAX_DEPTH = 8  # a file, its base, the base's base, ...
MAX_FILES = 32  # every file read for one config
_BASE_VARIABLE = re.compile(r"\{\{\s*_base_\.")


def read_with_bases(path: str | os.PathLike, where: str = "config") -> dict[str, Any]:
    """The config at ``path`` with its ``_base_`` files merged in, without any ``_base_`` key."""
    files: list[str] = []
    return _read(Path(path), where, (), files)


def _read(path: Path, where: str, chain: tuple[str, ...], files: list[str]) -> dict[str, Any]:
    real = os.path.realpath(path)
    if real in chain:
        raise SpecError(f"{where}: {V.excerpt(str(path))} inherits from itself through _base_ "
                        f"({' -> '.join(map(V.excerpt, chain + (real,)))})")
    if len(chain) >= MAX_DEPTH:
        raise SpecError(f"{where}: _base_ nests more than {MAX_DEPTH} levels deep (at "
                        f"{V.excerpt(str(path))}); flatten the config")
    if len(files) >= MAX_FILES:
        raise SpecError(f"{where}: _base_ reads more than {MAX_FILES} files; flatten the config")
    files.append(real)
    data = read_recipe(path)
    _no_base_variables(data, f"{where} {V.excerpt(str(path))}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:  # nothing to delete from: the flags go, as in mmengine
        return _without_delete(data, where)
    merged: dict[str, Any] = {}
    for i, base in enumerate(_base_paths(bases, path, f"{where}.{BASE_KEY}")):
        inherited = _read(base, f"{where}.{BASE_KEY}[{i}]", chain + (real,), files)
        duplicate = sorted(set(inherited) & set(merged))
        if duplicate:
            raise SpecError(f"{where}.{BASE_KEY}: keys {', '.join(map(V.excerpt, duplicate[:4]))} come "
                            f"from more than one base (MMEngine refuses that too); keep each in one base")
        merged.update(inherited)
    return merge(data, merged, f"{where}")


def _base_paths(value: Any, path: Path, where: str) -> list[Path]:
    items = [value] if isinstance(value, str) else V.sequence(value, where, what="a path or a list of paths",
                                                               max_length=MAX_FILES)
    out = []
    for i, item in enumerate(items):
        item = V.string(item, f"{where}[{i}]", max_length=4096)
        if "::" in item:
            raise SpecError(f"{where}[{i}]: {V.excerpt(item)} is a package's config (mmengine resolves "
                            f"'pkg::path' by importing the package); save it as .yaml next to this one")
        if item.endswith(".py"):
            raise SpecError(f"{where}[{i}]: {V.excerpt(item)} is a Python config, which runs its code "
                            f"when read; give it as .json/.yaml (mmengine: Config.fromfile(path)"
                            f".dump('base.yaml')), or convert the whole .py config with --exec-config")
        out.append(path.parent / item)
    return out


def _no_base_variables(data: Any, where: str) -> None:
    """``{{_base_.x}}`` is substituted by mmengine in the file's text before parsing; kept as a
    string it would reach the recipe as a value that means something else."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and _BASE_VARIABLE.search(value):
            raise SpecError(f"{where}: {V.excerpt(value)} refers to a base config's variable, which "
                            f"tunespec does not substitute; write the value itself")


def merge(child: dict[str, Any], base: dict[str, Any], where: str) -> dict[str, Any]:
    """MMEngine's merge of ``child`` into ``base`` (neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        path = f"{where}.{key}"
        if isinstance(value, dict):
            value = dict(value)
            delete = V.boolean(value.pop(DELETE_KEY, False), f"{path}.{DELETE_KEY}")
            if key in out and not delete:
                if not isinstance(out[key], dict):
                    raise SpecError(f"{path}: a mapping here, but the base config has "
                                    f"{V.excerpt(out[key])}; add {DELETE_KEY}: true to replace it")
                out[key] = merge(value, out[key], path)
                continue
            out[key] = _without_delete(value, path)
        else:
            out[key] = _without_delete(copy.deepcopy(value), path)
    return out


def _without_delete(value: Any, where: str) -> Any:
    """A value that replaces (or has nothing to merge with), with the ``_delete_`` keys of every
    mapping inside dropped (in lists too, as mmengine drops them)."""
    if isinstance(value, list):
        return [_without_delete(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k == DELETE_KEY:
            V.boolean(v, f"{where}.{DELETE_KEY}")
            continue
        out[k] = _without_delete(v, f"{where}.{k}")
    return out
