"""Mean IoU with exactly the semantics of Hugging Face `evaluate`'s `mean_iou`, streamed.

`evaluate` keeps per-class intersection/union sums over the whole dataset. A confusion
matrix holds the same information in constant memory, and one extra row and column
("out of range") reproduces its edge cases: a prediction outside the class range counts
for nothing (but still adds to the label's area), a label outside the range (and not the
ignore index) adds nothing to any label area but still counts the prediction.
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates (label, prediction) pixel counts; index `num_classes` means "out of range"."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros((num_classes + 1, num_classes + 1), dtype=torch.int64, device=device)

    def update(self, label: torch.Tensor, prediction: torch.Tensor) -> None:
        """Adds one or more label/prediction maps of the same shape."""
        label = torch.as_tensor(label, device=self.mat.device).flatten().long()
        prediction = torch.as_tensor(prediction, device=self.mat.device).flatten().long()
        if label.shape != prediction.shape:
            raise ValueError(f"label and prediction differ in size: {label.shape} vs {prediction.shape}")
        keep = label != self.ignore_index
        label, prediction = label[keep], prediction[keep]
        n = self.num_classes
        label = torch.where((label >= 0) & (label < n), label, n)
        prediction = torch.where((prediction >= 0) & (prediction < n), prediction, n)
        self.mat += torch.bincount(label * (n + 1) + prediction, minlength=(n + 1) ** 2).reshape(n + 1, n + 1)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat.to(self.mat.device)

    def all_reduce(self) -> None:
        """Sums the matrix across ranks when torch.distributed is running."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat)

    def compute(self) -> dict:
        """Returns `evaluate`'s keys: mean_iou, mean_accuracy, overall_accuracy, per-category arrays."""
        mat = self.mat.cpu().double().numpy()
        n = self.num_classes
        intersect = np.diag(mat)[:n]
        area_label = mat[:n, :].sum(axis=1)  # includes predictions out of range
        area_pred = mat[:, :n].sum(axis=0)  # includes labels out of range
        union = area_pred + area_label - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union
            acc = intersect / area_label
            overall = intersect.sum() / area_label.sum()
            mean_iou = np.nanmean(iou) if not np.all(np.isnan(iou)) else float("nan")
            mean_acc = np.nanmean(acc) if not np.all(np.isnan(acc)) else float("nan")
        return {
            "mean_iou": float(mean_iou),
            "mean_accuracy": float(mean_acc),
            "overall_accuracy": float(overall),
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }


def metrics_to_json(metrics: dict, class_names) -> dict:
    """Per-category arrays become {class name: value}, NaN becomes None (JSON null)."""

    def clean(x):
        x = float(x)
        return None if np.isnan(x) else x

    out = {}
    for key, value in metrics.items():
        if key.startswith("per_category"):
            out[key] = {name: clean(v) for name, v in zip(class_names, value)}
        elif isinstance(value, (float, int, np.floating)):
            out[key] = clean(value)
        else:
            out[key] = value
    return out
