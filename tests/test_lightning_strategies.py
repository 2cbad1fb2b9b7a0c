"""StageCallback under Lightning's DDP and FSDP strategies: 2 CPU processes (gloo) per fit.

Each fit runs tests/lightning_worker.py in a subprocess; Lightning starts the second rank. The
recipe trains the head of a ResNet-18, unfreezes layer4 at epoch 1 (the change happens at the end
of epoch 0) and runs 3 epochs of 2 steps per rank, saving a Lightning checkpoint every epoch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from frameworks import needs

torch = needs("torch")
pl = needs("lightning.pytorch")
needs("torchvision")
import numpy as np  # noqa: E402

from tunespec import SpecError  # noqa: E402
from tunespec.integrations.lightning import StageCallback  # noqa: E402

WORKER = Path(__file__).parent / "lightning_worker.py"
FC = 5 * 512 + 5
STATS = ("running_mean", "running_var", "num_batches_tracked")


def fit(out: Path, strategy: str, *flags: str) -> tuple[dict, dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(key, None)  # Lightning picks a free port and sets the ranks of its processes
    proc = subprocess.run([sys.executable, str(WORKER), str(out), strategy, *flags], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return tuple(dict(np.load(out / f"rank{r}.npz")) for r in range(2))


def weights(result: dict) -> dict[str, np.ndarray]:
    return {k[2:]: v for k, v in result.items() if k.startswith("w:")}


def names(r0: dict, r1: dict, key: str) -> set[str]:
    """Over both ranks: under FSDP each rank holds the gradients and state of its own shard."""
    return set(r0.get(key, ())) | set(r1.get(key, ()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted fits, shared by the stage and the resume tests (a fit costs ~20 s)."""
    cache: dict[str, tuple[Path, tuple[dict, dict]]] = {}

    def get(strategy: str) -> tuple[Path, tuple[dict, dict]]:
        if strategy not in cache:
            out = tmp_path_factory.mktemp(strategy)
            cache[strategy] = out, fit(out, strategy)
        return cache[strategy]
    return get


def check_stage_change(r0: dict, r1: dict) -> None:
    layer4 = {k for k in weights(r0) if k.startswith("layer4.") and not k.endswith(STATS)}
    fc = {"fc.weight", "fc.bias"}
    assert names(r0, r1, "grads:0") == fc  # stage 0: the head only
    assert names(r0, r1, "grads:1") == names(r0, r1, "grads:2") == fc | layer4
    assert names(r0, r1, "state") == fc | layer4  # the new parameters got optimizer state
    assert int(r0["index"]) == 1 and list(r0["history"]) == ["5+"]
    assert list(r0["groups"]) == [2, 15] and list(r0["lrs"]) == [0.025, 0.0125]  # lr_factor 0.5, milestone
    for name, w in weights(r0).items():
        if name.startswith("layer4.") and name.endswith(STATS):
            continue  # trainable BN statistics are per rank
        assert np.array_equal(w, r1["w:" + name]), f"{name} differs between the ranks"
    for name, w in weights(r0).items():
        unchanged = np.array_equal(w, r0["init:" + name])
        assert unchanged == (not name.startswith(("layer4.", "fc."))), name


def check_resumed(uninterrupted: tuple[dict, dict], resumed: tuple[dict, dict], per_rank_stats: bool) -> None:
    """``per_rank_stats``: whether each rank's own trainable BN statistics survive a checkpoint.
    Under DDP every forward broadcasts rank 0's buffers; under FSDP buffers are per rank and a full
    checkpoint holds rank 0's, so rank 1 resumes with those (parameters are all the same)."""
    for rank in range(2):
        a, b = weights(uninterrupted[rank]), weights(resumed[rank])
        assert a.keys() == b.keys()
        skip = () if per_rank_stats or rank == 0 else STATS
        assert [k for k in a if not k.endswith(skip) and not np.array_equal(a[k], b[k])] == [], f"rank {rank}"
        assert list(resumed[rank]["groups"]) == [2, 15] and int(resumed[rank]["index"]) == 1
        assert list(resumed[rank]["lrs"]) == list(uninterrupted[rank]["lrs"])


def test_ddp_stage_change_rewraps_so_new_parameters_are_all_reduced(runs):
    _, (r0, r1) = runs("ddp")
    check_stage_change(r0, r1)
    layer4 = sum(v.size for k, v in weights(r0).items() if k.startswith("layer4.") and not k.endswith(STATS))
    # elements DDP all-reduced per epoch (2 steps): the head, then the head and layer4
    assert [int(r0[f"reduced:{e}"].sum()) for e in range(3)] == [2 * FC] + [2 * (FC + layer4)] * 2


def test_ddp_without_the_rewrap_new_parameters_drift_apart(tmp_path):
    """The control (what keeping Lightning's first DDP wrapper does): layer4 is never all-reduced."""
    r0, r1 = fit(tmp_path, "ddp", "--no-rewrap")
    assert [int(r0[f"reduced:{e}"].sum()) for e in range(3)] == [2 * FC] * 3
    assert not np.array_equal(r0["w:layer4.0.conv1.weight"], r1["w:layer4.0.conv1.weight"])


def test_ddp_resume_after_a_stage_change_matches_the_uninterrupted_fit(runs, tmp_path):
    out, uninterrupted = runs("ddp")
    resumed = fit(tmp_path, "ddp", "--resume", str(out / "ckpt" / "epoch=1.ckpt"))
    check_resumed(uninterrupted, resumed, per_rank_stats=True)


def test_ddp_spawn_runs_the_same_fit(runs, tmp_path):
    """Spawned processes get the pickled trainer and callback; the fit is the "ddp" one, bit for bit."""
    _, ddp = runs("ddp")
    spawned = fit(tmp_path, "ddp_spawn")
    for rank in range(2):
        a, b = weights(ddp[rank]), weights(spawned[rank])
        assert [k for k in a if not np.array_equal(a[k], b[k])] == [], f"rank {rank}"


def test_fsdp_stage_change(runs):
    _, (r0, r1) = runs("fsdp")
    check_stage_change(r0, r1)


def test_fsdp_resume_after_a_stage_change_matches_the_uninterrupted_fit(runs, tmp_path):
    out, uninterrupted = runs("fsdp")
    resumed = fit(tmp_path, "fsdp", "--resume", str(out / "ckpt" / "epoch=1.ckpt"))
    check_resumed(uninterrupted, resumed, per_rank_stats=False)


def test_unsupported_strategies_are_refused_before_anything_changes():
    sys.path.insert(0, str(WORKER.parent))
    from lightning_worker import RECIPE, CPUFSDPStrategy, Module

    for strategy, match in [(CPUFSDPStrategy(use_orig_params=False), "use_orig_params=True"),
                            (pl.strategies.SingleDeviceStrategy("cpu"), None)]:
        stages = StageCallback(RECIPE, model_attr="net")
        module = Module(stages)
        trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=strategy, logger=False)
        if match is None:
            stages.setup(trainer, module, "fit")  # one device: fine
            assert not module.net.conv1.weight.requires_grad
            continue
        with pytest.raises(SpecError, match=match):
            stages.setup(trainer, module, "fit")
        assert all(p.requires_grad for p in module.net.parameters())
