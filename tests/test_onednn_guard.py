"""tunespec's frozen-tensor checksums are exact under MXNet 1.9.1's oneDNN read race.

After an inference-mode forward, oneDNN rewrites conv weights into its own layout in place,
asynchronously; a host read (asnumpy) in that window can return permuted bytes although the
weight itself is intact. tunespec waits for pending engine work before every read. Whether the
race hits depends on thread timing, so one process proves nothing: this runs many fresh ones.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from frameworks import needs

needs("mxnet")

PROBE = Path(__file__).with_name("onednn_probe.py")
RUNS = 16


def trial(mode: str) -> str:
    out = subprocess.run([sys.executable, str(PROBE), mode], capture_output=True, text=True, timeout=300)
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"error: {out.stderr[-300:]}"


@pytest.mark.slow
def test_frozen_checksums_never_see_the_race_across_fresh_processes():
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(trial, ["tunespec"] * RUNS))
    assert results == ["tunespec=ok"] * RUNS, results
