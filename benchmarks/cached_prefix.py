"""tunespec.cache_frozen: a step of epochs 2..N (the head on cached features) against the uncached
frozen step, at 224 px (where layer4 is about a fifth of the forward pass) and at 112 px."""

from __future__ import annotations

import statistics

from common import LARGE, SIZE, SPEC_FC, SPEC_L4, Context, ratio, rounds, row, tag
from steps import adapter

FAMILY = "cached_prefix"
FRAMEWORKS = ("torch", "mxnet")


def rows(ctx: Context) -> list[dict]:
    """Both sizes run on the same model per trained part, 224 px with fewer rounds (longer steps)."""
    import tunespec

    a = adapter(ctx)
    n = ctx.step_rounds
    x, y = a.batch(SIZE)
    xl, yl = a.batch(LARGE)
    small: dict = {}
    large: dict = {}
    for part, spec, split in (("l4", SPEC_L4, "layer4"), ("fc", SPEC_FC, "fc")):
        model, plan, opt = a.tunespec_model(spec)
        cut = tunespec.cache_frozen(model, plan, split)
        small[part] = a.step(model, opt, x, y)
        small[f"{part}_head"] = a.step(cut.head, opt, cut.features(x), y)
        large[part] = a.step(model, opt, xl, yl)
        large[f"{part}_head"] = a.step(cut.head, opt, cut.features(xl), yl)
        if part == "l4":
            large["fwd"] = a.forward(model, xl)
            large["prefix"] = a.forward(cut.features, xl)
    t = rounds(small, n)
    tc = rounds(large, max(2, n - 4))
    fw = a.name
    found = [row(f"{fw}: layer4+fc share of the forward pass at {LARGE} px",
                 1 - statistics.median(tc["prefix"]) / statistics.median(tc["fwd"]), "x")]
    for part, label, target in (("l4", "layer4+fc", 2.0), ("fc", "fc only", 10.0)):
        found += [row(f"{fw}: cache_frozen, epochs 2..N speed-up ({label}, {LARGE} px)",
                      ratio(tc[part], tc[f"{part}_head"]), "x", target, ">="),
                  row(f"{fw}: cache_frozen, epochs 2..N speed-up ({label}, {SIZE} px)",
                      ratio(t[part], t[f"{part}_head"]), "x")]
    return tag(found, fw, a.device)
