"""tunespec benchmarks: print a table of measured figures against their targets, plus JSON.

Every ratio is measured side by side: the variants it compares run in turns, one step each per
round, and the figure is the median over rounds of the per-round ratio, so load from other
processes on a shared machine mostly cancels. Absolute times are medians over the same rounds.

The figures come in families, one module each (``common.py`` says what a family module provides):

- imports.py: import cost of tunespec;
- planning.py: planning cost on synthetic mixture-of-experts models (10,000 and 100,000 tensors,
  100 rules, the framework's own listing included), with a plain re.fullmatch loop as a gauge;
- steps.py: overhead of tunespec's step against the same step written by hand, and the payoff of
  freezing on ResNet-50 (layer4+fc and fc-only against full fine-tuning and the lower bound);
- cached_prefix.py: tunespec.cache_frozen, epochs 2..N against the uncached frozen step;
- memory.py: gradient and Adam-state bytes held for frozen parameters; peak process memory of
  full versus layer4+fc fine-tuning, each in a fresh process;
- detector.py: one GluonCV detector (SSD, MobileNet 0.25): overhead, heads-only against full;
- fsdp.py: per-rank gradient + optimizer-state bytes under torch FSDP2 (tunespec.shard), two gloo
  ranks, against unsharded DDP;
- gluon_optimizer.py: the default Gluon optimizers (torch's rules, fused) against MXNet's native
  fused update, per optimizer (SGD with momentum, Adam, AdamW);
- lrs.py: one lr-function step at step 10^6 against step 10; lr-plot at its 10^6-step cap.
- checkpoints.py: save_checkpoint and resume against raw safetensors, and their growth in tensors.

Each framework runs in its own fresh process (MXNet's oneDNN dislikes many nets in one process),
with one compute thread by default (--threads). torch uses CUDA when available; PyPI's MXNet
1.9.1 is CPU-only.

Run: python benchmarks/run.py [--quick] [--json out.json] [--repeats N] [--threads N]
                              [--only FAMILY[,FAMILY]]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import cached_prefix
import checkpoints
import detector
import fsdp
import gluon_optimizer
import imports
import layer_decay
import lrs
import memory
import planning
import steps
from common import BATCH, LARGE, SIZE, Context, fmt, per_framework

FAMILIES = [imports, planning, layer_decay, steps, cached_prefix, memory, detector, fsdp,
            gluon_optimizer, lrs, checkpoints]  # the table's order
BY_NAME = {family.FAMILY: family for family in FAMILIES}


def family_rows(family, ctx: Context) -> list[dict]:
    """A family's rows: per-framework families in one fresh worker per framework."""
    return per_framework(family, ctx) if hasattr(family, "FRAMEWORKS") else family.rows(ctx)


def chosen(only: str | None, parser: argparse.ArgumentParser) -> list:
    if only is None:
        return FAMILIES
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown or not names:
        parser.error(f"--only {only!r}: unknown family {', '.join(unknown) or '(none given)'}; "
                     f"choose from {','.join(BY_NAME)}")
    return [family for family in FAMILIES if family.FAMILY in names]


def print_table(rows: list[dict], devices: list[str], threads: int, load: list[list[str]],
                started: float) -> None:
    start_load, end_load = load
    width = max([len("figure")] + [len(r["figure"]) for r in rows])
    named = "; ".join(devices) or "none (no framework worker ran)"
    print(f"devices: {named}. ResNet-50, batch {BATCH}, {SIZE} px ({LARGE} px where "
          f"noted), {threads} thread(s) per framework; load average {' '.join(start_load)} at start, "
          f"{' '.join(end_load)} at end; {time.time() - started:.0f} s in all")
    print(f"{'figure':{width}}  {'value':>12}  {'target':>12}  ok    load")
    for r in rows:
        target = "" if r["target"] is None else f"{r['cmp']} {fmt(r['target'], r['unit'])}"
        ok = "" if r["ok"] is None else "yes" if r["ok"] else "MISS"
        load = "" if r.get("load") is None else f"{r['load']:.1f}"  # the 1-minute load when measured
        print(f"{r['figure']:{width}}  {fmt(r['value'], r['unit']):>12}  {target:>12}  {ok:4}  {load:>5}")


def read_load() -> list[str]:
    return open("/proc/loadavg").read().split()[:3] if sys.platform == "linux" else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the planning and import timings")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer rounds and repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="compute threads per framework (default 1: on shared cores, OpenMP threads "
                             "spin-waiting for each other make multi-thread timings follow others' load)")
    parser.add_argument("--only", metavar="FAMILY[,FAMILY]",
                        help=f"run only these figure families, of {','.join(BY_NAME)}")
    parser.add_argument("--worker", choices=("torch", "mxnet"), help=argparse.SUPPRESS)
    parser.add_argument("--family", choices=sorted(BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--peak", nargs=2, metavar=("FRAMEWORK", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.worker:  # a child process: print its rows as one JSON line
        if not args.family:
            parser.error("--worker needs --family")
        ctx = Context(args.quick, args.repeats, args.threads, args.worker)
        print(json.dumps(BY_NAME[args.family].rows(ctx)))
        return 0
    if args.peak:
        print(json.dumps(memory.peak_worker(*args.peak, threads=args.threads)))
        return 0
    families = chosen(args.only, parser)
    ctx = Context(quick=args.quick, repeats=2 if args.quick else args.repeats, threads=args.threads)
    started, start_load = time.time(), read_load()
    rows = [r for family in families for r in family_rows(family, ctx)]
    devices = sorted({r["device"] for r in rows if "device" in r})
    load = [start_load, read_load()]
    print_table(rows, devices, args.threads, load, started)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"devices": devices, "threads": args.threads, "load_average": load, "rows": rows},
                      fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
