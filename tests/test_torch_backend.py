"""torch-only behaviour: wrappers, frozen BN surviving train()/deepcopy/pickle/compile, tying."""

from __future__ import annotations

import copy
import io
import pickle

import pytest

from frameworks import needs

torch = needs("torch")
from torch import nn  # noqa: E402

import tunespec  # noqa: E402

SPEC = {"freeze": ["[01]\\..*"]}


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def stats(model):
    model = getattr(model, "_orig_mod", model)
    return model[1].running_mean.clone(), model[1].running_var.clone(), model[4].running_mean.clone()


def run_train_forward(model, calls=2):
    model.train()
    for _ in range(calls):
        model(torch.randn(4, 3, 8, 8)).sum().backward()


def assert_frozen_bn_holds(model):
    before = stats(model)
    run_train_forward(model)
    after = stats(model)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[2], after[2])  # the trainable block's BN still updates


def test_frozen_bn_survives_train_deepcopy_pickle():
    model = cnn()
    tunespec.apply(model, SPEC)
    keys = list(model.state_dict())
    assert_frozen_bn_holds(model)
    assert_frozen_bn_holds(copy.deepcopy(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert_frozen_bn_holds(torch.load(buf, weights_only=False))
    assert_frozen_bn_holds(pickle.loads(pickle.dumps(model)))
    assert list(model.state_dict()) == keys  # no module swapped


def test_frozen_bn_survives_torch_compile():
    model = cnn()
    tunespec.apply(model, SPEC)
    compiled = torch.compile(model, backend="aot_eager")
    assert_frozen_bn_holds(compiled)
    plan = tunespec.plan(compiled, SPEC)  # names through the wrapper are the same
    assert plan.decisions[0].name == "0.weight"


@pytest.mark.parametrize("cls, shape", [(nn.BatchNorm1d, (4, 6)), (nn.BatchNorm3d, (2, 6, 2, 2, 2)),
                                        (nn.SyncBatchNorm, (4, 6, 3, 3))])
def test_other_batchnorm_classes(cls, shape):
    model = nn.Sequential(cls(6))
    tunespec.apply(model, {"freeze": ["0\\..*"]})
    model.train()
    before = model[0].running_mean.clone()
    if cls is nn.SyncBatchNorm:  # outside a process group SyncBatchNorm refuses training forward
        assert tunespec.plan(model, {"train": [".*"]}).norms[0].norm.stats_frozen
        return
    model(torch.randn(*shape))
    assert torch.equal(before, model[0].running_mean)


def test_wrappers_are_stripped_from_canonical_names():
    model = cnn()
    wrapped = nn.DataParallel(model)  # CPU: device_ids is empty, forward calls the module
    plan = tunespec.plan(wrapped, SPEC)
    assert [d.name for d in plan.decisions][:2] == ["0.weight", "0.bias"]
    assert plan.decisions[0].tensor.native == "module.0.weight"
    assert plan.listing.model_type == "torch.nn.modules.container.Sequential"


def test_wrapping_after_planning_changes_nothing():
    model = cnn()
    plan = tunespec.plan(model, SPEC)
    wrapped = nn.DataParallel(model)
    opt = plan.optimizer("sgd", lr=0.1)
    plan.check(opt)
    assert not wrapped.module[0].weight.requires_grad


def test_tied_parameters_listed_once_matched_by_alias():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    plan = tunespec.apply(model, {"freeze": ["head\\.weight"]})
    assert [d.name for d in plan.decisions] == ["embed.weight"]
    assert plan.decisions[0].tensor.aliases == ("head.weight",)
    assert not model.embed.weight.requires_grad and not plan.trainable


def test_unknown_optimizer_and_weight_decay_not_taken():
    model = cnn()
    with pytest.raises(tunespec.SpecError, match="unknown torch optimizer 'sgdd'"):
        tunespec.optimizer(model, SPEC, "sgdd", lr=0.1)
    with pytest.raises(tunespec.SpecError, match="takes no weight_decay"):
        tunespec.optimizer(model, SPEC, torch.optim.LBFGS, lr=0.1, weight_decay=0.1)
    opt = tunespec.optimizer(model, SPEC, torch.optim.RMSprop, lr=0.1, alpha=0.5)
    assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["alpha"] == 0.5


def test_norm_group_selects_torchvision_downsample_bn():
    import torchvision

    plan = tunespec.plan(torchvision.models.resnet18(weights=None), {"wd_mult": {"@norm": 0}})
    assert plan["layer2.0.downsample.1.weight"].wd_mult == 0
    assert plan["layer2.0.downsample.0.weight"].wd_mult == 1
    assert sum(d.wd_mult == 0 for d in plan.decisions) == 40  # 20 BN layers x (weight, bias)
