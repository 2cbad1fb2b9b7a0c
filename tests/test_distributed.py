"""torch DDP (gloo, 2 CPU processes) and torch.compile with frozen layers and staged unfreezing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from frameworks import TorchHarness, batches, needs

torch = needs("torch")
import numpy as np  # noqa: E402

import tunespec  # noqa: E402

WORKER = Path(__file__).parent / "ddp_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(out: Path, *flags: str) -> tuple[dict, dict]:
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out), *flags], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    return tuple(dict(np.load(out / f"rank{r}.npz")) for r in range(2))


def weights(result: dict, prefix: str) -> dict[str, np.ndarray]:
    return {k[len("w:"):]: v for k, v in result.items() if k.startswith("w:" + prefix)}


@pytest.mark.slow
def test_ddp_frozen_backbone_then_unfreeze_stage(tmp_path):
    r0, r1 = run_ddp(tmp_path)
    fc = 5 * 512 + 5
    layer4 = sum(v.size for k, v in weights(r0, "layer4.").items() if not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked")))
    # only trainable gradients are all-reduced: the head in stage 0, layer4 + head after the stage
    assert list(r0["reduced"]) == [fc, fc + layer4]
    assert list(r0["trainable0"]) == ["fc.bias", "fc.weight"]  # names without DDP's 'module.'
    for name, w in weights(r0, "").items():
        if name.startswith("layer4.") and ".running_" in name:
            continue  # trainable BN statistics are per rank (DDP broadcasts rank 0's before a forward)
        assert np.array_equal(w, r1["w:" + name]), f"{name} differs between the ranks"
    frozen = [k for k in weights(r0, "") if not k.startswith(("layer4.", "fc."))]
    assert all(np.array_equal(r0["w:" + k], r0["init:" + k]) for k in frozen)
    assert not np.array_equal(r0["w:layer4.0.conv1.weight"], r0["init:layer4.0.conv1.weight"])
    assert not np.array_equal(r0["w:fc.weight"], r0["init:fc.weight"])


@pytest.mark.slow
def test_ddp_without_rewrap_lets_newly_unfrozen_weights_drift_apart(tmp_path):
    """The control: the same run keeping the old DDP wrapper never all-reduces layer4."""
    r0, r1 = run_ddp(tmp_path, "--no-rewrap")
    assert list(r0["reduced"])[1] == 5 * 512 + 5
    assert not np.array_equal(r0["w:layer4.0.conv1.weight"], r1["w:layer4.0.conv1.weight"])


def test_compiled_model_plans_by_canonical_names_and_unfreezes():
    h = TorchHarness()
    net = h.small_cnn(dtype="float32")
    compiled = torch.compile(net, backend="aot_eager")
    recipe = {"freeze": [".*"], "train": [r"8\..*"], "optimizer": {"name": "adam", "lr": 1e-3},
              "stages": [{"at_epoch": 1, "freeze": [".*"], "train": [r"[48]\..*"]}]}
    schedule = tunespec.StageRunner(recipe)
    compiled, opt = schedule.start(compiled)
    assert sorted(d.name for d in schedule.plan.trainable) == ["8.bias", "8.weight"]
    before = h.arrays(net)
    for epoch in range(2):
        for x, y in batches(2, 8, seed=epoch):
            h.step(compiled, opt, x.astype(np.float32), y)
        if epoch == 0:
            mid = h.arrays(net)
        compiled, opt = schedule.step(epoch, compiled, opt)
    after = h.arrays(net)
    schedule.plan.verify().raise_if_changed()
    assert np.array_equal(before["0.weight"], after["0.weight"])
    assert np.array_equal(before["4.weight"], mid["4.weight"])  # frozen in stage 0, trains in stage 1
    assert not np.array_equal(mid["4.weight"], after["4.weight"])
    assert not np.array_equal(before["8.weight"], mid["8.weight"])
