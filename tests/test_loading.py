"""tunespec.load: partial loading from torch, safetensors and Gluon files, select/rename, refusals."""

from __future__ import annotations

import dataclasses

import pytest

from frameworks import MXNetHarness, TorchHarness, needs

torch = needs("torch")
mx = needs("mxnet")
import numpy as np  # noqa: E402

import torchvision  # noqa: E402

import tunespec  # noqa: E402
from tunespec import SpecError  # noqa: E402


@dataclasses.dataclass
class RunInfo:  # a Python object beside the tensors: the file then needs pickle
    epoch: int


def resnet(classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=classes)


def arrays(model) -> dict[str, np.ndarray]:
    return TorchHarness().arrays(model)


def test_backbone_only_from_a_checkpoint_with_another_head(tmp_path):
    source, target = resnet(1000, 0), resnet(10, 1)
    path = tmp_path / "imagenet.pt"
    torch.save(source.state_dict(), path)
    head_before = target.fc.weight.detach().clone()
    report = tunespec.load(target, path, select=r"(?!fc\.).*")
    assert report.ok and not report.complete
    assert sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    src, dst = arrays(source), arrays(target)
    assert all(np.array_equal(src[n], dst[n]) for n in report.loaded)
    assert len(report.loaded) == len(src) - 2
    assert torch.equal(target.fc.weight, head_before)


def test_strict_refuses_shape_mismatch_and_writes_nothing(tmp_path):
    source, target = resnet(1000, 0), resnet(10, 1)
    path = tmp_path / "imagenet.pt"
    torch.save(source.state_dict(), path)
    before = arrays(target)
    with pytest.raises(SpecError, match=r"shape fc.weight: checkpoint \(1000, 512\) vs model \(10, 512\)"):
        tunespec.load(target, path)
    assert all(np.array_equal(before[n], v) for n, v in arrays(target).items())
    report = tunespec.load(target, path, strict=False)
    assert [m[0] for m in report.mismatched] == ["fc.weight", "fc.bias"]
    assert np.array_equal(arrays(target)["conv1.weight"], arrays(source)["conv1.weight"])


def test_rename_a_prefix_and_wrapper_prefixes(tmp_path):
    source, target = resnet(10, 0), resnet(10, 1)
    wrapped = {f"classifier.{k}": v for k, v in source.state_dict().items()}
    report = tunespec.load(target, wrapped, rename={r"classifier\.(.*)": r"\1"})
    assert report.complete and len(report.loaded) == len(arrays(target))
    # a state dict saved from DDP (module.) or torch.compile (_orig_mod.) loads into a bare model
    ddp_style = {f"module._orig_mod.{k}": v for k, v in resnet(10, 2).state_dict().items()}
    assert tunespec.load(target, ddp_style).complete
    assert torch.equal(target.conv1.weight, ddp_style["module._orig_mod.conv1.weight"])


def test_unexpected_keys_are_refused_with_their_names():
    target = resnet(10, 1)
    with pytest.raises(SpecError, match=r"unexpected: head\.weight"):
        tunespec.load(target, {"head.weight": torch.zeros(10, 512)})
    with pytest.raises(SpecError, match="matches none of the checkpoint's keys"):
        tunespec.load(target, {"fc.weight": torch.zeros(10, 512)}, select=r"layer9\..*")


def test_pickle_needing_checkpoints_are_refused_unless_allowed(tmp_path):
    source, target = resnet(10, 0), resnet(10, 1)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": source.state_dict(), "info": RunInfo(3)}, path)
    with pytest.raises(SpecError, match="needs pickle.*allow_pickle=True"):
        tunespec.load(target, path)
    report = tunespec.load(target, path, allow_pickle=True)  # the one nested state dict is found
    assert report.complete
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": source.state_dict(), "ema": source.state_dict(), "epoch": 3}, plain)
    with pytest.raises(SpecError, match="pass key="):
        tunespec.load(target, plain)
    assert tunespec.load(target, plain, key="ema").complete


def test_safetensors_into_torch_and_gluon(tmp_path):
    st = needs("safetensors.torch")
    source = resnet(10, 0)
    path = tmp_path / "r18.safetensors"
    st.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = resnet(10, 1)
    assert tunespec.load(target, path).complete
    assert np.array_equal(arrays(target)["layer4.1.conv2.weight"], arrays(source)["layer4.1.conv2.weight"])
    h = MXNetHarness()
    net = h.resnet18(classes=10, dtype="float32")
    report = tunespec.load(net, path)  # by canonical names: bn weight/bias are Gluon's gamma/beta
    assert report.complete and len(report.ignored) == 20  # torch's batch counters have no place
    got, want = h.arrays(net), arrays(source)
    assert set(got) == set(report.loaded)
    assert all(np.array_equal(got[n], want[n]) for n in got)


def test_gluon_params_file_into_torch_and_torch_file_into_gluon(tmp_path):
    h = MXNetHarness()
    net = h.resnet18(classes=10, dtype="float32")
    path = tmp_path / "r18.params"
    net.save_parameters(str(path))  # keys like layer1.0.bn1.gamma
    target = resnet(10, 1)
    report = tunespec.load(target, path, select=r"(?!fc\.).*")
    assert report.ok and sorted(report.missing) == ["fc.bias", "fc.weight"]
    got, want = arrays(target), h.arrays(net)
    assert all(np.array_equal(got[n], want[n]) for n in report.loaded)
    assert "layer1.0.bn1.running_var" in report.loaded
    pt = tmp_path / "r18.pt"
    torch.save(resnet(10, 3).state_dict(), pt)
    assert tunespec.load(net, pt).complete
    assert np.array_equal(h.arrays(net)["fc.weight"], arrays(resnet(10, 3))["fc.weight"])
