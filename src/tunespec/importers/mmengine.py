"""MMEngine's ``paramwise_cfg`` (``DefaultOptimWrapperConstructor``) as a tunespec recipe.

MMEngine decides each parameter's lr and weight decay in a fixed order: the first ``custom_keys``
key (longest first, then alphabetical) that is a substring of ``'{module}.{name}'`` decides both
and nothing else applies; otherwise ``bias_lr_mult`` scales the lr of biases outside norm layers,
and the weight decay is the first that applies of ``norm_decay_mult`` (norm layers), then
``bias_decay_mult`` (biases), ``dwconv_decay_mult`` (depthwise convolutions), ``flat_decay_mult``
(1-d tensors). tunespec's rules are ordered with the last match winning, so the recipe lists the
same rules in the reverse order of precedence, and custom keys last, shortest first.

What is not reproduced is refused, naming it: ``bypass_duplicate: true``, ``dcn_offset_lr_mult``,
custom-key settings other than ``lr_mult``/``decay_mult`` (MMEngine copies them into the param
group as they are), and decay multipliers without a base weight decay. Differences in layer
classification are listed in docs/peers.md.
"""

from __future__ import annotations

import re
from typing import Any, Mapping
import difflib

from tunespec.recipe import validate as V
from tunespec.errors import SpecError
from tunespec.recipe.recipe import load_recipe
from tunespec.recipe.read import read_recipe

KEYS = ("custom_keys", "bias_lr_mult", "bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult",
        "flat_decay_mult", "bypass_duplicate", "dcn_offset_lr_mult")
CUSTOM_KEYS = ("lr_mult", "decay_mult")
# MMEngine's norm layers: _BatchNorm, _InstanceNorm, GroupNorm, LayerNorm (no RMSNorm).
NORM_KINDS = ("batch_norm", "instance_norm", "group_norm", "layer_norm")
NORM_GROUP, NORM_BIAS_GROUP = "mmengine_norm", "mmengine_norm_bias"
# MMEngine tests the tensor's own name: 'bias', never 'q_bias' (an alternation rather than an
# optional group keeps the regex on the fast matcher)
BIAS = r"bias|.*\.bias"
OPTIMIZERS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}
WHERE = "paramwise_cfg"


