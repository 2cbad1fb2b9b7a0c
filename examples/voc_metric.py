"""VOC2007 mean average precision (11-point, IoU 0.5) in numpy, for the torch half of the demo.

The MXNet half uses GluonCV's ``VOC07MApMetric``; tests/test_detector_demo.py checks that this
gives the same numbers, so both halves report the same metric without torch needing GluonCV.
"""

from __future__ import annotations

import numpy as np


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with many, in VOC's pixel convention (inclusive ends: +1)."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1, 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1, 0, None)
    inter = ix * iy
    area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def voc07_map(detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
              truths: list[tuple[np.ndarray, np.ndarray]], num_classes: int,
              iou_thresh: float = 0.5) -> tuple[float, list[float]]:
    """mAP and per-class AP. ``detections``: per image (boxes N x 4, labels N, scores N);
    ``truths``: per image (boxes M x 4, labels M). A class without ground truth gets NaN."""
    aps = []
    for c in range(num_classes):
        scored: list[tuple[float, bool]] = []
        n_truth = 0
        for (boxes, labels, scores), (gt_boxes, gt_labels) in zip(detections, truths, strict=True):
            gt = gt_boxes[gt_labels == c]
            n_truth += len(gt)
            taken = np.zeros(len(gt), bool)
            mine = labels == c
            for i in np.argsort(-scores[mine], kind="stable"):
                box, score = boxes[mine][i], float(scores[mine][i])
                hit = False
                if len(gt):
                    ious = _iou(box, gt)
                    j = int(np.argmax(ious))
                    if ious[j] >= iou_thresh and not taken[j]:
                        taken[j] = hit = True
                scored.append((score, hit))
        if n_truth == 0:
            aps.append(float("nan"))
            continue
        scored.sort(key=lambda s: -s[0])
        hits = np.array([h for _, h in scored], dtype=float)
        tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
        recall = tp / n_truth
        precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
        ap = np.mean([precision[recall >= t].max() if np.any(recall >= t) else 0.0
                      for t in np.arange(0.0, 1.1, 0.1)])
        aps.append(float(ap))
    return float(np.nanmean(aps)), aps
