"""The metric tests' reference: `evaluate`'s mean_iou algorithm (metrics/mean_iou), written here
for the tests, apart from segtune's ConfusionMatrix and from the benchmarks' baseline copy.

Per image, ignored label pixels are dropped, then numpy histograms with `num_labels` bins over
[0, num_labels - 1] count the intersection (pixels where prediction equals label), the
prediction and the label; a value outside that range lands in no bin. The areas are summed in
float64 over the images; IoU = intersection / union and accuracy = intersection / label area,
0 / 0 giving NaN, which the means leave out.
"""

from __future__ import annotations

import warnings

import numpy as np


def _areas(pred, label, num_labels: int, ignore_index: int):
    """One image's (intersection, prediction, label) areas per class."""
    pred, label = np.asarray(pred), np.asarray(label)
    scored = label != ignore_index
    pred, label = pred[scored], label[scored]

    def histogram(values):
        return np.histogram(values, bins=num_labels, range=(0, num_labels - 1))[0]

    return histogram(pred[pred == label]), histogram(pred), histogram(label)


def reference_mean_iou(predictions, references, num_labels: int, ignore_index: int) -> dict:
    """mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy."""
    intersect, predicted, labelled = (np.zeros(num_labels, dtype=np.float64) for _ in range(3))
    for pred, label in zip(predictions, references):
        i, p, t = _areas(pred, label, num_labels, ignore_index)
        intersect += i
        predicted += p
        labelled += t
    union = predicted + labelled - intersect
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
        iou, acc = intersect / union, intersect / labelled
        return {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(acc),
                "overall_accuracy": intersect.sum() / labelled.sum(),
                "per_category_iou": iou, "per_category_accuracy": acc}
