"""Learning-rate functions: cost of one scheduler step far into a run against early in it, and
``tunespec lr-plot`` at its step cap (time and peak memory), framework-free.

- the lr factor a stage runner installs (onecycle schedule x a per-step ramp, the costliest
  kind), called for 1,000 consecutive steps from step 10 and from step 10^6, alternating: every
  lr function is O(1) per step, so the ratio is about 1 (target 1.1);
- ``lr-plot`` of 10^6 steps (1,000 epochs x 1,000 steps, onecycle, a stage with a per-step ramp,
  20 tensors in 3 groups): table computed and printed, target 2 s; its peak Python memory
  (tracemalloc), which grows with groups x shown points, not with steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import tracemalloc
from pathlib import Path

from common import Context, median_time, ratio, rounds, row

FAMILY = "lrs"
BLOCK = 1000  # consecutive steps per timed call
RECIPE = {"preset": "heads", "optimizer": {"name": "sgd", "lr": 0.1},
          "schedule": {"type": "onecycle", "total_steps": 1000, "unit": "epoch"},
          "stages": [{"at_epoch": 1, "preset": "all", "ramp": {"start": 1e-6, "growth": 1.0001, "per": "step"}}]}


def _factor(start: int):
    """The group factor a runner installs for a per-step ramp under onecycle, fresh, first asked
    at ``start`` (as after a resume), then timed over BLOCK consecutive steps."""
    from tunespec.lifecycle import lrs
    from tunespec.recipe.ramps import Ramp
    from tunespec.recipe.schedule import LRSchedule

    # the ramp started 10 steps before, in both variants: both are in its growing phase
    # onecycle over 2 x 10^6 steps (2,000 epochs of 1,000), so step 10^6 is mid-run
    schedule = LRSchedule.from_dict({**RECIPE["schedule"], "total_steps": 2000}).in_steps(1000)
    book = lrs.LRBook(schedule, ramp_from={1: max(start - 10, 0)})
    ramp = Ramp(1e-6, 1.0001, per="step")
    ratio_at = lrs.step_ramp(lambda: book, 1, ramp)

    def factor(t: int) -> float:
        return book.factor(t) * ratio_at(t)

    factor(start)
    position = [start]

    def block() -> None:
        t = position[0]
        for s in range(t, t + BLOCK):
            factor(s)
        position[0] = t + BLOCK

    return block


def _lr_plot() -> None:
    from tunespec.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.json"
        path.write_text(json.dumps(RECIPE))
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["lr-plot", str(path), "--epochs", "1000", "--steps-per-epoch", "1000"]) == 0


def _model_timeline_peak() -> float:
    """Peak MiB of a 10^6-step timeline of 20 tensors in 3 lr groups, table included."""
    from tunespec.lifecycle.timeline import lr_timeline

    names = [f"block{i // 7}.t{i}" for i in range(20)]
    trainable = [{n: 1.0 for n in names[:7]}, {n: 1.0 + (i >= 14) for i, n in enumerate(names)}]
    tracemalloc.start()
    try:
        lr_timeline(RECIPE, 1000, 1000, trainable).table()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def rows(ctx: Context) -> list[dict]:
    n = 5 if ctx.quick else 21
    times = rounds({"early": _factor(10), "late": _factor(10**6)}, n)
    early = sorted(times["early"])[len(times["early"]) // 2] / BLOCK
    late_ratio = ratio(times["late"], times["early"])
    plot = median_time(_lr_plot, max(3, ctx.repeats))
    return [
        row("lr factor (onecycle x per-step ramp), one step at 10^6 / at 10", late_ratio, "x", 1.1),
        row("lr factor, one step at step 10", early * 1e6, "us"),
        row("lr-plot, 10^6 steps (table)", plot, "s", 2.0),
        row("lr-plot timeline, 10^6 steps x 20 tensors, peak memory", _model_timeline_peak(), "MiB", 50.0),
    ]
