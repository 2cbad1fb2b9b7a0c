"""Real GluonCV detection training steps (SSD, YOLOv3, Faster R-CNN) on synthetic data.

Each family's targets come from GluonCV's own training transforms and its losses are the ones
GluonCV's training scripts use, so a step here is the step users run.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from tunespec.backends.mxnet import import_gluoncv

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from synthetic_voc import draw_sample  # noqa: E402

CLASSES = ("circle", "square", "triangle")
MODELS = {"ssd": "ssd_300_mobilenet0.25_voc", "yolo": "yolo3_mobilenet0.25_voc",
          "frcnn": "faster_rcnn_resnet50_v1b_voc"}
SIZES = {"ssd": 128, "yolo": 128, "frcnn": 224}  # Faster R-CNN keeps 2,000 proposals: needs anchors


def build(family: str, hybridize: bool = True) -> gluon.HybridBlock:
    """A detector as users get it for fine-tuning: built, classes swapped, initialised."""
    gcv = import_gluoncv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = gcv.model_zoo.get_model(MODELS[family], pretrained=False, pretrained_base=False)
        net.initialize()
        net.reset_class(CLASSES)
    if hybridize:
        net.hybridize()
    finish_init(net, SIZES[family])
    for p in net.collect_params().values():  # stands in for pretrained weights
        if p.name.endswith("weight") and len(p.shape) > 1:
            p.initialize(mx.init.MSRAPrelu("in", 0.0), force_reinit=True)
    return net


def finish_init(net: gluon.HybridBlock, size: int) -> None:
    """Run one training-mode forward so that deferred shapes are known. (GluonCV detectors
    trace different graphs for training and inference, and a hybridized one keeps the first.)"""
    x = mx.nd.zeros((1, 3, size, size))
    with autograd.train_mode():
        if "RCNN" in type(net).__name__:
            net(x, mx.nd.array([[[8, 8, size // 2, size // 2]]]), mx.nd.zeros((1, 1, 1)))
        else:
            net(x)


def samples(family: str, count: int, seed: int) -> list[tuple[mx.nd.NDArray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(mx.nd.array(img, dtype="uint8"), boxes)
            for img, boxes in (draw_sample(rng, CLASSES, SIZES[family]) for _ in range(count))]


def step_fn(family: str, net: gluon.HybridBlock) -> Callable[[list], mx.nd.NDArray]:
    """A function from raw samples to the summed detection loss (call it inside autograd.record)."""
    gcv = import_gluoncv()
    presets = gcv.data.transforms.presets
    size = SIZES[family]
    if family == "ssd":
        with autograd.train_mode():
            _, _, anchors = net(mx.nd.zeros((1, 3, size, size)))
        transform = presets.ssd.SSDDefaultTrainTransform(size, size, anchors)
        mbox = gcv.loss.SSDMultiBoxLoss()

        def ssd_loss(batch: list) -> mx.nd.NDArray:
            images, cls_t, box_t = (mx.nd.stack(*parts) for parts in zip(*(transform(*s) for s in batch), strict=True))
            cls_preds, box_preds, _ = net(images)
            total, _, _ = mbox(cls_preds, box_preds, cls_t, box_t)
            return mx.nd.add_n(*total)

        return ssd_loss
    if family == "yolo":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transform = presets.yolo.YOLO3DefaultTrainTransform(size, size, net)

        def yolo_loss(batch: list) -> mx.nd.NDArray:
            parts = list(zip(*(transform(*s) for s in batch), strict=True))
            images, *targets = (mx.nd.stack(*p) for p in parts[:6])
            width = max(p.shape[0] for p in parts[6])
            boxes = mx.nd.stack(*(mx.nd.concat(p, -mx.nd.ones((width - p.shape[0], 4)), dim=0)
                                  if p.shape[0] < width else p for p in parts[6]))
            return mx.nd.add_n(*(loss.sum() for loss in net(images, boxes, *targets)))

        return yolo_loss
    transform = presets.rcnn.FasterRCNNDefaultTrainTransform(size, 4 * size, net)
    rpn_cls, rpn_box = gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False), gluon.loss.HuberLoss(1 / 9.)
    rcnn_cls, rcnn_box = gluon.loss.SoftmaxCrossEntropyLoss(), gluon.loss.HuberLoss()

    def rcnn_loss(batch: list) -> mx.nd.NDArray:  # GluonCV trains one image per device
        losses = []
        for sample in batch:
            image, label, cls_t, box_t, box_m = transform(*sample)  # targets per feature level
            cls_t = mx.nd.array(np.concatenate([np.asarray(c).reshape(-1) for c in cls_t]))
            box_t, box_m = (mx.nd.array(np.concatenate([np.asarray(b).reshape(-1, 4) for b in v]))
                            for v in (box_t, box_m))
            image, label, cls_t, box_t, box_m = (v.expand_dims(0) for v in (
                image, mx.nd.array(label), cls_t, box_t, box_m))
            (cls_pred, box_pred, _, _, _, rpn_score, rpn_boxes, _, rcnn_cls_t, rcnn_box_t, rcnn_box_m,
             _) = net(image, label[:, :, :4], label[:, :, 4:5])
            rpn_score = rpn_score.squeeze(axis=-1)
            n_rpn = (cls_t >= 0).sum()
            losses.append(rpn_cls(rpn_score, cls_t, cls_t >= 0) * cls_t.size / n_rpn)
            losses.append(rpn_box(rpn_boxes, box_t, box_m) * rpn_boxes.size / n_rpn)
            n_rcnn = (rcnn_cls_t >= 0).sum()
            losses.append(rcnn_cls(cls_pred, rcnn_cls_t, rcnn_cls_t.expand_dims(-1) >= 0)
                          * rcnn_cls_t.size / n_rcnn)
            losses.append(rcnn_box(box_pred, rcnn_box_t, rcnn_box_m) * box_pred.size / n_rcnn)
        return mx.nd.add_n(*(loss.sum() for loss in losses))

    return rcnn_loss
