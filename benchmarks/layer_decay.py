"""Cost of layer_decay (issue 22): planning with and without it on the 100,000-tensor torch
mixture-of-experts model of the planning family (one numbered layer entry: a layer per expert of
every block, 781 x 64 layers), and on timm's ViT-B/16 with its card's layers; building the
optimizer with decay on ViT-B against timm's own ``create_optimizer_v2(..., layer_decay=...)``.

Every ratio is the median of per-round ratios, the two variants alternating within each round."""

from __future__ import annotations

import time
import warnings

from common import Context, load_average, ratio, rounds, row

FAMILY = "layer_decay"
TENSORS = 100_000
NUMBERED = r"blocks\.(\d+)\.experts\.(\d+)\..*"


def _plans(model, specs: dict[str, dict], n: int) -> dict[str, list[float]]:
    import tunespec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rounds({name: (lambda s=spec: tunespec.plan(model, s)) for name, spec in specs.items()}, n)


def rows(ctx: Context) -> list[dict]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    from planning import torch_moe

    found = []
    n = 3 if ctx.quick else max(ctx.repeats, 5)
    model, _ = torch_moe(TENSORS)
    plain = {"freeze": [r"blocks\.0\..*"]}
    decayed = {**plain, "layer_decay": {"rate": 0.999, "layers": [NUMBERED]}}
    load = load_average()
    t = _plans(model, {"plain": plain, "decayed": decayed}, n)
    found += [row(f"plan with layer_decay / without, {TENSORS:,} tensors (torch, 50,000 layers)",
                  ratio(t["decayed"], t["plain"]), "x", 1.3, load=load),
              row("  plan without layer_decay (the bound)", sorted(t["plain"])[len(t["plain"]) // 2], "s"),
              row("  plan with layer_decay", sorted(t["decayed"])[len(t["decayed"]) // 2], "s")]
    del model
    try:
        import timm
        from timm.optim import create_optimizer_v2
    except ImportError:
        return found
    import tunespec

    vit = timm.create_model("vit_base_patch16_224", pretrained=False)
    load = load_average()
    t = _plans(vit, {"plain": {}, "decayed": {"layer_decay": {"rate": 0.75}}}, max(n, 7))
    found += [row("plan with layer_decay / without, timm ViT-B/16 (its card's layers)",
                  ratio(t["decayed"], t["plain"]), "x", 1.3, load=load)]
    spec = {"layer_decay": {"rate": 0.75}, "wd_mult": {"@1d": 0}}

    def ours():  # from scratch: plan, apply, groups, optimizer
        return tunespec.optimizer(vit, spec, "adamw", lr=1e-3, weight_decay=0.05)

    def theirs():
        return create_optimizer_v2(vit, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)

    def reset():  # untimed: another spec applied, so the next ours() plans and applies again
        tunespec.apply(vit, {})

    load = load_average()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = {"tunespec": [], "timm": []}
        for r in range(2 + max(n, 7)):  # two warm-up rounds; the order alternates per round
            for name, fn in ((("tunespec", ours), ("timm", theirs))[:: 1 if r % 2 else -1]):
                reset()
                start = time.perf_counter()
                fn()
                if r >= 2:
                    t[name].append(time.perf_counter() - start)
    found += [row("tunespec.optimizer with layer_decay / timm create_optimizer_v2, ViT-B/16",
                  ratio(t["tunespec"], t["timm"]), "x", 1.0, load=load),
              row("  timm create_optimizer_v2(..., layer_decay=0.75) (the peer)",
                  sorted(t["timm"])[len(t["timm"]) // 2], "s")]
    return found
