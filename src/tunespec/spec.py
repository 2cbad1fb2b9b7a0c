"""The framework-neutral fine-tuning spec: ordered rules plus groups and a BatchNorm policy.

A spec is validated completely when it is built, so a typo (``lr_mul``), a broken
regex or a meaningless multiplier fails before any model is touched.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import SpecError

BN_POLICIES = ("train", "freeze", "freeze_frozen")
BUILTIN_GROUPS = ("bias", "norm", "1d")
RULE_KEYS = ("match", "trainable", "lr_mult", "wd_mult")
# Spec keys in the order their rules are desugared (whatever order they were written in).
SPEC_KEYS = ("preset", "freeze", "train", "lr_mult", "wd_mult", "rules", "groups", "bn", "strict")
# Sections of a recipe file that belong to other features; each registers itself here.
RECIPE_SECTIONS: dict[str, str] = {}


def _close(word: str, choices: Iterable[str]) -> str:
    hits = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {hits[0]!r}?)" if hits else ""


def check_keys(data: Mapping[str, Any], section: str, keys: Sequence[str]) -> None:
    """Refuse a key a recipe section does not have, suggesting the closest one it does."""
    for key in data:
        if key not in keys:
            raise SpecError(f"{section}: unknown key {key!r}{_close(str(key), keys)}; "
                            f"keys are {', '.join(keys)}")


def _check_regex(pattern: Any, where: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise SpecError(f"{where}: match must be a non-empty regex string, got {pattern!r}")
    if pattern.startswith("@"):
        if not re.fullmatch(r"@[A-Za-z0-9_][\w+-]*", pattern):
            raise SpecError(f"{where}: {pattern!r} is not a group reference like '@heads' or '@bias'")
        return pattern  # resolved at plan time, when model cards' groups are known too
    try:
        re.compile(pattern)
    except re.error as exc:
        raise SpecError(
            f"{where}: invalid regex {pattern!r}: {exc}. Escape literal dots and brackets, "
            f"e.g. 'fc\\..*'"
        ) from None
    return pattern


def _check_mult(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}: {key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise SpecError(f"{where}: {key} must be finite and >= 0, got {value!r}")
    if key == "lr_mult" and value == 0:
        raise SpecError(
            f"{where}: lr_mult 0 does not freeze (momentum and weight decay still move the "
            f"weights, and BatchNorm statistics still update): write trainable: false instead"
        )
    return value


@dataclass(frozen=True)
class Rule:
    """One ordered rule: parameters whose canonical name fullmatches ``match`` get the set fields."""

    match: str
    trainable: bool | None = None
    lr_mult: float | None = None
    wd_mult: float | None = None
    origin: str = "rules[0]"
    user: bool = True  # user-written rules must match something; preset rules come from cards

    @classmethod
    def from_dict(cls, data: Any, origin: str, user: bool = True) -> "Rule":
        if not isinstance(data, Mapping):
            raise SpecError(f"{origin}: a rule is a mapping like {{match: 'fc\\..*', lr_mult: 10}}, "
                            f"got {data!r}")
        for key in data:
            if key not in RULE_KEYS:
                raise SpecError(f"{origin}: unknown rule key {key!r}{_close(str(key), RULE_KEYS)}; "
                                f"rule keys are {', '.join(RULE_KEYS)}")
        if "match" not in data:
            raise SpecError(f"{origin}: a rule needs 'match' (a regex on canonical names or '@group')")
        match = _check_regex(data["match"], origin)
        trainable = data.get("trainable")
        if trainable is not None and not isinstance(trainable, bool):
            raise SpecError(f"{origin}: trainable must be true or false, got {trainable!r}")
        lr = None if data.get("lr_mult") is None else _check_mult(data["lr_mult"], "lr_mult", origin)
        wd = None if data.get("wd_mult") is None else _check_mult(data["wd_mult"], "wd_mult", origin)
        if trainable is None and lr is None and wd is None:
            raise SpecError(f"{origin}: rule {match!r} sets nothing; give trainable, lr_mult or wd_mult")
        return cls(match, trainable, lr, wd, origin, user)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": self.match}
        for key in ("trainable", "lr_mult", "wd_mult"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise SpecError(f"{key}: expected a regex or a list of regexes, got {value!r}")


def _as_mult_map(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{key}: expected a mapping {{regex: multiplier}}, got {value!r}")
    return value


@dataclass(frozen=True)
class Spec:
    """An ordered rule list plus named groups, a BatchNorm policy and strictness."""

    rules: tuple[Rule, ...] = ()
    groups: Mapping[str, str] = field(default_factory=dict)
    bn: str = "freeze_frozen"
    strict: bool = True
    preset_name: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Spec":
        """Validate and desugar a spec mapping (the spec's part of a recipe file)."""
        if isinstance(data, Spec):
            return data
        if not isinstance(data, Mapping):
            raise SpecError(f"a spec is a mapping of {', '.join(SPEC_KEYS)}; got {type(data).__name__}")
        known = SPEC_KEYS + tuple(RECIPE_SECTIONS)  # other sections are read by their features
        for key in data:
            if key not in known:
                raise SpecError(f"unknown spec key {key!r}{_close(str(key), known)}; "
                                f"valid keys are {', '.join(known)}")
        groups = cls._groups(data.get("groups") or {})
        rules: list[Rule] = []
        for i, regex in enumerate(_as_list(data.get("freeze", []), "freeze")):
            rules.append(Rule.from_dict({"match": regex, "trainable": False}, f"freeze[{i}]"))
        for i, regex in enumerate(_as_list(data.get("train", []), "train")):
            rules.append(Rule.from_dict({"match": regex, "trainable": True}, f"train[{i}]"))
        for key in ("lr_mult", "wd_mult"):
            for regex, mult in _as_mult_map(data.get(key, {}), key).items():
                rules.append(Rule.from_dict({"match": regex, key: mult}, f"{key}[{regex!r}]"))
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, (list, tuple)):
            raise SpecError(f"rules: expected a list of rule mappings, got {raw_rules!r}")
        rules += [Rule.from_dict(r, f"rules[{i}]") for i, r in enumerate(raw_rules)]
        bn = data.get("bn", "freeze_frozen")
        if bn not in BN_POLICIES:
            raise SpecError(f"bn: {bn!r} is not a BatchNorm policy{_close(str(bn), BN_POLICIES)}; "
                            f"use one of {', '.join(BN_POLICIES)}")
        strict = data.get("strict", True)
        if not isinstance(strict, bool):
            raise SpecError(f"strict: must be true or false, got {strict!r}")
        preset = data.get("preset")
        if preset is not None and not isinstance(preset, (str, int)):
            raise SpecError(f"preset: expected a preset name like 'heads' or '4+', got {preset!r}")
        return cls(tuple(rules), groups, bn, strict, None if preset is None else str(preset))

    @classmethod
    def preset(cls, name: str, **extra: Any) -> "Spec":
        """A spec that starts from a model card's preset (``heads``, ``4+``, ...), plus extra keys."""
        return cls.from_dict({"preset": name, **extra})

    @staticmethod
    def _groups(raw: Any) -> dict[str, str]:
        if not isinstance(raw, Mapping):
            raise SpecError(f"groups: expected a mapping {{name: regex}}, got {raw!r}")
        groups: dict[str, str] = {}
        for name, value in raw.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w+-]*", name):
                raise SpecError(f"groups: {name!r} is not a valid group name (letters, digits, _ + -)")
            if name in BUILTIN_GROUPS:
                raise SpecError(f"groups: {name!r} is a built-in group (@bias, @norm, @1d); "
                                "pick another name")
            regexes = _as_list(value, f"groups.{name}")
            for regex in regexes:
                if regex.startswith("@"):
                    raise SpecError(f"groups.{name}: groups are regexes; {regex!r} refers to a group")
                _check_regex(regex, f"groups.{name}")
            groups[name] = regexes[0] if len(regexes) == 1 else "|".join(f"(?:{r})" for r in regexes)
        return groups

    def with_strict(self, strict: bool | None) -> "Spec":
        return self if strict is None or strict == self.strict else Spec(
            self.rules, self.groups, self.bn, strict, self.preset_name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.preset_name is not None:
            out["preset"] = self.preset_name
        out["rules"] = [r.to_dict() for r in self.rules]
        if self.groups:
            out["groups"] = dict(self.groups)
        out["bn"] = self.bn
        out["strict"] = self.strict
        return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe file (.yaml/.yml, .json or .toml) into a mapping."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json", ".toml"):
        raise SpecError(f"recipe {str(path)!r}: unknown file type {suffix!r}; use .yaml, .json or .toml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read recipe {str(path)!r}: {exc.strerror}") from None
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except Exception as exc:  # the parsers' own errors are many; report them as one kind
        raise SpecError(f"recipe {str(path)!r} is not valid {suffix[1:]}: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"recipe {str(path)!r}: the top level must be a mapping, got {type(data).__name__}")
    return data
