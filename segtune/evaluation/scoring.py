"""Scoring a model (or saved predictions) at each annotation's original resolution.

Logits are upsampled bilinearly (align_corners=False) to the mask size and reduced to an
argmax at once (segtune/inference/postprocess.py), so memory holds one batch and a confusion matrix,
never all the logits.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.pairs import PairDataset
from ..data.reading import MaskRules, read_mask
from ..errors import SegtuneError
from ..inference.geometry import default_stride, window_scores
from ..inference.postprocess import upsampled_argmax
from ..models import architectures
from ..models.masks import pixel_scores
from .metrics import ConfusionMatrix


class EvalDataset(PairDataset, Dataset):
    """Preprocessed image plus the mask at its original size."""

    def __getitem__(self, i):
        image, mask = self.load(i)
        return {"pixel_values": self.transform(image), "labels": torch.from_numpy(mask), "index": i}


def _same_shape_runs(items):
    """Splits a batch into runs of equal input shape (images keep their aspect ratio)."""
    run = []
    for item in items:
        if run and item["pixel_values"].shape != run[0]["pixel_values"].shape:
            yield run
            run = []
        run.append(item)
    if run:
        yield run


@torch.inference_mode()
def evaluate_model(
    model,
    dataset: EvalDataset,
    num_classes: int,
    ignore_index: int = 255,
    batch_size: int = 2,
    num_workers: int = 0,
    progress: bool = True,
    on_item=None,
) -> ConfusionMatrix:
    """Streams the dataset through the model; returns the (rank-summed) confusion matrix.

    `model`: a torch model, or a Runner (segtune/inference/runners.py: an exported model run by ONNX Runtime or
    OpenVINO), scored the same way. `on_item(index, label, prediction)`, if given, sees each image's (H, W)
    label and predicted class ids (tensors on the model's device) as they are scored (per-image scores,
    galleries)."""
    from tqdm.auto import tqdm

    if hasattr(dataset, "evaluate_into"):  # rasters scored tile by tile (evaluation/rasters.py)
        return dataset.evaluate_into(model, num_classes, ignore_index, batch_size, progress, on_item)
    if not isinstance(model, torch.nn.Module):  # a Runner: pixel values in, logits out
        return _evaluate_runner(model, dataset, num_classes, ignore_index, batch_size, num_workers, progress,
                                on_item)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype  # --dtype bfloat16: bf16 inputs
    was_training = model.training
    model.eval()
    if isinstance(dataset, torch.utils.data.IterableDataset):
        pass  # a stream arrives already sharded by rank (hf_sources.StreamingSource)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        # Each rank scores every world_size-th image once (no padding repeats); matrices are summed.
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        dataset = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # DDP syncs BatchNorm statistics at the start of a forward pass, so after the last step
        # each rank holds its own; score with rank 0's, the ones that get saved.
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    # Training in bf16, accelerate wraps the model's forward in autocast; score with the forward as
    # the model defines it, in the model's own precision, so evaluation inside training stays exact.
    forward = getattr(model, "_original_forward", None) or model
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    side = _window_side(getattr(model, "config", None))
    for batch in tqdm(loader, desc="evaluating", leave=False, disable=not progress):
        for run in _same_shape_runs(batch):
            pixel_values = torch.stack([item["pixel_values"] for item in run]).to(device, dtype)
            _score(_scores(lambda x: pixel_scores(forward, x).float(), pixel_values, side, batch_size),
                   run, device, cm, on_item)
    cm.all_reduce()
    model.train(was_training)
    return cm


def _window_side(config) -> int | None:
    """The square a model of windows (EoMT) runs on: such a model is scored window by window, as it predicts."""
    arch = architectures.of_config(config) if config is not None else None
    return architectures.input_size(config) if arch is not None and arch.windows else None


def _scores(scores_of, pixel_values, side: int | None, batch_size: int):
    """(B, C, h, w) scores of a batch: one pass, or for a model of windows, each image's windows
    (the Segmenter's default stride) at the input size."""
    if side is None:
        return scores_of(pixel_values)
    return torch.stack([window_scores(scores_of, x, side, default_stride(side), batch_size, pad=True)
                        for x in pixel_values])


def _score(logits, run, device, cm: ConfusionMatrix, on_item) -> None:
    """One forward pass's logits into the confusion matrix (and on_item)."""
    labels = [item["labels"].to(device) for item in run]
    if all(label.shape == labels[0].shape for label in labels):  # one upsampling and update for all
        predictions = upsampled_argmax(logits, labels[0].shape)
        cm.update(torch.stack(labels), predictions)
    else:
        predictions = [upsampled_argmax(item_logits, label.shape) for item_logits, label in zip(logits, labels)]
        for label, prediction in zip(labels, predictions):
            cm.update(label, prediction)
    if on_item is not None:
        for item, label, prediction in zip(run, labels, predictions):
            on_item(item["index"], label, prediction)


def _evaluate_runner(runner, dataset, num_classes, ignore_index, batch_size, num_workers, progress, on_item):
    """evaluate_model through a Runner (one process: an exported model is not run distributed)."""
    from tqdm.auto import tqdm

    device = torch.device(runner.device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    side = _window_side(architectures.runner_config(runner))
    for batch in tqdm(loader, desc="evaluating", leave=False, disable=not progress):
        for run in _same_shape_runs(batch):
            pixel_values = torch.stack([item["pixel_values"] for item in run])
            _score(_scores(lambda x: torch.as_tensor(runner(x)).to(device).float(), pixel_values, side, batch_size),
                   run, device, cm, on_item)
    return cm


def evaluate_predictions(samples: list, predictions_dir: Path, num_classes: int, rules: MaskRules,
                         on_item=None, failed: list | None = None) -> ConfusionMatrix:
    """Scores label PNGs named like the images (`<stem>.png`, as `segtune predict` writes them);
    `on_item` as in `evaluate_model`, with the sample's position in `samples` as index. A prediction
    missing, unreadable or of another size raises SegtuneError; with a `failed` list, it is said in one
    line, appended there ({"image", "error"}) and left out, and the others are scored."""
    import logging

    from tqdm.auto import tqdm

    cm = ConfusionMatrix(num_classes, rules.ignore_index)
    for index, s in enumerate(tqdm(samples, desc="scoring", leave=False)):
        try:
            label, pred = _prediction_pair(s, predictions_dir / (s.stem + ".png"), rules)
        except SegtuneError as error:
            if failed is None:
                raise
            logging.getLogger("segtune").warning("segtune: warning: %s (left out; the others are scored)", error)
            failed.append({"image": s.name, "error": str(error)})
            continue
        cm.update(label, pred)
        if on_item is not None:
            on_item(index, label, pred)
    return cm


def _prediction_pair(sample, pred_path: Path, rules: MaskRules):
    if not pred_path.is_file():
        raise SegtuneError(f"{pred_path}: prediction missing for {sample.mask_name}")
    pred = read_mask(pred_path)
    label = sample.read_mask(rules)
    if pred.shape != label.shape:
        raise SegtuneError(f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]} "
                           f"but {sample.mask_name} is {label.shape[1]}x{label.shape[0]}")
    return torch.from_numpy(label), torch.from_numpy(pred)