def from_mmengine(paramwise_cfg: Mapping[str, Any] | None, base_lr: float | None = None,
                  base_wd: float | None = None, optimizer: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A recipe whose per-parameter lr and weight decay equal MMEngine's for ``paramwise_cfg``.

    ``base_lr``/``base_wd`` are the optimizer's ``lr`` and ``weight_decay`` (MMEngine reads them
    from the optimizer config; pass that config as ``optimizer`` instead, e.g.
    ``dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4)``, to get an optimizer section
    too). Multipliers do not depend on them, but decay multipliers need a base weight decay.
    The recipe is not strict: like MMEngine's, a rule for a layer kind the model lacks (no
    depthwise convolutions) is a warning when planned, not an error.
    """
    section = None
    if optimizer is not None:
        section, base_lr, base_wd = _optimizer(optimizer, base_lr, base_wd)
    cfg = _checked(paramwise_cfg, base_wd)
    rules: list[dict[str, Any]] = []
    groups: dict[str, Any] = {}
    if cfg.get("bias_lr_mult") is not None:
        rules.append(_lr({"match": BIAS}, cfg["bias_lr_mult"]))
        groups[NORM_BIAS_GROUP] = [{"layer": k, "match": BIAS} for k in NORM_KINDS]
        rules.append({"match": f"@{NORM_BIAS_GROUP}", "lr_mult": 1.0})  # norm biases keep the base lr
    if base_wd is not None:
        for key, match in (("flat_decay_mult", "@1d"), ("dwconv_decay_mult", "@layer:depthwise_conv"),
                           ("bias_decay_mult", BIAS), ("norm_decay_mult", f"@{NORM_GROUP}")):
            if cfg.get(key) is not None:
                rules.append({"match": match, "wd_mult": cfg[key]})
        if cfg.get("norm_decay_mult") is not None:
            groups[NORM_GROUP] = [f"@layer:{k}" for k in NORM_KINDS]
    custom = cfg.get("custom_keys") or {}
    for key in reversed(sorted(sorted(custom), key=len, reverse=True)):  # MMEngine's order, reversed
        rule = _lr({"match": substring(key)}, custom[key].get("lr_mult", 1.0))
        if base_wd is not None:
            rule["wd_mult"] = custom[key].get("decay_mult", 1.0)
        rules.append(rule)
    recipe: dict[str, Any] = {"rules": rules, "strict": False}
    if groups:
        recipe["groups"] = groups
    if section is not None:
        recipe["optimizer"] = section
    load_recipe(recipe)  # the recipe is valid as written (a bug here must not reach a model)
    return recipe


def substring(key: str) -> str:
    """A regex fullmatching the canonical names MMEngine's custom key ``key`` is a substring of.

    MMEngine tests ``key in f'{module}.{name}'``, which for a top-level tensor is ``'.' + name``:
    a key starting with '.' also matches top-level names that start with the rest of it.
    """
    pattern = f".*{re.escape(key)}.*"
    rest = key[1:]
    if key.startswith(".") and "." not in rest:
        pattern = f"(?:{pattern})|(?:{re.escape(rest)}[^.]*)"
    return pattern


def _lr(rule: dict[str, Any], mult: float) -> dict[str, Any]:
    rule["lr_mult"] = mult
    if mult == 0:  # MMEngine's lr 0 still trains (gradients, BatchNorm statistics): keep that
        rule["trainable"] = True
    return rule


def _checked(cfg: Any, base_wd: float | None) -> dict[str, Any]:
    """paramwise_cfg with every value checked, or a SpecError naming what cannot be reproduced."""
    if cfg is None:
        return {}
    cfg = dict(V.mapping(cfg, WHERE, "dict(custom_keys={'backbone': dict(lr_mult=0.1)})"))
    V.keys(cfg, WHERE, KEYS, "paramwise_cfg key")
    if cfg.get("bypass_duplicate"):
        raise SpecError(f"{WHERE}.bypass_duplicate: not reproduced (MMEngine keeps a shared tensor's "
                        f"first module's settings; tunespec decides a tied tensor once from all its "
                        f"names); remove it and give the shared tensor its own rule")
    if cfg.get("dcn_offset_lr_mult") is not None:
        raise SpecError(f"{WHERE}.dcn_offset_lr_mult: not reproduced (tunespec has no deformable-"
                        f"convolution layer kind); give the offset convolutions a custom key instead, "
                        f"e.g. custom_keys={{'conv_offset': dict(lr_mult=...)}}")
    out: dict[str, Any] = {}
    for key in KEYS[1:6]:
        if cfg.get(key) is not None:
            out[key] = V.number(cfg[key], f"{WHERE}.{key}", minimum=0.0, maximum=V.MAX_FACTOR)
            if key.endswith("decay_mult") and base_wd is None:
                raise SpecError(f"{WHERE}.{key}: a decay multiplier needs the base weight decay; pass "
                                f"base_wd (the optimizer's weight_decay)")
    custom = cfg.get("custom_keys")
    if custom is not None:
        custom = V.mapping(custom, f"{WHERE}.custom_keys", "{'backbone': dict(lr_mult=0.1)}")
        out["custom_keys"] = {}
        for key, value in custom.items():
            where = f"{WHERE}.custom_keys[{V.excerpt(key)}]"
            V.string(key, where, max_length=200)
            value = V.mapping(value, where, "dict(lr_mult=0.1, decay_mult=0)")
            for k in value:
                if k not in CUSTOM_KEYS:
                    raise SpecError(f"{where}.{V.excerpt(k)}: not reproduced (MMEngine copies it into "
                                    f"the param group as it is); tunespec imports lr_mult and decay_mult"
                                    f"{V.suggestion(k, CUSTOM_KEYS)}")
            if "decay_mult" in value and base_wd is None:
                raise SpecError(f"{where}.decay_mult: needs the base weight decay; pass base_wd")
            out["custom_keys"][key] = {k: V.number(v, f"{where}.{k}", minimum=0.0, maximum=V.MAX_FACTOR)
                                       for k, v in value.items()}
    return out


def _optimizer(cfg: Any, base_lr: Any, base_wd: Any) -> tuple[dict[str, Any], float, float | None]:
    """An MMEngine optimizer config as a recipe's optimizer section, with its lr and weight decay."""
    cfg = dict(V.mapping(cfg, "optimizer", "dict(type='SGD', lr=0.01, momentum=0.9)"))
    kind = cfg.pop("type", None)
    if kind not in OPTIMIZERS:
        raise SpecError(f"optimizer.type: {V.excerpt(kind)} is not imported; tunespec imports "
                        f"{', '.join(OPTIMIZERS)}{V.suggestion(kind, OPTIMIZERS)}")
    for name, arg, given in (("lr", "base_lr", base_lr), ("weight_decay", "base_wd", base_wd)):
        if given is not None and name in cfg and cfg[name] != given:
            raise SpecError(f"from_mmengine: {arg}={given!r} and optimizer.{name}={cfg[name]!r} "
                            f"disagree; give one")
    lr = cfg.get("lr", base_lr)
    wd = cfg.get("weight_decay", base_wd)
    if wd is None and kind == "AdamW":
        raise SpecError("optimizer: AdamW without weight_decay decays by the optimizer class's own "
                        "default, which a recipe does not assume; give weight_decay")
    section = {"name": OPTIMIZERS[kind], **cfg}
    if lr is not None:
        section["lr"] = lr
    if wd is not None:
        section["weight_decay"] = wd
    return section, lr, wd


