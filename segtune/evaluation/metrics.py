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
        self._pairs = None  # scratch space for update()

    def update(self, label: torch.Tensor, prediction: torch.Tensor) -> None:
        """Adds one or more label/prediction maps of the same shape."""
        label = torch.as_tensor(label, device=self.mat.device).flatten()
        prediction = torch.as_tensor(prediction, device=self.mat.device).flatten()
        if label.shape != prediction.shape:
            raise ValueError(f"label and prediction differ in size: {label.shape} vs {prediction.shape}")
        if label.numel() == 0:
            return
        # Count every (label, prediction) value pair present in one bincount over the values' own
        # range (about 256 x C bins), then fold the ignored row and the out-of-range values into
        # the matrix: four passes over the pixels instead of masking and remapping each of them.
        label_min, label_max = (int(v) for v in torch.aminmax(label))
        pred_min, pred_max = (int(v) for v in torch.aminmax(prediction))
        rows, cols, ignore_row = label_max + 1, pred_max + 1, self.ignore_index
        if min(label_min, pred_min) < 0 or rows * cols > 2**24:  # negative or huge values: remap them first
            label, prediction, ignore_row = self._remapped(label.long(), True), self._remapped(prediction.long()), None
            rows = cols = self.num_classes + 2
        # label * cols + prediction, in a buffer kept between updates: a fresh tensor of this size
        # costs more in page faults than the arithmetic (3x here)
        if self._pairs is None or self._pairs.numel() < label.numel():
            self._pairs = torch.empty(label.numel(), dtype=torch.int64, device=self.mat.device)
        pairs = self._pairs[: label.numel()]
        torch.add(prediction.long(), label.long(), alpha=cols, out=pairs)  # .long(): no copy for int64 maps
        self._add_counts(torch.bincount(pairs, minlength=rows * cols).view(rows, cols), ignore_row)

    def _remapped(self, values: torch.Tensor, labels: bool = False) -> torch.Tensor:
        """Values outside [0, num_classes) -> num_classes; in labels the ignore index -> num_classes + 1."""
        n = self.num_classes
        out = torch.where((values >= 0) & (values < n), values, n)
        return torch.where(values == self.ignore_index, n + 1, out) if labels else out

    def _add_counts(self, counts: torch.Tensor, ignore_row: int | None) -> None:
        """Adds a (label value x prediction value) count table: the ignored row dropped (the last
        one when None), values outside the classes summed into the matrix's last row and column."""
        n = self.num_classes
        ignore_row = counts.shape[0] - 1 if ignore_row is None else ignore_row
        if 0 <= ignore_row < counts.shape[0]:
            counts[ignore_row] = 0
        folded = torch.zeros((counts.shape[0], n + 1), dtype=torch.int64, device=counts.device)
        folded[:, : min(counts.shape[1], n)] = counts[:, :n]
        folded[:, n] += counts[:, n:].sum(1)
        self.mat[: min(counts.shape[0], n)] += folded[:n]
        self.mat[n] += folded[n:].sum(0)

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
    names = tuple(class_names)
    if names == ("background", "foreground") and "per_category_iou" in metrics:  # --binary masks
        out["foreground_iou"] = clean(metrics["per_category_iou"][1])
    return out


# ---------------------------------------------------------------- a drop-in for any Trainer

TRAINER_PAD = -100  # the value the Trainer (and accelerate, across processes) pads labels with


def _evaluate_reduced(label: torch.Tensor) -> torch.Tensor:
    """`evaluate`'s reduce_labels, as it does it: 0 -> 255, k -> k - 1, 255 stays 255."""
    label = label.long()
    out = label - 1
    out[(label == 0) | (label == 255)] = 255
    return out


class MeanIoU:
    """`evaluate`'s `mean_iou`, streamed: the `compute_metrics` of a plain `transformers.Trainer`.

    With `TrainingArguments(batch_eval_metrics=True)` the Trainer calls it once per evaluation
    batch: each batch's logits are upsampled (bilinear, align_corners=False) to the size of its
    labels, reduced to an argmax, and added to a confusion matrix; the call with
    `compute_result=True` (the last batch) returns evaluate's keys and starts afresh. Memory holds
    one batch, never all the logits, and the numbers are evaluate's to float rounding::

        trainer = Trainer(..., compute_metrics=MeanIoU(num_labels=150),
                          args=TrainingArguments(..., batch_eval_metrics=True))

    Without `batch_eval_metrics` it works too (one call with every logit). Under several processes
    the Trainer gathers each batch on every process first, so all of them count the same pixels.
    Labels the Trainer padded (-100) are ignored. Per-class values come back as lists (the Trainer
    writes its metrics to JSON).

    Called on label maps instead, `MeanIoU(n)(predictions, references)` (lists of (H, W) arrays, or
    arrays of them) returns what `evaluate.load("mean_iou").compute(predictions=..., references=...,
    num_labels=n, ignore_index=..., reduce_labels=...)` does: per-class values as numpy arrays.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False):
        self.num_labels, self.ignore_index, self.reduce_labels = int(num_labels), int(ignore_index), bool(reduce_labels)
        self.confusion: ConfusionMatrix | None = None  # the evaluation in progress

    def reset(self) -> None:
        """Forgets the batches counted so far."""
        self.confusion = None

    def _labels(self, labels, padded: bool = False) -> torch.Tensor:
        """Labels as evaluate scores them; `padded`: the Trainer's padding (-100) ignored."""
        labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        pad = labels == TRAINER_PAD if padded else None
        labels = _evaluate_reduced(labels) if self.reduce_labels else labels.long()
        return labels if pad is None else labels.masked_fill(pad, self.ignore_index)

    def update(self, logits, labels) -> None:
        """Adds a batch: (B, C, h, w) logits (a tensor or array; a tuple: its first item) and
        (B, H, W) labels as the dataset gives them (before any label reduction)."""
        from ..inference.postprocess import upsampled_argmax

        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
        labels = self._labels(labels, padded=True).to(logits.device)
        if self.confusion is None:
            self.confusion = ConfusionMatrix(self.num_labels, self.ignore_index, device=logits.device)
        size = tuple(labels.shape[-2:])
        for start in range(0, len(logits), 8):  # a whole evaluation at once (no batch_eval_metrics): in slices
            chunk = logits[start:start + 8]
            self.confusion.update(labels[start:start + 8], upsampled_argmax(chunk, size))

    def compute(self) -> dict:
        """evaluate's keys for the batches added since the last compute (which starts afresh)."""
        confusion = self.confusion or ConfusionMatrix(self.num_labels, self.ignore_index)
        self.confusion = None
        return confusion.compute()

    def __call__(self, predictions=None, references=None, compute_result: bool = True) -> dict:
        """The Trainer's call, `(EvalPrediction, compute_result=...)`, or `(predictions, references)`
        label maps; see the class."""
        if hasattr(predictions, "label_ids"):  # an EvalPrediction from the Trainer
            with torch.no_grad():
                self.update(predictions.predictions, predictions.label_ids)
            if not compute_result:
                return {}
            result = self.compute()
            return {k: [float(x) for x in v] if isinstance(v, np.ndarray) else v for k, v in result.items()}
        if predictions is None or references is None:
            raise TypeError("MeanIoU: give (predictions, references) label maps, or use it as a Trainer's "
                            "compute_metrics")
        confusion = ConfusionMatrix(self.num_labels, self.ignore_index)
        for prediction, reference in zip(predictions, references, strict=True):
            prediction = torch.as_tensor(np.asarray(prediction)).long()
            confusion.update(self._labels(reference), prediction)
        return confusion.compute()
