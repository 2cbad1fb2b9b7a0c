"""Import cost: ``import tunespec`` in a fresh interpreter, beyond Python's own startup, and what
the first public attribute (``tunespec.plan``) costs on top, paired and alternating.

Bytecode is written and read as users have it (``PYTHONDONTWRITEBYTECODE`` is dropped for the
children) after one warm-up start that writes it. Each round starts ``python -c pass``,
``python -c "import tunespec"`` and ``python -c "import tunespec; tunespec.plan"`` in an order that
alternates between rounds, and the figures are the medians of the per-round differences, so load
from other processes on a shared machine mostly cancels.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from common import Context, row

FAMILY = "imports"
VARIANTS = {"python": "pass", "import": "import tunespec", "plan": "import tunespec; tunespec.plan"}
COUNT = "import sys, tunespec; print(sum(m == 'tunespec' or m.startswith('tunespec.') for m in sys.modules))"


def rows(ctx: Context) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def start(code: str) -> float:
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        return time.perf_counter() - began

    start(VARIANTS["plan"])  # writes the bytecode of every module the first plan loads
    seconds: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for r in range(max(10, 4 * ctx.repeats)):
        order = list(VARIANTS.items())
        for name, code in (order if r % 2 else order[::-1]):
            seconds[name].append(start(code))
    base = seconds["python"]
    beyond = {k: statistics.median(a - b for a, b in zip(v, base, strict=True)) for k, v in seconds.items()}
    loaded = subprocess.run([sys.executable, "-c", COUNT], check=True, env=env, capture_output=True,
                            text=True).stdout.strip()
    return [row(f"import tunespec, beyond python startup (paired; {loaded} tunespec module(s) loaded)",
                beyond["import"], "s", 0.05),
            row("  import tunespec; tunespec.plan (the first attribute loads planning), beyond startup",
                beyond["plan"], "s")]
