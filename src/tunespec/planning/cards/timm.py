"""Cards for timm models, read from each model at plan time.

A timm model says how it is layered and where its classifier is: ``group_matcher(coarse=False)``
(what timm's own layer-wise lr decay numbers layers by, ``param_groups_layer_decay``) and
``get_classifier()`` / ``pretrained_cfg["classifier"]``. The card reader below turns both into a
card, so every timm family with a ``group_matcher`` gets ordered layers, a ``heads`` group and
the presets, and a new timm release's changes (ViT's ``reg_token``, DeiT's ``dist_token`` and
``head_dist``) arrive with it. Layers follow timm's rules exactly: a parameter takes the first
matcher entry whose regex ``re.match``-es its name; its key is (entry's ordinal in the dict,
captured numbers, the entry's suffix); keys sort numerically, a key ending in 99999 (timm's
``MATCH_PREV_GROUP``) joins the layer before it, and unmatched parameters (neck, head) form the
top layer. Models without ``group_matcher`` get timm's fallback (``auto_group_layers``): the
parameters outside the classifier, 12 per layer in model order, the classifier on top.

The card says the result as regexes on canonical names (the shortest module prefixes that hold
one layer's or one group's parameters only, exact names otherwise). Groups: ``stem`` (the
matcher's ``stem`` entry), ``heads`` (the classifier and whatever the matcher leaves out, as
timm's "neck, head" layer), ``backbone`` (the rest), plus the stage groups below for families
whose ``N+`` / ``last-K`` presets tunespec has always offered.
"""

from __future__ import annotations

import math
import re
import weakref
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Mapping, Sequence

from tunespec.planning.cards.base import Card, register_card_reader
from tunespec.recipe.layer_decay import Layer

if TYPE_CHECKING:
    from tunespec.listing import Listing

JOINS_PREVIOUS = 99999.0  # timm's MATCH_PREV_GROUP: a key ending in it joins the layer before it
UNMATCHED = (math.inf,)  # timm's key for parameters no matcher entry names: the top layer
AUTO_LAYER_SIZE = 12  # timm's auto_group_layers: parameters per layer without a group_matcher

# Families' stage groups for the N+ and last-K presets (tunespec's own grouping, not timm's
# layering): the parameters' structural names, by timm class.
_STAGES: dict[str, tuple[str, dict[str, str], str | None]] = {
    "timm.models.vision_transformer.VisionTransformer": (
        "ViT (timm)", {"blocks": r"blocks\.\d+\..*", "final_norm": r"norm\..*"}, r"blocks\.{n}\..*"),
    "timm.models.convnext.ConvNeXt": ("ConvNeXt (timm)", {
        "stage2": r"stages\.0\..*", "stage3": r"stages\.1\..*", "stage4": r"stages\.2\..*",
        "stage5": r"stages\.3\..*|norm_pre\..*"}, None),
    # EfficientNet by stride (/2, /4, /8, /16, /16, /32, /32): conv_head + bn2 with the last stage.
    "timm.models.efficientnet.EfficientNet": ("EfficientNet (timm)", {
        "stem": r"(?:conv_stem|bn1)\..*|blocks\.0\..*", "stage2": r"blocks\.1\..*", "stage3": r"blocks\.2\..*",
        "stage4": r"blocks\.[34]\..*", "stage5": r"blocks\.[56]\..*|(?:conv_head|bn2)\..*"}, None),
    "timm.models.resnet.ResNet": ("ResNet (timm)", {f"stage{i + 1}": rf"layer{i}\..*" for i in range(1, 5)}, None),
}