def format_table(metrics: dict, class_names) -> str:
    """A plain-text table for people; metrics.json is the machine-readable twin."""
    width = max([len(n) for n in class_names] + [8])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}"]
    for name, iou, acc in zip(class_names, metrics["per_category_iou"], metrics["per_category_accuracy"]):
        fmt = lambda v: "    n/a" if np.isnan(v) else f"{v:7.4f}"  # noqa: E731
        lines.append(f"{name:<{width}}  {fmt(iou)}  {fmt(acc)}")
    lines.append("-" * (width + 18))
    lines.append(f"{'mean IoU':<{width}}  {metrics['mean_iou']:7.4f}")
    lines.append(f"{'mean accuracy':<{width}}  {metrics['mean_accuracy']:7.4f}")
    lines.append(f"{'overall accuracy':<{width}}  {metrics['overall_accuracy']:7.4f}")
    return "\n".join(lines)

GALLERY_SIZE = 8


# ---------------------------------------------------------------- per-image scores


class ImageScores:
    """An `evaluate_model(on_item=...)` callback: each image's mean IoU (`evaluate`'s semantics on
    that image alone: classes absent from both label and prediction left out) and pixel accuracy,
    plus the predictions of the `keep` lowest-IoU images, for the gallery."""

    def __init__(self, num_classes: int, ignore_index: int = 255, keep: int = GALLERY_SIZE):
        self.num_classes, self.ignore_index, self.keep = num_classes, ignore_index, keep
        self.scores: dict[int, tuple[float, float]] = {}  # index -> (mean IoU, pixel accuracy); NaN: no pixel
        self._worst: list = []  # heap of (-iou, index, prediction): the `keep` lowest

    def __call__(self, index: int, label, prediction) -> None:
        label, prediction = torch.as_tensor(label), torch.as_tensor(prediction)
        cm = ConfusionMatrix(self.num_classes, self.ignore_index, device=label.device)
        cm.update(label, prediction)
        if int(cm.mat.sum()) == 0:  # every pixel ignored: nothing to score
            self.scores[int(index)] = (float("nan"), float("nan"))
            return
        metrics = cm.compute()
        iou, accuracy = metrics["mean_iou"], metrics["overall_accuracy"]
        self.scores[int(index)] = (iou, accuracy)
        if self.keep > 0 and not math.isnan(iou):
            entry = (-iou, -int(index), prediction.cpu().numpy().astype(np.int32))
            if len(self._worst) < self.keep:
                heapq.heappush(self._worst, entry)
            elif entry[:2] > self._worst[0][:2]:
                heapq.heapreplace(self._worst, entry)

    def gather(self) -> None:
        """Under torch.distributed each rank scores its own share of the images: afterwards every rank
        holds all the scores and the `keep` lowest overall. A no-op in a single process."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, (self.scores, self._worst))
        self.scores = {index: score for scores, _ in parts for index, score in scores.items()}
        self._worst = heapq.nlargest(self.keep, (entry for _, worst in parts for entry in worst), key=lambda e: e[:2])
        heapq.heapify(self._worst)

    def worst(self) -> list[tuple[int, float, np.ndarray]]:
        """(index, mean IoU, prediction) of the kept images, lowest IoU first (ties: lower index)."""
        return [(-i, -iou, pred) for iou, i, pred in sorted(self._worst, key=lambda e: (-e[0], -e[1]))]
