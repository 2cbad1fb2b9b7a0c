"""The framework-neutral fine-tuning spec: ordered rules plus groups and a BatchNorm policy.

A spec is validated completely when it is built, so a typo (``lr_mul``), a broken
regex or a meaningless multiplier fails before any model is touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tunespec.errors import SpecError
from tunespec.recipe import validate as V
from tunespec.recipe.layer_decay import LayerDecay
from tunespec.recipe.sections import RECIPE_SECTIONS
from tunespec.recipe.selectors import SELECTORS, TOKEN, Selection, check_selector, parse_token

BN_POLICIES = ("train", "freeze", "freeze_frozen")
BUILTIN_GROUPS = ("bias", "norm", "1d")
RULE_KEYS = ("match", "native", "layer", "trainable", "lr_mult", "wd_mult")
# Spec keys in the order their rules are desugared (whatever order they were written in).
SPEC_KEYS = ("preset", "freeze", "train", "lr_mult", "wd_mult", "rules", "groups", "bn", "strict",
             "layer_decay")


def check_keys(data: Mapping[str, Any], section: str, keys: Sequence[str]) -> None:
    """Refuse a key a recipe section does not have, suggesting the closest one it does."""
    V.keys(data, section, keys)


def check_pattern(pattern: Any, where: str) -> str:
    """A rule's ``match``: a regex that compiles, a ``@group`` reference or an ``@layer:KIND``."""
    if isinstance(pattern, str) and pattern.startswith(TOKEN):
        check_selector(parse_token(pattern), f"{where} ({pattern[:200]!r})")
        return pattern
    if isinstance(pattern, str) and pattern.startswith("@"):
        return V.group_reference(pattern, where)
    return V.regex(pattern, where)


def _check_mult(value: Any, key: str, where: str, trains: bool = False) -> float:
    """A multiplier: finite, in [0, MAX_FACTOR]; lr_mult 0 is refused (it does not freeze) unless
    the same rule says ``trainable: true`` (``trains``): training at lr 0 on purpose (MMEngine's
    ``lr_mult: 0``: gradients computed, BatchNorm statistics updated, weights kept)."""
    path = where if where.startswith(key) else f"{where}.{key}"
    value = V.number(value, path, minimum=0.0, maximum=V.MAX_FACTOR)
    if key == "lr_mult" and value == 0 and not trains:
        raise SpecError(
            f"{where}: lr_mult 0 does not freeze (gradients are still computed and BatchNorm "
            f"statistics still update): write trainable: false instead, or a rule with "
            f"trainable: true and lr_mult: 0 to train at lr 0 on purpose"
        )
    return value


