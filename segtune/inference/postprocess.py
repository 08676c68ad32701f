"""Logits to class ids: bilinear upsampling (align_corners=False) to the wanted size and argmax, as
transformers' `post_process_semantic_segmentation` does, and faster on CPU.

Two speed-ups, both giving exactly the ids of the plain computation (tests/test_metrics.py):
`class_argmax`, a running maximum over the class planes, and class pruning in `upsampled_argmax`:
on CPU, with many classes, only the classes that can win somewhere are upsampled. Why pruning
is exact, and when it pays: docs/design/class-pruning.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import strips
from .strips import columns_of, strip_plan, upsample

# Pruning pays from this many classes on: below, finding the candidates costs about what leaving
# some out saves (11 classes at 480x360 on 2 CPU cores: 3.2 ms instead of 4.1 when 3 to 8 classes
# can win, 4.2 instead of 3.2 when all can; at 24 classes already 2.4 instead of 11.9 ms).
PRUNE_MIN_CLASSES = 24
# Below this output size torch's CPU kernel may round a plane differently in the last bit
# depending on how many planes it is given, so leaving classes out could move the others' values.
PRUNE_MIN_PIXELS = 128 * 128


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

    A quick test over all classes, then a finer one for those left; each rules a class out of a
    2x2 cell only by a margin far above float rounding (docs/design/class-pruning.md)."""
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
    # Quick test. What the best class is sure to reach in each cell: the better of the largest
    # smallest corner of a leading class and the smallest corner of the mean of the corner
    # leaders' planes (each distinct leader once; it helps at edges between regions).
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

    # Finer test: beaten at all four corners of a cell by the leaders' mean, or by one leader.
    def beaten_by(rivals, planes):  # rivals: per corner (R, cells) -> (classes, cells) beaten by one
        beaten = None
        for (ys, xs), rival in zip(corners, rivals):
            here = rival[:, None] - margin > planes[None, :, ys, xs]
            beaten = here if beaten is None else beaten.logical_and_(here)
        return beaten.any(0)

    beaten = beaten_by([m[None] for m in mean], left)
    survive = ~beaten.flatten(1).all(1)
    maybe, left, beaten = maybe[survive], left[survive], beaten[survive]
    # the four leaders cost four times the mean: only where the mean left at most half
    if 0 < len(maybe) and 2 * len(maybe) <= len(survive):
        beaten |= beaten_by(at_corner, left)
        maybe = maybe[~beaten.flatten(1).all(1)]
    return None if len(maybe) == classes else maybe


def prunes_classes(batch: torch.Tensor, size) -> bool:
    """Whether upsampled_argmax looks for candidate classes in (B, C, h, w) logits bound for `size`:
    only on CPU (on GPUs upsampling every class is cheap), where it pays and is exact."""
    return batch.device.type == "cpu" and batch.shape[1] >= PRUNE_MIN_CLASSES and size[0] * size[1] >= PRUNE_MIN_PIXELS


def label_dtype(num_classes: int) -> torch.dtype:
    """The smallest dtype that holds the ids of `num_classes` classes: a 48 MP label map takes 48 MB in
    uint8 instead of 384 MB in int64."""
    return torch.uint8 if num_classes <= 256 else torch.int16 if num_classes <= 32768 else torch.int32


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """([B,] C, h, w) logits -> ([B,] H, W) class ids, as `post_process_semantic_segmentation` does
    (in `dtype`: int64 as transformers gives them, or a smaller one from `label_dtype`).

    On CPU, with many classes, only those that can win somewhere (candidate_classes) are
    upsampled: the same ids, without upsampling a hundred planes that lose everywhere. A large
    image is upsampled a strip of rows at a time (strips.py): the same ids, in bounded memory."""
    # contiguous: the strips repeat torch's kernel for contiguous logits (strips.py), and every path must
    # round alike; a channels-last model's logits would otherwise take another kernel in the one call
    batch = (logits if logits.dim() == 4 else logits[None]).float().contiguous()
    pruned = [candidate_classes(item) for item in batch] if prunes_classes(batch, size) else [None] * len(batch)
    if all(c is None for c in pruned) and 4 * batch.shape[0] * batch.shape[1] * size[0] * size[1] <= strips.STRIP_BYTES:
        # small enough for one call over the whole batch
        classes = class_argmax(F.interpolate(batch, size=size, mode="bilinear", align_corners=False)).to(dtype)
    else:
        classes = torch.stack([_argmax(item, size, c, dtype) for item, c in zip(batch, pruned)])
    return classes if logits.dim() == 4 else classes[0]


def _argmax(logits: torch.Tensor, size, candidates: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """(C, h, w) logits -> (H, W) ids of the largest of the `candidates` classes (None: all)."""
    if candidates is not None and len(candidates) == 1:  # one class wins everywhere
        return torch.full(tuple(size), int(candidates[0]), dtype=dtype, device=logits.device)
    planes = logits if candidates is None else logits[candidates]
    plan = strip_plan([planes.shape], size, planes.device.type)
    if len(plan) == 1:
        return class_argmax(upsample(planes, size, 0, size[0]), candidates).to(dtype)
    out = torch.empty(tuple(size), dtype=dtype, device=logits.device)
    columns = columns_of(planes, size[1])
    for lo, hi in plan:
        out[lo:hi] = class_argmax(upsample(planes, size, lo, hi, columns), candidates)
    return out


def class_counts(label_map: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """Pixels per class id of a label map (argmax indices, never negative), as an array indexed by id:
    np.bincount, 5x np.unique's speed, a block of pixels at a time (it widens the ids to int64 first:
    384 MB for a whole 48 MP map)."""
    flat = label_map.ravel()
    counts = np.zeros(0, dtype=np.int64)
    for start in range(0, flat.size, block):
        part = np.bincount(flat[start:start + block])
        if len(part) > len(counts):
            counts = np.pad(counts, (0, len(part) - len(counts)))
        counts[: len(part)] += part
    return counts
