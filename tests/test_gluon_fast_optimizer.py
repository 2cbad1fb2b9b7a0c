"""The default Gluon optimizers (torch's rules on MXNet's fused operators) against torch and against
the exact full-precision rules (``semantics='torch-exact'``).

Float64 runs of a small CNN from identical weights, with lr 0 at the first step (warmup from 0),
then a warmup and a step decay (the lr changes three times), lr_mult 10 on the head and no weight
decay on biases and norms. The exact rules agree with torch to float64 rounding (~1e-15 of the
update); the fused ones to MXNet's float32 attributes (lr, momentum, wd, eps and the betas go to the
operators as float32): measured 2e-8 to 4e-8 of the update here, against a tolerance of 1e-6.
MXNet's own rules (``'native'``) differ by 1e-5 (Adam: epsilon placement) to 0.3 (SGD: lr inside
the momentum buffer, after the first lr change), so the tolerance separates them.
"""

from __future__ import annotations

import pytest

from frameworks import MXNetHarness, TorchHarness, batches, needs

needs("torch")
needs("mxnet")
import numpy as np  # noqa: E402

import tunespec  # noqa: E402

SPEC = {"lr_mult": {r"8\..*": 10}, "wd_mult": {"@bias": 0, "@norm": 0}}
SCHEDULE = {"type": "step", "step_size": 3, "gamma": 0.3, "warmup_steps": 2}  # lr factors 0, .5, 1, .3 ...
STEPS = 7
FAST, EXACT = 1e-6, 1e-12  # of the largest update; see the module docstring
# Conv biases before BatchNorm get gradients of rounding size only, which Adam scales up to full
# steps: their values are noise in every run (torch against torch-exact too), so they are left out.
NOISE = {"0.bias", "3.bias"}

CASES = {
    "sgd-momentum": ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}),
    "sgd-dampening": ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.2, "weight_decay": 5e-4}),
    "sgd-plain": ("sgd", {"lr": 0.05, "weight_decay": 5e-4}),
    "adam": ("adam", {"lr": 0.01, "weight_decay": 1e-3}),
    "adamw": ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
}
NESTEROV = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


@pytest.fixture(scope="module")
def harnesses():
    return TorchHarness(), MXNetHarness()


@pytest.fixture(scope="module")
def data():
    return [(x, y) for x, y in batches(STEPS, 8, batch=4, seed=3)]


def twins(harnesses):
    th, mh = harnesses
    th.torch.manual_seed(0)
    tm, mm = th.small_cnn(), mh.small_cnn()
    tunespec.port(tm, mm)
    return tm, mm


@pytest.fixture(scope="module")
def torch_runs(harnesses, data):
    """torch's (start, end) weights per case, trained once."""
    th, _ = harnesses
    runs = {}

    def run(case):
        if case not in runs:
            name, options = CASES.get(case, (None, None)) if case != "nesterov" else ("sgd", NESTEROV)
            tm, _ = twins(harnesses)
            opt = tunespec.optimizer(tm, SPEC, name, **options)
            sched = tunespec.scheduler(opt, SCHEDULE)
            start = th.arrays(tm, include_state=False)
            for x, y in data:
                th.step(tm, opt, x, y)
                sched.step()
            end = th.arrays(tm, include_state=False)
            runs[case] = end, max(np.abs(end[k] - start[k]).max() for k in end)
        return runs[case]
    return run


def train(harnesses, data, name, options, semantics=None, steps=STEPS, spec=SPEC):
    """The Gluon weights and the Trainer after ``steps`` steps under ``semantics``."""
    _, mh = harnesses
    _, mm = twins(harnesses)
    trainer = tunespec.optimizer(mm, spec, name, semantics=semantics, **options)
    tunespec.scheduler(trainer, SCHEDULE)
    for x, y in data[:steps]:
        mh.step(mm, trainer, x, y)
    return mh.arrays(mm, include_state=False), trainer


def worst(a, b, update):
    return max(np.abs(a[k] - b[k]).max() for k in a if k not in NOISE) / update


@pytest.mark.parametrize("case", list(CASES))
def test_fused_default_matches_torch_to_float32_attributes_and_exact_to_float64(harnesses, data, torch_runs,
                                                                                case):
    name, options = CASES[case]
    torch_w, update = torch_runs(case)
    assert update > 0.05
    fast_w, fast = train(harnesses, data, name, options)
    assert type(fast._optimizer).__name__.startswith("FusedTorch"), type(fast._optimizer)
    exact_w, exact = train(harnesses, data, name, options, semantics="torch-exact")
    assert type(exact._optimizer).__name__.startswith("Torch"), type(exact._optimizer)
    assert worst(torch_w, exact_w, update) <= EXACT
    fast_error = worst(torch_w, fast_w, update)
    print(f"{case}: fused {fast_error:.2g} of the update")
    assert fast_error <= FAST, fast_error
    assert fast_error > 0  # float32 attributes: the two paths are not the same computation
    if case in ("sgd-momentum", "adam"):  # MXNet's own rules: the tolerance tells them apart
        native_w, _ = train(harnesses, data, name, options, semantics="native")
        assert worst(torch_w, native_w, update) > 10 * FAST