@dataclass(frozen=True)
class Rule:
    """One ordered rule: parameters whose canonical name fullmatches ``match`` (or, instead,
    whose native name the backend reports ``re.match``-es ``native``, the way Gluon's
    ``collect_params(pattern)`` selects; and, with ``layer``, that belong to a layer of that kind)
    get the set fields."""

    match: str | None
    trainable: bool | None = None
    lr_mult: float | None = None
    wd_mult: float | None = None
    origin: str = "rules[0]"
    user: bool = True  # user-written rules must match something; preset rules come from cards
    layer: str | None = None  # a layer-kind selector (tunespec.recipe.selectors.SELECTORS)
    native: str | None = None  # a regex re.match-ed against native names (instead of match)

    @classmethod
    def from_dict(cls, data: Any, origin: str, user: bool = True) -> "Rule":
        if not isinstance(data, Mapping):
            raise V.fail(origin, "a rule mapping like {match: 'fc\\..*', lr_mult: 10}", data)
        V.keys(data, origin, RULE_KEYS, "rule key")
        layer = data.get("layer")
        if layer is not None:
            check_selector(layer, f"{origin}.layer")
        native = data.get("native")
        if native is not None:
            if "match" in data:
                raise SpecError(f"{origin}: give match (canonical names) or native (the framework's own "
                                f"names, matched at their start), not both")
            if not isinstance(native, str) or native.startswith("@"):
                raise V.fail(f"{origin}.native", "a regex on native names, e.g. '.*dense'", native)
            native = V.regex(native, f"{origin}.native")
            match = None
        elif "match" not in data and layer is None:
            raise SpecError(f"{origin}: a rule needs 'match' (a regex on canonical names, '@group' or "
                            f"'@layer:KIND'), 'native' (a regex on native names) and/or 'layer' (one "
                            f"of {', '.join(SELECTORS)})")
        elif "match" in data:
            match = check_pattern(data["match"], origin)
        else:  # a layer kind alone is the '@layer:KIND' selection
            match, layer = TOKEN + layer, None
        trainable = data.get("trainable")
        if trainable is not None:
            V.boolean(trainable, f"{origin}.trainable")
        lr = None if data.get("lr_mult") is None else _check_mult(data["lr_mult"], "lr_mult", origin,
                                                                  trains=trainable is True)
        wd = None if data.get("wd_mult") is None else _check_mult(data["wd_mult"], "wd_mult", origin)
        if trainable is None and lr is None and wd is None:
            raise SpecError(f"{origin}: rule {V.excerpt(match or native)} sets nothing; give trainable, "
                            f"lr_mult or wd_mult")
        return cls(match, trainable, lr, wd, origin, user, layer, native)

    @property
    def selection(self) -> str:
        """What the rule selects, for messages ('.*\\.weight' in conv layers)."""
        what = repr(self.match) if self.native is None else f"native {self.native!r}"
        return what + (f" in {self.layer} layers" if self.layer else "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": self.match} if self.native is None else {"native": self.native}
        if self.layer is not None:
            out["layer"] = self.layer
        for key in ("trainable", "lr_mult", "wd_mult"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _group_parts(value: Any, where: str) -> list[Selection]:
    """A group's value: a regex, '@layer:KIND', {layer: KIND, match: regex}, or a list of those."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise V.fail(where, "a regex, '@layer:KIND', {layer: KIND, match: regex} or a list of them", value)
    parts = []
    for item in items:
        if isinstance(item, Mapping):
            V.keys(item, where, ("layer", "match"), "group key")
            layer = check_selector(item.get("layer"), f"{where}.layer")
            match = item.get("match")
            if match is not None and (not isinstance(match, str) or match.startswith("@")):
                raise V.fail(f"{where}.match", "a regex", match)
            parts.append(Selection(None if match is None else check_pattern(match, where), layer))
        elif isinstance(item, str) and item.startswith(TOKEN):
            parts.append(Selection(None, check_selector(parse_token(item), where)))
        elif isinstance(item, str):
            if item.startswith("@"):
                raise SpecError(f"{where}: groups are regexes or layer kinds; {V.excerpt(item)} refers "
                                f"to a group")
            parts.append(Selection(check_pattern(item, where), None))
        else:
            raise V.fail(where, "a regex, '@layer:KIND', {layer: KIND, match: regex} or a list of them", item)
    return parts


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise V.fail(key, "a regex or a list of regexes", value)


def _as_mult_map(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise V.fail(key, "a mapping {regex: multiplier}", value)
    return value


@dataclass(frozen=True)
class Spec:
    """An ordered rule list plus named groups, a BatchNorm policy and strictness."""

    rules: tuple[Rule, ...] = ()
    groups: Mapping[str, "str | tuple[Selection, ...]"] = field(default_factory=dict)
    bn: str = "freeze_frozen"
    strict: bool = True
    preset_name: str | None = None
    layer_decay: LayerDecay | None = None  # scales lr_mult by depth (tunespec.planning.decay)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Spec":
        """Validate and desugar a spec mapping (the spec's part of a recipe file)."""
        if isinstance(data, Spec):
            return data
        if not isinstance(data, Mapping):
            raise SpecError(f"a spec is a mapping of {', '.join(SPEC_KEYS)}; got {type(data).__name__}")
        V.tree(data)
        known = SPEC_KEYS + tuple(RECIPE_SECTIONS)  # other sections are read by their features
        V.keys(data, "", known, "spec key")
        groups = cls._groups(data.get("groups") or {})
        rules: list[Rule] = []
        for i, regex in enumerate(_as_list(data.get("freeze", []), "freeze")):
            rules.append(Rule.from_dict({"match": regex, "trainable": False}, f"freeze[{i}]"))
        for i, regex in enumerate(_as_list(data.get("train", []), "train")):
            rules.append(Rule.from_dict({"match": regex, "trainable": True}, f"train[{i}]"))
        for key in ("lr_mult", "wd_mult"):
            for regex, mult in _as_mult_map(data.get(key, {}), key).items():
                rules.append(Rule.from_dict({"match": regex, key: mult}, f"{key}[{V.excerpt(regex)}]"))
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, (list, tuple)):
            raise V.fail("rules", "a list of rule mappings", raw_rules)
        rules += [Rule.from_dict(r, f"rules[{i}]") for i, r in enumerate(raw_rules)]
        bn = data.get("bn", "freeze_frozen")
        V.choice(bn, "bn", BN_POLICIES)
        strict = V.boolean(data.get("strict", True), "strict")
        preset = data.get("preset")
        if preset is not None:  # YAML reads a bare 4 as an int
            if isinstance(preset, bool) or not isinstance(preset, (str, int)) or (
                    isinstance(preset, int) and not 0 <= preset <= 1000):
                raise V.fail("preset", "a preset name like 'heads' or '4+'", preset)
            V.string(str(preset), "preset", max_length=200)
        decay = None if data.get("layer_decay") is None else LayerDecay.from_dict(data["layer_decay"])
        return cls(tuple(rules), groups, bn, strict, None if preset is None else str(preset), decay)

    @classmethod
    def preset(cls, name: str, **extra: Any) -> "Spec":
        """A spec that starts from a model card's preset (``heads``, ``4+``, ...), plus extra keys."""
        return cls.from_dict({"preset": name, **extra})

    @staticmethod
    def _groups(raw: Any) -> dict[str, "str | tuple[Selection, ...]"]:
        """Each group: one regex (several joined into one), or, where a layer kind takes part,
        the union of its :class:`~tunespec.recipe.selectors.Selection` s."""
        if not isinstance(raw, Mapping):
            raise V.fail("groups", "a mapping {name: regex}", raw)
        groups: dict[str, str | tuple[Selection, ...]] = {}
        for name, value in raw.items():
            if not isinstance(name, str) or len(name) > 200 or not re.fullmatch(r"[A-Za-z_][\w+-]*", name):
                raise SpecError(f"groups: {V.excerpt(name)} is not a valid group name (letters, digits, "
                                f"_ + -)")
            if name in BUILTIN_GROUPS:
                raise SpecError(f"groups: {name!r} is a built-in group (@bias, @norm, @1d); "
                                "pick another name")
            parts = _group_parts(value, f"groups.{name}")
            if all(p.layer is None for p in parts):
                regexes = [p.match for p in parts]
                groups[name] = regexes[0] if len(regexes) == 1 else "|".join(f"(?:{r})" for r in regexes)
            else:
                groups[name] = tuple(parts)
        return groups

    def with_strict(self, strict: bool | None) -> "Spec":
        return self if strict is None or strict == self.strict else Spec(
            self.rules, self.groups, self.bn, strict, self.preset_name, self.layer_decay)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.preset_name is not None:
            out["preset"] = self.preset_name
        out["rules"] = [r.to_dict() for r in self.rules]
        if self.groups:
            out["groups"] = {name: value if isinstance(value, str) else [p.to_dict() for p in value]
                             for name, value in self.groups.items()}
        out["bn"] = self.bn
        out["strict"] = self.strict
        if self.layer_decay is not None:
            out["layer_decay"] = self.layer_decay.to_dict()
        return out
