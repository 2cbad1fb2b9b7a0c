"""The detector demo: its VOC-layout data reads in GluonCV, its numpy mAP is GluonCV's, and
its torch path runs end to end at a smoke size, fine-tuning exactly what the recipe trains."""

from __future__ import annotations

import os
import sys

import pytest

from frameworks import needs

np = pytest.importorskip("numpy", reason="the demo's data and metric need numpy (torch and mxnet bring it)")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from synthetic_voc import read_voc, write_voc  # noqa: E402
from voc_metric import voc07_map  # noqa: E402

CLASSES = ("square", "triangle", "cross")


def test_synthetic_voc_reads_back_identically_in_gluoncv(tmp_path):
    needs("mxnet")
    from tunespec.backends.mxnet import import_gluoncv

    gcv = import_gluoncv()
    root = write_voc(tmp_path, CLASSES, {"train": 12}, size=96, seed=3)
    ours = read_voc(root, "train", CLASSES)
    shapes = type("Shapes", (gcv.data.VOCDetection,), {"CLASSES": CLASSES})
    theirs = shapes(root=str(root), splits=[(2007, "train")])
    assert len(theirs) == len(ours) == 12
    for (image, boxes), (gimage, glabel) in zip(ours, theirs, strict=True):
        assert np.array_equal(image, gimage.asnumpy())
        np.testing.assert_array_equal(boxes, glabel[:, :5])
    assert all(len(b) for _, b in ours) and {int(c) for _, b in ours for c in b[:, 4]} <= {0, 1, 2}


def test_numpy_voc07_map_equals_gluoncvs_metric():
    needs("mxnet")
    from tunespec.backends.mxnet import import_gluoncv

    metric = import_gluoncv().utils.metrics.voc_detection.VOC07MApMetric(iou_thresh=0.5, class_names=CLASSES)
    rng = np.random.default_rng(0)
    detections, truths = [], []
    for _ in range(30):
        gt = rng.uniform(0, 60, (3, 2))
        gt_boxes = np.concatenate([gt, gt + rng.uniform(10, 40, (3, 2))], axis=1)
        gt_labels = rng.integers(0, 3, 3).astype(float)
        boxes = np.concatenate([gt_boxes + rng.normal(0, 4, gt_boxes.shape), rng.uniform(0, 100, (5, 4))])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.concatenate([gt_labels, rng.integers(0, 3, 5)]).astype(float)
        scores = rng.uniform(0, 1, len(boxes))
        detections.append((boxes, labels, scores))
        truths.append((gt_boxes, gt_labels))
        metric.update(boxes[None], labels[None], scores[None], gt_boxes[None], gt_labels[None])
    names, values = metric.get()
    ours, per_class = voc07_map(detections, truths, len(CLASSES))
    assert 0.2 < ours < 0.95  # neither trivial nor perfect, so the comparison means something
    np.testing.assert_allclose(per_class, values[:-1], rtol=1e-12)
    assert ours == pytest.approx(values[-1], rel=1e-12)


def test_torch_demo_smoke_run_trains_what_the_recipe_trains_and_nothing_else(tmp_path, capsys):
    torch = needs("torch")
    needs("torchvision")
    import detector_finetune as demo

    result = demo.main(["--backend", "torch", "--smoke", "--workdir", str(tmp_path)])
    assert "wall time" in capsys.readouterr().out  # the run printed its end
    assert 0.0 <= result.before <= 1.0 and 0.0 <= result.after <= 1.0  # NaN fails both
    start = result.run.reload_for(result.weights)  # the net as fine-tuning found it
    old = dict(start.named_parameters()) | dict(start.named_buffers())
    params, buffers = dict(result.net.named_parameters()), dict(result.net.named_buffers())
    assert old.keys() == params.keys() | buffers.keys()
    trainable = {n for n, p in params.items() if p.requires_grad}
    frozen = params.keys() - trainable
    # preset 4+: the stem and stages 2-3 freeze; stages 4-5, the extra layers and the heads train
    assert any(n.startswith("backbone.features.0.0.") for n in frozen)
    assert any(n.startswith("backbone.features.1.") for n in trainable)
    assert {n for n in params if n.startswith(("head.", "backbone.extra."))} <= trainable
    for name in sorted(frozen | buffers.keys()):  # bn: freeze keeps every norm statistic too
        assert torch.equal(old[name], {**params, **buffers}[name]), f"{name} changed"
    held = {id(p): g for g in result.trainer.param_groups for p in g["params"]}
    assert held.keys() == {id(params[n]) for n in trainable}  # the optimizer holds the plan's tensors
    moved = {n for n in trainable if not torch.equal(old[n], params[n])}
    decayed = {n for n in trainable if held[id(params[n])]["weight_decay"] > 0}
    # A smoke run's net is barely pretrained: deep activations are tiny under frozen BatchNorm
    # statistics, so some gradients are zero or too small to move a float32 weight near 1.
    pushed = {n for n in trainable if params[n].grad is not None and params[n].grad.abs().max() > 1e-4}
    assert decayed and pushed - decayed and any(n.startswith("head.") for n in pushed)
    assert decayed | pushed <= moved, f"trainable, never updated: {sorted((decayed | pushed) - moved)}"
    assert result.plan.verify().ok
