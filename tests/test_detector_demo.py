"""The detector demo's parts: its VOC-layout data reads in GluonCV, its numpy mAP is GluonCV's."""

from __future__ import annotations

import os
import sys

import pytest

from frameworks import needs

needs("mxnet")
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from synthetic_voc import read_voc, write_voc  # noqa: E402
from voc_metric import voc07_map  # noqa: E402

CLASSES = ("square", "triangle", "cross")


def test_synthetic_voc_reads_back_identically_in_gluoncv(tmp_path):
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