def test_nesterov_runs_the_exact_rule(harnesses, data, torch_runs):
    """MXNet's NAG operator is another rule: with nesterov the default runs the exact one."""
    torch_w, update = torch_runs("nesterov")
    fast_w, fast = train(harnesses, data, "sgd", NESTEROV)
    exact_w, _ = train(harnesses, data, "sgd", NESTEROV, semantics="torch-exact")
    assert type(fast._optimizer).__name__ == "FusedTorchSGD"
    assert all(np.array_equal(fast_w[k], exact_w[k]) for k in fast_w)
    assert worst(torch_w, fast_w, update) <= EXACT


def test_fused_sgd_state_is_the_scaled_buffer_and_the_last_lr(harnesses, data):
    """MXNet's buffer is -lr * torch's; the lr it was made with travels in the state (checkpoints)."""
    th, mh = harnesses
    name, options = CASES["sgd-momentum"]
    tm, mm = twins(harnesses)
    opt_t = tunespec.optimizer(tm, SPEC, name, **options)
    sched_t = tunespec.scheduler(opt_t, SCHEDULE)
    trainer = tunespec.optimizer(mm, SPEC, name, **options)
    tunespec.scheduler(trainer, SCHEDULE)
    for x, y in data[:4]:  # lr factors 0, 0.5, 1, 1
        lr_t = {id(p): g["lr"] for g in opt_t.param_groups for p in g["params"]}
        th.step(tm, opt_t, x, y)
        sched_t.step()
        mh.step(mm, trainer, x, y)
    bufs = {n: opt_t.state[p]["momentum_buffer"].numpy() for n, p in tm.named_parameters()}
    lrs = {n: lr_t[id(p)] for n, p in tm.named_parameters()}
    names = {p.name: t.canonical for t in mh.backend.listing(mm).params for p in [t.handle]}
    states = trainer._updaters[0].states
    for index, param in enumerate(trainer._params):
        mom, scale = states[index]
        canonical = names[param.name]
        if canonical in NOISE:
            continue
        assert scale == pytest.approx(lrs[canonical], rel=1e-15)
        np.testing.assert_allclose(mom.asnumpy(), -scale * bufs[canonical], rtol=1e-6,
                                   atol=1e-9 * np.abs(bufs[canonical]).max())


def test_the_exact_path_is_there_by_name_in_recipes_and_for_torch(harnesses):
    from tunespec.recipe.optimizer import OptimizerSpec

    assert OptimizerSpec.from_dict({"name": "sgd", "semantics": "torch-exact"}).semantics == "torch-exact"
    th, mh = harnesses
    opt = tunespec.optimizer(th.small_cnn(), SPEC, "sgd", lr=0.1, semantics="torch-exact")
    assert type(opt).__name__ == "SGD"  # torch's optimizers are exact anyway
    with pytest.raises(tunespec.SpecError, match="torch-exact"):
        tunespec.optimizer(mh.small_cnn(), SPEC, "sgd", lr=0.1, semantics="exact")


def test_adam_with_clipping_and_weight_decay_runs_the_exact_rule(harnesses, data):
    """MXNet's adam_update clips after adding wd*w, the exact rule before: with both, the exact
    rule runs (bit-identical to torch-exact); clipping without weight decay stays fused."""
    clipped = {"lr": 0.01, "weight_decay": 1e-3, "clip_gradient": 0.05}
    everywhere = {"lr_mult": {r"8\..*": 10}}  # weight decay on every parameter
    fast_w, _ = train(harnesses, data, "adam", clipped, spec=everywhere)
    exact_w, _ = train(harnesses, data, "adam", clipped, semantics="torch-exact", spec=everywhere)
    assert all(np.array_equal(fast_w[k], exact_w[k]) for k in fast_w)
    no_wd = {"lr": 0.01, "clip_gradient": 0.05}
    fast_w, _ = train(harnesses, data, "adam", no_wd)
    exact_w, _ = train(harnesses, data, "adam", no_wd, semantics="torch-exact")
    errors = [np.abs(fast_w[k] - exact_w[k]).max() for k in fast_w if k not in NOISE]
    assert 0 < max(errors) <= 1e-6


def test_a_torch_exact_run_refuses_to_resume_into_the_fused_default_and_says_why(harnesses, data, tmp_path):
    """The two paths keep SGD's buffer differently (-lr*buf against buf): never mixed on resume."""
    _, mh = harnesses
    recipe = {"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "semantics": "torch-exact"}}
    schedule = tunespec.Schedule(recipe)
    net, opt = schedule.start(twins(harnesses)[1])
    mh.step(net, opt, *data[0])
    path = tmp_path / "run.ckpt"
    tunespec.save_checkpoint(path, net, opt, schedule, epoch=0)
    net2 = twins(harnesses)[1]
    fused = tunespec.optimizer(net2, recipe, semantics="torch")
    with pytest.raises(tunespec.SpecError, match="run used optimizer 'TorchSGD'.*semantics='torch-exact'"):
        tunespec.resume(path, net2, tunespec.Schedule(recipe), optimizer=fused)
