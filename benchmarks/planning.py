"""Planning cost: tunespec.plan on synthetic mixture-of-experts models (10,000 and 100,000 tensors,
100 rules, the framework's own listing included), with a plain re.fullmatch loop as a speed gauge."""

from __future__ import annotations

import statistics
import warnings

from common import Context, load_average, row, timed

FAMILY = "planning"
EXPERTS = 64


def torch_moe(tensors: int):
    from torch import nn

    blocks = tensors // (2 * EXPERTS)
    return nn.ModuleDict({"blocks": nn.ModuleList(
        nn.ModuleDict({"experts": nn.ModuleList(nn.Linear(2, 2) for _ in range(EXPERTS))})
        for _ in range(blocks))}), blocks


def gluon_moe(tensors: int):
    from mxnet import gluon

    blocks = tensors // (2 * EXPERTS)
    root = gluon.nn.HybridSequential()
    for _ in range(blocks):
        block = gluon.nn.HybridSequential()
        for _ in range(EXPERTS):
            block.add(gluon.nn.Dense(2, in_units=2))
        root.add(block)
    return root, blocks


def moe_spec(framework: str, blocks: int) -> dict:
    """One frozen block and 99 lr rules that each match one expert."""
    if framework == "mxnet":  # Gluon names: root.0.3.weight
        return {"freeze": [r"0\..*"],
                "rules": [{"match": rf"{b % blocks}\.{e % EXPERTS}\..*", "lr_mult": 0.5 + e / 100}
                          for b, e in zip(range(99), range(99), strict=True)]}
    return {"freeze": [r"blocks\.0\..*"],
            "rules": [{"match": rf"blocks\.{b % blocks}\.experts\.{e % EXPERTS}\..*",
                       "lr_mult": 0.5 + e / 100}
                      for b, e in zip(range(99), range(99), strict=True)]}


def rows(ctx: Context) -> list[dict]:
    """tunespec.plan on synthetic MoE models, each repeat side by side with the naive matcher the
    issue calibrates its targets on (re.fullmatch of every rule on every name: 0.13 s for 10,000
    names and 1.5 s for 100,000 there), so a loaded machine shows in both. Medians of warm calls:
    two untimed calls come first (the first, cold one is in the JSON as first_call_s)."""
    import re

    import tunespec

    found = []
    targets = {10_000: (0.04, 0.13), 100_000: (0.4, 1.5)}  # target (issue 22), the naive-loop time
    for framework, build in (("torch", torch_moe), ("mxnet", gluon_moe)):
        try:
            __import__(framework)
        except ImportError:
            continue
        for size, (target, reference) in targets.items():
            model, blocks = build(size)
            spec = moe_spec(framework, blocks)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                first = timed(lambda m=model, s=spec: tunespec.plan(m, s))  # cold: allocator arenas
                timed(lambda m=model, s=spec: tunespec.plan(m, s))
                names = [d.name for d in tunespec.plan(model, spec).decisions]
                regexes = [re.compile(r) for r in spec["freeze"] + [r["match"] for r in spec["rules"]]]

                def naive(names=names, regexes=regexes) -> None:
                    for regex in regexes:
                        for name in names:
                            regex.fullmatch(name)

                pairs = [(timed(lambda m=model, s=spec: tunespec.plan(m, s)), timed(naive))
                         for _ in range(ctx.repeats)]
            plan_s, naive_s = statistics.median(p for p, _ in pairs), statistics.median(n for _, n in pairs)
            found += [row(f"plan, {size:,} tensors, 100 rules ({framework})", plan_s, "s", target,
                          first_call_s=first, load=load_average()),
                      row(f"  gauge: naive fullmatch loop, same names (issue: {reference} s)", naive_s, "s"),
                      row("  plan at the issue's machine speed (plan x issue gauge / this gauge)",
                          plan_s * reference / naive_s, "s", target)]
    return found
