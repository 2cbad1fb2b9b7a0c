"""Planning cost of layer_decay: tunespec.plan on the 100,000-tensor torch mixture-of-experts model
of the planning family, with and without one numbered layer entry (a layer per expert of every
block: 781 x 64 layers), side by side; and on timm's ViT-B/16 with its card's layers, when timm
is installed."""

from __future__ import annotations

import statistics
import warnings

from common import Context, row, timed

FAMILY = "layer_decay"
TENSORS = 100_000


def _side_by_side(model, specs: dict[str, dict], repeats: int) -> dict[str, float]:
    """Median seconds of tunespec.plan per spec, the specs taking turns within each round."""
    import tunespec

    times: dict[str, list[float]] = {name: [] for name in specs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in specs.values():
            tunespec.plan(model, spec)  # warm
        for _ in range(repeats):
            for name, spec in specs.items():
                times[name].append(timed(lambda s=spec: tunespec.plan(model, s)))
    return {name: statistics.median(t) for name, t in times.items()}


def rows(ctx: Context) -> list[dict]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    from planning import torch_moe

    found = []
    model, _ = torch_moe(TENSORS)
    plain = {"freeze": [r"blocks\.0\..*"]}
    decayed = {**plain, "layer_decay": {"rate": 0.999, "layers": [r"blocks\.(\d+)\.experts\.(\d+)\..*"]}}
    t = _side_by_side(model, {"plain": plain, "decayed": decayed}, ctx.repeats)
    found += [row(f"plan, {TENSORS:,} tensors (torch)", t["plain"], "s"),
              row("  with layer_decay, one numbered entry (50,000 layers)", t["decayed"], "s")]
    try:
        import timm
    except ImportError:
        return found
    vit = timm.create_model("vit_base_patch16_224", pretrained=False)
    t = _side_by_side(vit, {"plain": {}, "decayed": {"layer_decay": {"rate": 0.75}}}, max(ctx.repeats, 5))
    found += [row("plan, timm ViT-B/16 (152 tensors)", t["plain"], "s"),
              row("  with layer_decay (its card's layers)", t["decayed"], "s")]
    return found