def group_keys(names: Sequence[str], matcher: Any) -> tuple[list[tuple[float, ...]], set[int]]:
    """timm's sort key of each name under a ``group_matcher`` result, and the positions its entry
    named ``stem`` matched. From a dict, a key is (entry ordinal, captured numbers, suffix), as
    floats; a function (CaiT, Inception) gives each name's ordinal (or tuple of them) itself."""
    if callable(matcher):
        keys = [tuple(k) if isinstance(k, Iterable) else (k,) for k in map(matcher, names)]
        return keys, set()
    compiled: list[tuple[re.Pattern[str], float, tuple[float, ...], bool]] = []
    for ordinal, (group, spec) in enumerate(matcher.items()):
        if spec is None:
            continue
        pairs = spec if isinstance(spec, (tuple, list)) else [(spec, None)]
        for regex, suffix in pairs:
            compiled.append((re.compile(regex), float(ordinal), tuple(map(float, suffix or ())),
                             group == "stem"))
    keys: list[tuple[float, ...]] = []
    stem: set[int] = set()
    for i, name in enumerate(names):
        for pattern, ordinal, suffix, is_stem in compiled:
            m = pattern.match(name)
            if m:
                keys.append((ordinal, *map(float, m.groups()), *suffix))
                if is_stem:
                    stem.add(i)
                break
        else:
            keys.append(UNMATCHED)
    return keys, stem


def layer_numbers(keys: Sequence[tuple[float, ...]]) -> list[int]:
    """Layer ids from keys: sorted keys count up, a key ending in 99999 joins the previous layer."""
    lid, of = -1, {}
    for key in sorted(set(keys)):
        if lid < 0 or key[-1] != JOINS_PREVIOUS:
            lid += 1
        of[key] = lid
    return [of[k] for k in keys]


