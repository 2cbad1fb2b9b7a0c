"""Import cost: ``import tunespec`` in a fresh interpreter, beyond Python's own startup."""

from __future__ import annotations

import subprocess
import sys

from common import Context, median_time, row

FAMILY = "imports"


def rows(ctx: Context) -> list[dict]:
    def run(code: str) -> float:
        return median_time(lambda: subprocess.run([sys.executable, "-c", code], check=True), ctx.repeats)

    base, ours = run("pass"), run("import tunespec")
    return [row("import tunespec, beyond python startup", ours - base, "s", 0.15)]
