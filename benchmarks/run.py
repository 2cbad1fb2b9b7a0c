"""tunespec benchmarks: print a table of measured figures against their targets, plus JSON.

Covered so far: planning cost on synthetic mixture-of-experts models (10,000 and 100,000
parameter tensors, 100 rules, the framework's own listing included) in torch and MXNet Gluon,
and the import cost of tunespec. Each figure is the median of several repeats.

Run: python benchmarks/run.py [--json out.json] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_moe(tensors: int):
    from torch import nn

    experts = 64
    blocks = tensors // (2 * experts)
    return nn.ModuleDict({"blocks": nn.ModuleList(
        nn.ModuleDict({"experts": nn.ModuleList(nn.Linear(2, 2) for _ in range(experts))})
        for _ in range(blocks))}), blocks


def gluon_moe(tensors: int):
    from mxnet import gluon

    experts = 64
    blocks = tensors // (2 * experts)
    root = gluon.nn.HybridSequential()
    for _ in range(blocks):
        block = gluon.nn.HybridSequential()
        for _ in range(experts):
            block.add(gluon.nn.Dense(2, in_units=2))
        root.add(block)
    return root, blocks


def planning_cost(repeats: int) -> list[dict]:
    import tunespec

    rows = []
    targets = {10_000: 0.05, 100_000: 0.5}
    for framework, build in (("torch", torch_moe), ("mxnet", gluon_moe)):
        try:
            __import__(framework)
        except ImportError:
            continue
        for size, target in targets.items():
            model, blocks = build(size)
            if framework == "mxnet":  # Gluon names: root.0.3.weight
                spec = {"freeze": [r"0\..*"],
                        "rules": [{"match": rf"{b % blocks}\.{e % 64}\..*", "lr_mult": 0.5 + e / 100}
                                  for b, e in zip(range(99), range(99), strict=True)]}
            else:
                spec = {"freeze": [r"blocks\.0\..*"],
                        "rules": [{"match": rf"blocks\.{b % blocks}\.experts\.{e % 64}\..*",
                                   "lr_mult": 0.5 + e / 100} for b, e in zip(range(99), range(99), strict=True)]}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seconds = median_time(lambda m=model, s=spec: tunespec.plan(m, s), repeats)
            rows.append({"figure": f"plan, {size:,} tensors, 100 rules ({framework})", "value": seconds,
                         "unit": "s", "target": target, "ok": seconds <= target})
    return rows


def import_cost(repeats: int) -> list[dict]:
    def run(code: str) -> float:
        return median_time(lambda: subprocess.run([sys.executable, "-c", code], check=True), repeats)

    base, ours = run("pass"), run("import tunespec")
    return [{"figure": "import tunespec, beyond python startup", "value": ours - base, "unit": "s",
             "target": 0.15, "ok": ours - base <= 0.15}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = import_cost(args.repeats) + planning_cost(args.repeats)
    width = max(len(r["figure"]) for r in rows)
    print(f"{'figure':{width}}  {'value':>9}  {'target':>8}  ok")
    for r in rows:
        print(f"{r['figure']:{width}}  {r['value']:>8.3f}{r['unit']}  {r['target']:>7.3f}{r['unit']}  "
              f"{'yes' if r['ok'] else 'NO'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