def auto_layer_numbers(names: Sequence[str], prefixes: tuple[str, ...]) -> list[int]:
    """timm's ``auto_group_layers`` for models without ``group_matcher``: names that start with
    a classifier prefix (plain string prefixes; all names, without one) are the top layer; the
    rest, 12 per layer in model order."""
    in_head = [not prefixes or name.startswith(prefixes) for name in names]
    trunk = in_head.count(False)
    top = -(-trunk // AUTO_LAYER_SIZE)
    ids, seen = [], 0
    for head in in_head:
        ids.append(top if head else seen // AUTO_LAYER_SIZE)
        seen += not head
    return ids


def name_regexes(labels: Sequence[Hashable], names: Sequence[str],
                 aliases: Mapping[int, Iterable[str]] = {}) -> dict[Hashable, str]:
    """For each label, a regex fullmatching exactly its names: the shortest module prefixes whose
    names (aliases of tied tensors included) all carry that label, exact names elsewhere."""
    mixed = _MIXED
    under: dict[str, Any] = {}  # module prefix -> the one label beneath it, or mixed
    everyone = list(zip(names, labels, strict=True))
    everyone += [(alias, labels[row]) for row, more in aliases.items() for alias in more]
    for name, label in everyone:
        dot = name.find(".")
        while dot != -1:
            seen = under.setdefault(name[:dot], label)
            if seen is not mixed and seen != label:
                under[name[:dot]] = mixed
            dot = name.find(".", dot + 1)
    chosen: dict[Hashable, dict[str, bool]] = {}  # label -> {prefix or name: is a prefix}
    for name, label in everyone[:len(names)]:
        piece, is_prefix = name, False
        dot = name.find(".")
        while dot != -1:
            if under[name[:dot]] is not mixed:
                piece, is_prefix = name[:dot], True
                break
            dot = name.find(".", dot + 1)
        chosen.setdefault(label, {})[piece] = is_prefix
    return {label: "|".join(re.escape(p) + (r"\..*" if is_prefix else "") for p, is_prefix in found.items())
            for label, found in chosen.items()}


_MIXED = object()  # a module prefix holding names of more than one label


def _classifier_ids(root: Any) -> frozenset[int]:
    """ids of the parameters of ``get_classifier()``'s module(s)."""
    try:
        found = root.get_classifier()
    except Exception:  # a model whose classifier was removed or replaced: its prefixes still say
        found = ()
    modules = found if isinstance(found, (tuple, list)) else (found,)
    return frozenset(id(p) for m in modules if hasattr(m, "parameters") for p in m.parameters())


def _cfg_classifier(root: Any) -> tuple[str, ...]:
    """The module prefixes ``pretrained_cfg['classifier']`` names (a string or a tuple of them)."""
    cfg = getattr(root, "pretrained_cfg", None)
    value = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    return (value,) if isinstance(value, str) else tuple(v for v in value or () if isinstance(v, str))


# The last card read per model, with what it was read from: planning the same model again (every
# stage, every optimizer call) reuses it while the names, classifier and matcher are unchanged.
_READ: "weakref.WeakKeyDictionary[Any, tuple[tuple, Card | None]]" = weakref.WeakKeyDictionary()


def read_timm_card(listing: "Listing") -> Card | None:
    """The card a timm model describes: layers from ``group_matcher`` (or timm's fallback),
    ``heads`` from its classifier; None for models that are not timm's."""
    root = listing.root
    types = (listing.model_type, *listing.base_types)
    if root is None or not any(t.startswith("timm.") for t in types):
        return None
    names = tuple(listing.param_names())
    describe = getattr(root, "group_matcher", None)
    try:
        spec = describe(coarse=False) if callable(describe) else None
    except Exception:  # a model that cannot describe itself has no card's layers; planning goes on
        spec = _UNREADABLE
    aliases = {i: listing.aliases[row] for i, row in enumerate(listing.param_rows) if row in listing.aliases}
    classifier, prefixes = _classifier_ids(root), _cfg_classifier(root)
    source = (names, tuple(aliases.items()), classifier, prefixes,
              spec if isinstance(spec, Mapping) or spec is None else object())
    try:
        cached = _READ.get(root)
    except TypeError:  # not weakly referable
        cached = None
    if cached is not None and cached[0] == source:
        return cached[1]
    card = _read(listing, types, names, aliases, spec, classifier, prefixes) if names else None
    try:
        _READ[root] = (source, card)
    except TypeError:
        pass
    return card


_UNREADABLE = object()  # group_matcher raised


def _read(listing: "Listing", types: tuple[str, ...], names: Sequence[str], aliases: Mapping[int, Iterable[str]],
          spec: Any, classifier: frozenset[int], prefixes: tuple[str, ...]) -> Card | None:
    handles = listing.handles
    heads = {i for i, row in enumerate(listing.param_rows) if id(handles[row]) in classifier}
    heads.update(i for i, name in enumerate(names) if any(name == p or name.startswith(p + ".") for p in prefixes))
    stem: set[int] = set()
    ids: list[int] | None
    if spec is None:  # no group_matcher: timm's fallback
        ids = auto_layer_numbers(names, prefixes)
        top = max(ids)
    elif isinstance(spec, Mapping) or (callable(spec) and spec is not _UNREADABLE):
        try:
            keys, stem = group_keys(names, spec)
        except Exception:  # timm's own layer decay fails on it too (a capture that is not a number)
            ids, top = None, None
        else:
            ids = layer_numbers(keys)
            heads.update(i for i, k in enumerate(keys) if k == UNMATCHED)
            top = None if UNMATCHED not in keys else ids[keys.index(UNMATCHED)]
    else:
        ids, top = None, None  # neither form timm's own layer decay reads
    layers: tuple[Layer, ...] = ()
    if ids is not None:
        by_layer = name_regexes(ids, names, aliases)
        layers = tuple(Layer(by_layer[lid]) for lid in sorted(by_layer) if lid != top)
    root = listing.root
    family, extra, blocks = next(((f, g, b) for t, (f, g, b) in _STAGES.items() if t in types),
                                 (f"{type(root).__name__} (timm)", {}, None))
    groups = dict(name_regexes(["heads" if i in heads else "backbone" for i in range(len(names))], names, aliases))
    if stem and "stem" not in extra:
        groups["stem"] = name_regexes([i in stem for i in range(len(names))], names, aliases)[True]
    for group, regex in extra.items():
        pattern = re.compile(regex)
        if any(map(pattern.fullmatch, names)):
            groups[group] = regex
    if blocks and "blocks" not in groups:
        blocks = None
    return Card(family, groups, layers=layers or None, blocks=blocks)


register_card_reader(read_timm_card)
