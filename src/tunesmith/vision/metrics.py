"""Detection metrics of our own, only where Ultralytics does not hand them out: the seed's
corner-format IoU, and mAP over plain lists of boxes (for detections made elsewhere, e.g. a
VLM's or another tool's). Validation of a trained detector uses Ultralytics' own numbers.

mAP is computed as Ultralytics computes it, so the two agree (tests/test_vision.py checks a
hand-made case): detections and labels are matched one to one per IoU threshold (0.50, 0.55,
... 0.95) within a class, the best IoU first; AP is the area under the precision envelope,
sampled at 101 recall points (COCO) and integrated with the trapezoid rule, with precision 0
beyond the highest recall reached; mAP is the mean over the classes that have labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
Box = Sequence[float]  # x1, y1, x2, y2


def calculate_iou(box1: Box, box2: Box) -> float:
    """The seed's IoU of two corner boxes [x1, y1, x2, y2]; 0 when the union is empty."""
    inter_w = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    inter_h = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = inter_w * inter_h
    area1 = (box1[2] - box1[0]) * (box1[3] - box1[1])
    area2 = (box2[2] - box2[0]) * (box2[3] - box2[1])
    union = area1 + area2 - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(labels: np.ndarray, detections: np.ndarray) -> np.ndarray:
    """IoU of every label (rows) with every detection (columns), corner boxes."""
    if len(labels) == 0 or len(detections) == 0:
        return np.zeros((len(labels), len(detections)))
    a, b = labels[:, None, :], detections[None, :, :]
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(
    label_classes: np.ndarray,
    label_boxes: np.ndarray,
    det_classes: np.ndarray,
    det_boxes: np.ndarray,
) -> np.ndarray:
    """(detections, 10) booleans: whether each detection is a true positive at each IoU
    threshold. One image; each label is matched by at most one detection of its class."""
    correct = np.zeros((len(det_classes), len(IOU_THRESHOLDS)), dtype=bool)
    iou = iou_matrix(label_boxes, det_boxes)
    iou = iou * (label_classes[:, None] == det_classes[None, :])
    for t, threshold in enumerate(IOU_THRESHOLDS):
        labels, dets = np.nonzero(iou >= threshold)
        used_labels, used_dets = set(), set()
        for k in np.argsort(-iou[labels, dets], kind="stable"):
            label, det = int(labels[k]), int(dets[k])
            if label not in used_labels and det not in used_dets:
                used_labels.add(label)
                used_dets.add(det)
                correct[det, t] = True
    return correct


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope of one class's PR curve (101-point interpolation)."""
    last = recall[-1] if len(recall) else 1.0
    mrec = np.concatenate(([0.0], recall, [last], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    envelope = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, mrec, envelope), x))


def mean_average_precision(images: list[dict]) -> dict:
    """mAP50 and mAP50-95 over images given as
    {"labels": [(class, box)], "detections": [(class, confidence, box)]}, boxes in corners.
    Returns {"map50", "map50_95", "per_class": {class: {"ap50", "ap50_95", "labels"}}}."""
    correct, confidences, det_classes, label_classes = [], [], [], []
    for image in images:
        lc = np.array([c for c, _ in image["labels"]], dtype=int)
        lb = np.array([b for _, b in image["labels"]], dtype=float).reshape(-1, 4)
        dc = np.array([c for c, _, _ in image["detections"]], dtype=int)
        dconf = np.array([s for _, s, _ in image["detections"]], dtype=float)
        db = np.array([b for _, _, b in image["detections"]], dtype=float).reshape(-1, 4)
        correct.append(match(lc, lb, dc, db))
        confidences.append(dconf)
        det_classes.append(dc)
        label_classes.append(lc)
    return _ap_by_class(
        np.concatenate(correct) if correct else np.zeros((0, 10), bool),
        np.concatenate(confidences) if confidences else np.zeros(0),
        np.concatenate(det_classes) if det_classes else np.zeros(0, int),
        np.concatenate(label_classes) if label_classes else np.zeros(0, int),
    )


def _ap_by_class(correct, confidences, det_classes, label_classes) -> dict:
    order = np.argsort(-confidences, kind="stable")
    correct, det_classes = correct[order], det_classes[order]
    per_class = {}
    for cls, n_labels in zip(*np.unique(label_classes, return_counts=True), strict=True):
        hits = correct[det_classes == cls]
        ap = np.zeros(len(IOU_THRESHOLDS))
        if len(hits):
            tp = hits.cumsum(0)
            fp = (~hits).cumsum(0)
            recall, precision = tp / n_labels, tp / (tp + fp)
            ap = np.array([average_precision(recall[:, t], precision[:, t]) for t in range(10)])
        per_class[int(cls)] = {"ap50": ap[0], "ap50_95": ap.mean(), "labels": int(n_labels)}
    values = list(per_class.values())
    return {
        "map50": float(np.mean([v["ap50"] for v in values])) if values else 0.0,
        "map50_95": float(np.mean([v["ap50_95"] for v in values])) if values else 0.0,
        "per_class": per_class,
    }
