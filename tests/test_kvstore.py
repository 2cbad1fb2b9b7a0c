"""Gluon Trainers built by tunespec on kvstores: 'device'/'local' over two CPU contexts, and
MXNet's parameter-server dist_sync with a scheduler, a server and two workers on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from frameworks import needs

needs("mxnet")
import numpy as np  # noqa: E402

WORKER = Path(__file__).parent / "kvstore_worker.py"
BN_STATS = ("running_mean", "running_var")  # per worker / per device in trainable BN layers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(out: Path, rank: int) -> dict[str, np.ndarray]:
    return dict(np.load(out / f"{rank}.npz"))


def weights(result: dict, prefix: str = "") -> dict[str, np.ndarray]:
    return {k[2:]: v for k, v in result.items() if k.startswith("w:" + prefix)}


def assert_same(r0: dict, r1: dict, log: str, skip: tuple[str, ...] = ()) -> None:
    differ = [k for k, w in weights(r0).items()
              if not k.endswith(skip) and not np.array_equal(w, r1["w:" + k])]
    assert not differ, f"{len(differ)} tensors differ between the workers: {differ[:6]}\n{log}"


def check_frozen_backbone(r: dict, trained: tuple[str, ...]) -> None:
    for name, w in weights(r).items():
        moved = not np.array_equal(w, r["init:" + name])
        if name.startswith(trained) and not name.endswith(BN_STATS):
            assert moved, f"{name} did not train"
        elif not name.startswith(trained):
            assert not moved, f"frozen {name} changed"


def run_dist(out: Path, on_kvstore: str, staged: str) -> tuple[dict, dict, str]:
    env = {**os.environ, "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": str(free_port()),
           "DMLC_NUM_SERVER": "1", "DMLC_NUM_WORKER": "2", "OMP_NUM_THREADS": "1"}
    roles = [("scheduler", [sys.executable, "-m", "tunespec.lifecycle.distributed"]),
             ("server", [sys.executable, "-m", "tunespec.lifecycle.distributed"]),
             ("worker", [sys.executable, str(WORKER), str(out), "dist_sync", on_kvstore, staged]),
             ("worker", [sys.executable, str(WORKER), str(out), "dist_sync", on_kvstore, staged])]
    procs = [subprocess.Popen(cmd, env={**env, "DMLC_ROLE": role}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for role, cmd in roles]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    assert not any("Traceback" in log for log in logs), "\n".join(logs)[-3000:]
    return load(out, 0), load(out, 1), "".join(logs[2:])


@pytest.mark.slow
@pytest.mark.parametrize("kvstore", ["device", "local"])
def test_two_contexts_with_a_stage(kvstore, tmp_path):
    subprocess.run([sys.executable, str(WORKER), str(tmp_path), kvstore, "0", "1"], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    r = load(tmp_path, 0)
    assert bool(r["copies_equal"])  # both contexts hold the same weights
    check_frozen_backbone(r, ("layer4.", "fc."))


@pytest.mark.slow
def test_dist_sync_two_workers_frozen_backbone(tmp_path):
    (tmp_path / "server").mkdir()
    (tmp_path / "local").mkdir()
    r0, r1, log = run_dist(tmp_path / "server", "default", "0")  # optimizer runs on the server
    assert bool(r0["on_kvstore"])
    assert_same(r0, r1, log)
    check_frozen_backbone(r0, ("fc.",))
    q0, _, log2 = run_dist(tmp_path / "local", "0", "0")  # the kvstore only sums, workers update
    assert not bool(q0["on_kvstore"])
    np.testing.assert_allclose(q0["w:fc.weight"], r0["w:fc.weight"], rtol=1e-5, atol=1e-7,
                               err_msg=f"{log}\n{log2}")


@pytest.mark.slow
def test_dist_sync_unfreeze_stage(tmp_path):
    r0, r1, log = run_dist(tmp_path, "0", "1")
    assert_same(r0, r1, log, skip=BN_STATS)
    check_frozen_backbone(r0, ("layer4.", "fc."))
