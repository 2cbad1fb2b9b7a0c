"""What every benchmark family shares: timing, rows, the worker protocol and the shared specs.

A family is one module in this directory, added to the table by one line in ``run.py``'s
``FAMILIES``. It exposes:

- ``FAMILY = "name"``: the name ``run.py --only`` selects it by;
- ``def rows(ctx: Context) -> list[dict]``: its figures, each made by ``row()``;
- optionally ``FRAMEWORKS = ("torch", "mxnet")``: then ``rows`` runs once per framework listed,
  each time in a fresh process (``run.py --worker FRAMEWORK --family NAME``, one JSON line back),
  with ``ctx.framework`` set to that framework. Without it, ``rows`` runs in the driver's process
  with ``ctx.framework`` None and may start processes of its own through ``in_subprocess``.

Fresh processes matter: MXNet's oneDNN dislikes many nets in one process, and a peak-memory figure
needs a process that has held nothing else. A family that needs a worker of another kind (the
peak-memory one does) adds a hidden flag to ``run.py`` and calls ``in_subprocess`` with it.

Ratios are measured side by side with ``rounds`` and reduced with ``ratio`` (the median of the
per-round ratios), so load from other processes on a shared machine mostly cancels; absolute
times are medians over the same rounds. A row's ``framework`` and ``device`` keys (set by
per-framework families) feed the table's header line.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RUNNER = Path(__file__).with_name("run.py")

# ResNet-50 steps: batch, image size, the larger size (where layer4 is ~1/5 of the forward), lr, wd
BATCH, SIZE, LARGE, LR, WD = 4, 112, 224, 0.01, 1e-4
SPEC_FULL = {"wd_mult": {"@bias": 0, "@norm": 0}}
SPEC_L4 = {"freeze": [".*"], "train": [r"layer4\..*", r"fc\..*"], "lr_mult": {r"fc\..*": 10},
           "wd_mult": {"@bias": 0, "@norm": 0}}
SPEC_FC = {"freeze": [".*"], "train": [r"fc\..*"], "lr_mult": {r"fc\..*": 10}, "wd_mult": {"@bias": 0}}


@dataclass(frozen=True)
class Context:
    """What a family's ``rows`` is asked for: a quick smoke run or the full one, repeats of the
    planning and import timings, compute threads per framework, and (in a per-framework worker)
    the framework that worker is for."""

    quick: bool = False
    repeats: int = 5
    threads: int = 1
    framework: str | None = None

    @property
    def step_rounds(self) -> int:
        """Timed rounds of a training-step comparison (fewer in a quick run)."""
        return 3 if self.quick else 10

    def worker_args(self) -> list[str]:
        """The flags that rebuild this context in a child process."""
        return ["--threads", str(self.threads), "--repeats", str(self.repeats)] + (
            ["--quick"] if self.quick else [])


def timed(fn) -> float:
    """Seconds one call takes. As in timeit, garbage left by earlier calls is collected before the
    clock starts, and the result is freed after it stops (a plan is kept, not freed, by its user)."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def median_time(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def rounds(variants: dict, n: int, warmup: int = 2, setups: dict | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant, one call of each per round, order alternating per round.
    With ``setups``, each variant's setup and one untimed call come before its timed call."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + n):
        order = list(variants.items())
        for name, fn in (order if r % 2 else order[::-1]):
            if setups:
                setups[name]()
                fn()
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def row(figure: str, value: float, unit: str, target: float | None = None, cmp: str = "<=",
        **extra: object) -> dict:
    """One line of the table; ``ok`` is None for a figure without a target."""
    ok = None if target is None else (value <= target if cmp == "<=" else value >= target)
    return {"figure": figure, "value": value, "unit": unit, "target": target, "cmp": cmp, "ok": ok, **extra}


def fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value:.3f}{unit}"


def load_average() -> float | None:
    """The 1-minute load average now (None off Linux): rows carry the load they were measured at."""
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:
        return None


def in_subprocess(args: list[str], threads: int) -> list[dict]:
    """Run ``run.py`` with ``args`` in a fresh process and return the rows it printed as its last
    line of output (JSON). A failing child's stderr is passed on, since its traceback is the
    only account of what went wrong."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.stderr.write(out.stderr)
        out.check_returncode()
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_framework(family, ctx: Context) -> list[dict]:
    """A per-framework family's rows: one fresh worker process per framework it lists."""
    found = []
    for fw in family.FRAMEWORKS:
        found += in_subprocess(["--worker", fw, "--family", family.FAMILY, *ctx.worker_args()], ctx.threads)
    return found


def tag(rows: list[dict], framework: str, device: str) -> list[dict]:
    """Name the framework and device on each row (the header line lists the devices)."""
    for r in rows:
        r.update(framework=framework, device=device)
    return rows