# --- whole configs (the command line: tunespec convert --from mmengine CONFIG) ---------------
WRAPPER_KEYS = ("type", "optimizer", "paramwise_cfg", "constructor")
WRAPPER_TYPES = ("OptimWrapper", "AmpOptimWrapper")  # the same per-parameter lr and weight decay


def from_mmengine_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe from a whole MMEngine config: its ``optim_wrapper`` (optimizer + paramwise_cfg).

    Anything in ``optim_wrapper`` that changes training beyond per-parameter lr and weight decay
    (``clip_grad``, ``accumulative_counts``, another constructor) is refused, naming it.
    """
    config = V.mapping(config, "config", "{optim_wrapper: {optimizer: {...}, paramwise_cfg: {...}}}")
    if "optim_wrapper" not in config:
        close = difflib.get_close_matches("optim_wrapper", [str(k) for k in config], n=1, cutoff=0.7)
        hint = f"; is {close[0]!r} a misspelling of it?" if close else ""
        raise SpecError(f"config: no optim_wrapper (the MMEngine section with optimizer and "
                        f"paramwise_cfg){hint}")
    wrapper = V.mapping(config["optim_wrapper"], "optim_wrapper", "{optimizer: {type: SGD, lr: 0.01}}")
    for key in wrapper:
        if key not in WRAPPER_KEYS:
            raise SpecError(f"optim_wrapper.{V.excerpt(key)}: not converted (a recipe sets per-parameter "
                            f"lr and weight decay only); remove it to convert the rest")
    if wrapper.get("type", "OptimWrapper") not in WRAPPER_TYPES:
        raise SpecError(f"optim_wrapper.type: {V.excerpt(wrapper['type'])} is not converted; "
                        f"{', '.join(WRAPPER_TYPES)} are")
    if wrapper.get("constructor", "DefaultOptimWrapperConstructor") != "DefaultOptimWrapperConstructor":
        raise SpecError(f"optim_wrapper.constructor: {V.excerpt(wrapper['constructor'])} is not converted; "
                        f"only DefaultOptimWrapperConstructor's paramwise_cfg is")
    if "optimizer" not in wrapper:
        raise SpecError("optim_wrapper: no optimizer; MMEngine reads lr and weight_decay from it")
    return from_mmengine(wrapper.get("paramwise_cfg"), optimizer=wrapper["optimizer"])


def read_config(path: str, allow_exec: bool = False) -> Mapping[str, Any]:
    """An MMEngine config file as data: .json/.yaml/.yml are read as untrusted data; a .py config
    is Python that runs when read, so only with ``allow_exec`` and through mmengine's Config."""
    if not str(path).endswith(".py"):
        return read_recipe(path)
    if not allow_exec:
        raise SpecError(f"{V.excerpt(str(path))}: a Python config runs its code when read; pass "
                        f"--exec-config to allow that (trusted files only), or give it as .json/.yaml "
                        f"(mmengine: Config.fromfile(path).dump('config.yaml'))")
    try:
        from mmengine.config import Config
    except ImportError:
        raise SpecError("reading a Python config needs mmengine: pip install mmengine==0.10.7, or give "
                        "the config as .json/.yaml") from None
    try:
        return Config.fromfile(path).to_dict()
    except Exception as exc:  # mmengine reports a bad config in many exception types
        raise SpecError(f"{V.excerpt(str(path))}: mmengine cannot read it: {V.excerpt(str(exc))}") from None
