"""The baseline: SegFormer fine-tuning and evaluation as a user following the Hugging Face
semantic-segmentation tutorial (and the seeds built on it) writes it.

- `SeedDataset`: PIL open + `SegformerImageProcessor` per sample (plain resize to 512x512).
- `seed_training_arguments`: the tutorial's `TrainingArguments`.
- `seed_compute_metrics`: the tutorial's `compute_metrics`: upsample all logits at once, argmax,
  then `evaluate`'s `mean_iou`, here `seed_mean_iou`, a faithful copy of its algorithm
  (`evaluate.load("mean_iou")` needs the Hub, which is out of reach here).
- `seed_trainer`: a `Trainer` to run `evaluate()` with the above.

Only the benchmarks use this; it is the yardstick, not part of segtune.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset


def seed_processor(**kwargs):
    """`SegformerImageProcessor` with its defaults (resize to 512x512, no label reduction);
    the PIL variant is what transformers gives when torchvision is absent."""
    from transformers.models.segformer import SegformerImageProcessorPil

    return SegformerImageProcessorPil(**kwargs)


class SeedDataset(Dataset):
    """The tutorial's Dataset: opens each (image, mask) pair with PIL and runs the processor."""

    def __init__(self, pairs, processor):
        self.pairs = list(pairs)  # [(image_path, mask_path), ...]
        self.processor = processor

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        image_path, mask_path = self.pairs[i]
        image, mask = Image.open(image_path).convert("RGB"), Image.open(mask_path)
        encoded = self.processor(images=image, segmentation_maps=mask, return_tensors="pt")
        return {k: v.squeeze(0) for k, v in encoded.items()}  # remove the batch dimension


def seed_training_arguments(output_dir, **overrides):
    """The tutorial's TrainingArguments (transformers 5 names); `overrides` replace any of them."""
    from transformers import TrainingArguments

    args = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        learning_rate=6e-5,
        num_train_epochs=50,
        save_total_limit=3,
        eval_strategy="steps",
        save_strategy="steps",
        save_steps=20,
        eval_steps=20,
        logging_steps=1,
        eval_accumulation_steps=5,
        remove_unused_columns=False,
        report_to="none",
    )
    return TrainingArguments(**(args | overrides))


def seed_trainer(model, args, eval_dataset, compute_metrics):
    """A Trainer set up as the tutorial's, for `trainer.evaluate()`."""
    from transformers import Trainer

    return Trainer(model=model, args=args, eval_dataset=eval_dataset, compute_metrics=compute_metrics)


def seed_compute_metrics(num_labels: int, ignore_index: int = 255, id2label=None):
    """The tutorial's compute_metrics: all the evaluation's logits (N x C x h x w, numpy) upsampled
    at once to the label size, argmax, then mean IoU; per-class values become scalar keys
    (`iou_<name>`, `accuracy_<name>`) as the tutorial flattens them for the Trainer's log."""
    id2label = id2label or {i: str(i) for i in range(num_labels)}

    def compute_metrics(eval_pred):
        with torch.no_grad():
            logits, labels = eval_pred
            logits_tensor = torch.from_numpy(logits)
            logits_tensor = nn.functional.interpolate(
                logits_tensor, size=labels.shape[-2:], mode="bilinear", align_corners=False
            ).argmax(dim=1)
            pred_labels = logits_tensor.detach().cpu().numpy()
            metrics = seed_mean_iou(pred_labels, labels, num_labels, ignore_index)
            per_category_accuracy = metrics.pop("per_category_accuracy").tolist()
            per_category_iou = metrics.pop("per_category_iou").tolist()
            metrics.update({f"accuracy_{id2label[i]}": v for i, v in enumerate(per_category_accuracy)})
            metrics.update({f"iou_{id2label[i]}": v for i, v in enumerate(per_category_iou)})
            return metrics

    return compute_metrics


# ---------------------------------------------------------------- evaluate's mean_iou


def intersect_and_union(pred_label, label, num_labels, ignore_index, label_map=None, reduce_labels=False):
    """One image's per-class (intersection, union, prediction area, label area), by histogram."""
    pred_label, label = np.array(pred_label), np.array(label)  # copies: the label is edited below
    if label_map is not None:
        original = label.copy()
        for old_id, new_id in label_map.items():
            label[original == old_id] = new_id
    if reduce_labels:  # 0 (background) -> ignored, k -> k - 1
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255

    mask = np.not_equal(label, ignore_index)
    pred_label, label = pred_label[mask], label[mask]
    intersect = pred_label[pred_label == label]

    # num_labels bins over [0, num_labels - 1]: integer k lands in bin k; values outside count nowhere
    bins = dict(bins=num_labels, range=(0, num_labels - 1))
    area_intersect = np.histogram(intersect, **bins)[0]
    area_pred_label = np.histogram(pred_label, **bins)[0]
    area_label = np.histogram(label, **bins)[0]
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label


def seed_mean_iou(predictions, references, num_labels, ignore_index, reduce_labels=False, label_map=None,
                  nan_to_num=None) -> dict:
    """`evaluate`'s mean_iou: per-image histograms summed in float64, then the ratios."""
    totals = [np.zeros((num_labels,), dtype=np.float64) for _ in range(4)]
    for prediction, reference in zip(predictions, references):
        for total, area in zip(totals, intersect_and_union(prediction, reference, num_labels, ignore_index,
                                                           label_map, reduce_labels)):
            total += area
    total_intersect, total_union, _, total_label = totals

    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 for absent classes is NaN, as in evaluate
        iou = total_intersect / total_union
        acc = total_intersect / total_label
        metrics = {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(acc),
            "overall_accuracy": total_intersect.sum() / total_label.sum(),
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }
    if nan_to_num is not None:
        metrics = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in metrics.items()}
    return metrics
