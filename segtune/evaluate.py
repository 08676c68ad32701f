"""Scoring a model (or saved predictions) at each annotation's original resolution.

Logits are upsampled bilinearly (align_corners=False) to the mask size and reduced to an
argmax at once, so memory holds one batch and a confusion matrix, never all the logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .data import MaskRules, PairDataset, read_mask
from .errors import SegtuneError
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


def class_argmax(scores: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """([B,] C, H, W) scores -> ([B,] H, W) int64 index of the largest class, the first on ties,
    as `argmax` over the class dimension; `ids[index]` when the planes are those classes.

    On CPU, torch's argmax over a leading dimension is slow (14 ms for 11 x 360 x 480 here); a
    running maximum over the class planes gives the same indices 2 to 7 times faster
    (benchmarks/README.md). NaN scores (a broken model) are not treated as largest."""
    if scores.device.type != "cpu":
        return scores.argmax(-3) if ids is None else ids.to(scores.device)[scores.argmax(-3)]
    ids = range(scores.shape[-3]) if ids is None else ids.tolist()
    best = scores.select(-3, 0).clone()
    index = torch.full(best.shape, ids[0], dtype=torch.int64)
    for c in range(1, scores.shape[-3]):
        plane = scores.select(-3, c)
        better = plane > best  # strictly: an equal later class does not win, as in argmax
        torch.maximum(best, plane, out=best)
        index.masked_fill_(better, ids[c])
    return index


def candidate_classes(logits: torch.Tensor) -> torch.Tensor | None:
    """(C, h, w) logits -> the sorted class ids that can be the argmax anywhere after bilinear
    upsampling to any size; None when every class can (or the logits are not finite).

    Every upsampled value mixes the four logits of one 2x2 cell with weights >= 0 summing to 1.
    So a class loses at every pixel of a cell when its largest corner is below what the best
    class is sure to reach there (a quick test over all classes), or when one rival beats it at
    all four corners (a finer one for the classes left: the difference of two classes is
    bilinear in the cell, so largest at a corner), each by a margin far above float rounding.
    A class that loses in every cell never wins and need not be upsampled. A fine-tuned model's
    image has few candidates: of 150 classes, a handful."""
    classes, h, w = logits.shape
    if classes < 3 or h < 2 or w < 2:
        return None
    smallest, largest = (float(v) for v in torch.aminmax(logits))
    if not (math.isfinite(smallest) and math.isfinite(largest)):  # NaN or inf: no bound holds
        return None
    margin = 1e-4 * max(-smallest, largest) + 1e-30  # float32 rounding of a 4-term mix is ~1e-6 relative
    plane_max = logits.amax((1, 2))
    # Only classes whose plane reaches the smallest per-pixel maximum can lead at a pixel.
    leaders = (plane_max >= logits.amax(0).min()).nonzero().flatten()
    lead = logits if len(leaders) == classes else logits[leaders]
    best = class_argmax(lead, leaders)  # (h, w): a leading class per pixel
    corners = [(slice(dy, h - 1 + dy), slice(dx, w - 1 + dx)) for dy in (0, 1) for dx in (0, 1)]
    # What the best class is sure to reach in each cell: the better of two lower bounds, the
    # largest smallest corner of a leading class, and (at edges between regions, where the
    # leader changes) the smallest corner of the mean of the corner leaders' planes (each
    # distinct leader once), as the best class is at least as good as any mean of classes.
    low_x = torch.minimum(lead[..., :-1], lead[..., 1:])
    single = torch.minimum(low_x[:, :-1], low_x[:, 1:]).amax(0)
    winners = torch.stack([best[ys, xs] for ys, xs in corners])  # (4, cells): each corner's leader
    share = 1 / (winners[:, None] == winners[None]).sum(1)  # 1 / how many corners that leader holds
    at_corner = [logits[:, ys, xs].gather(0, winners) for ys, xs in corners]  # the leaders' logits there
    mean = torch.stack([(x * share).sum(0) for x in at_corner]) / share.sum(0)  # (4 corners, cells)
    sure = torch.maximum(single, mean.amin(0))
    # per pixel, the least that is sure in the (up to four) cells it is a corner of
    padded = F.pad(sure[None], (1, 1, 1, 1), value=float("inf"))[0]
    floor = torch.stack([padded[dy:h + dy, dx:w + dx] for dy in (0, 1) for dx in (0, 1)]).amin(0)
    maybe = (plane_max >= float(floor.min()) - margin).nonzero().flatten()
    maybe = maybe[((logits if len(maybe) == classes else logits[maybe]) - floor).amax((1, 2)) >= -margin]
    left = logits if len(maybe) == classes else logits[maybe]
    # Finer, for the classes left: a difference of two upsampled classes is bilinear in a cell,
    # so it is largest at a corner, and a class beaten at all four corners of a cell by the
    # corner leaders' mean, or by one corner leader, loses at every pixel of the cell. The mean
    # goes first; the four leaders (four times the work) only where the mean left at most half.
    def beaten_by(rivals, planes):  # rivals: per corner (R, cells) -> (classes, cells) beaten by one
        beaten = None
        for (ys, xs), rival in zip(corners, rivals):
            here = rival[:, None] - margin > planes[None, :, ys, xs]
            beaten = here if beaten is None else beaten.logical_and_(here)
        return beaten.any(0)

    beaten = beaten_by([m[None] for m in mean], left)
    survive = ~beaten.flatten(1).all(1)
    maybe, left, beaten = maybe[survive], left[survive], beaten[survive]
    if 0 < len(maybe) and 2 * len(maybe) <= len(survive):
        beaten |= beaten_by(at_corner, left)
        maybe = maybe[~beaten.flatten(1).all(1)]
    return None if len(maybe) == classes else maybe


# Below this many classes, finding the candidates costs about what leaving some out saves (11
# classes at 480x360 on 2 CPU cores: 3.2 ms per image instead of 4.1 when 3 to 8 classes can
# win, 4.2 instead of 3.2 when all can; at 24 classes already 2.4 instead of 11.9 ms).
PRUNE_MIN_CLASSES = 24
# On smaller outputs torch's CPU kernel may round a plane differently in the last bit depending
# on how many planes it is given; from this size on it upsamples each plane alike (tested), so
# leaving classes out cannot move any other class's value.
PRUNE_MIN_PIXELS = 128 * 128


def prunes_classes(batch: torch.Tensor, size) -> bool:
    """Whether upsampled_argmax looks for candidate classes in (B, C, h, w) logits bound for `size`."""
    return batch.device.type == "cpu" and batch.shape[1] >= PRUNE_MIN_CLASSES and size[0] * size[1] >= PRUNE_MIN_PIXELS


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """([B,] C, h, w) logits -> ([B,] H, W) class ids, as `post_process_semantic_segmentation` does.

    On CPU, with many classes, only those that can win somewhere (candidate_classes) are
    upsampled: the same ids, without upsampling a hundred planes that lose everywhere."""
    batch = (logits if logits.dim() == 4 else logits[None]).float()
    pruned = [candidate_classes(item) for item in batch] if prunes_classes(batch, size) else [None] * len(batch)
    if all(c is None for c in pruned):
        classes = class_argmax(F.interpolate(batch, size=size, mode="bilinear", align_corners=False))
    else:
        classes = torch.stack([_pruned_argmax(item, size, c) for item, c in zip(batch, pruned)])
    return classes if logits.dim() == 4 else classes[0]


def _pruned_argmax(logits: torch.Tensor, size, candidates: torch.Tensor | None) -> torch.Tensor:
    if candidates is None:
        candidates = torch.arange(len(logits))
    if len(candidates) == 1:  # one class wins everywhere
        return torch.full(tuple(size), int(candidates[0]), dtype=torch.int64)
    scores = F.interpolate(logits[candidates][None], size=size, mode="bilinear", align_corners=False)
    return class_argmax(scores[0], candidates)


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

    `on_item(index, label, prediction)`, if given, sees each image's (H, W) label and predicted
    class ids (tensors on the model's device) as they are scored (per-image scores, galleries)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
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
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    for batch in tqdm(loader, desc="evaluating", leave=False, disable=not progress):
        for run in _same_shape_runs(batch):
            pixel_values = torch.stack([item["pixel_values"] for item in run]).to(device)
            logits = model(pixel_values=pixel_values).logits
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
    cm.all_reduce()
    model.train(was_training)
    return cm


def evaluate_predictions(samples: list, predictions_dir: Path, num_classes: int, rules: MaskRules,
                         on_item=None) -> ConfusionMatrix:
    """Scores label PNGs named like the images (`<stem>.png`, as `segtune predict` writes them);
    `on_item` as in `evaluate_model`, with the sample's position in `samples` as index."""
    from tqdm.auto import tqdm

    cm = ConfusionMatrix(num_classes, rules.ignore_index)
    for index, s in enumerate(tqdm(samples, desc="scoring", leave=False)):
        pred_path = predictions_dir / (s.stem + ".png")
        if not pred_path.is_file():
            raise SegtuneError(f"{pred_path}: prediction missing for {s.mask_name}")
        pred = read_mask(pred_path)
        label = s.read_mask(rules)
        if pred.shape != label.shape:
            raise SegtuneError(
                f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]} "
                f"but {s.mask_name} is {label.shape[1]}x{label.shape[0]}"
            )
        label, pred = torch.from_numpy(label), torch.from_numpy(pred)
        cm.update(label, pred)
        if on_item is not None:
            on_item(index, label, pred)
    return cm


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
