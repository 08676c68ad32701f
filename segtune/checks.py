"""Reading every pair once before training: problems, class statistics, and `--skip-bad`.

`scan` decodes each pair fully (in threads) and gathers what `segtune inspect` shows: image
sizes, pixels and images per class, and each bad file with its problem. `checked_labels` is
what training and evaluation call: it refuses a dataset with blocking problems, or leaves
the bad pairs out when asked to.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .data import SegmentationData, check_sizes
from .errors import SegtuneError
from .labels import LabelSet
from .sources import split_samples

log = logging.getLogger("segtune")


@dataclass
class SplitStats:
    pairs: int = 0
    min_size: tuple[int, int] | None = None  # (width, height), smallest area
    max_size: tuple[int, int] | None = None
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per class id
    image_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # images containing it
    ignored_pixels: int = 0
    bad: list = field(default_factory=list)  # (sample, message)

    def add(self, size, counts: np.ndarray, ignored: int) -> None:
        self.pairs += 1
        area = size[0] * size[1]
        if self.min_size is None or area < self.min_size[0] * self.min_size[1]:
            self.min_size = size
        if self.max_size is None or area > self.max_size[0] * self.max_size[1]:
            self.max_size = size
        n = max(len(self.pixel_counts), len(counts))
        self.pixel_counts = _grow(self.pixel_counts, n) + _grow(counts, n)
        self.image_counts = _grow(self.image_counts, n) + (_grow(counts, n) > 0)
        self.ignored_pixels += ignored

    @property
    def largest_id(self) -> int:
        return len(self.pixel_counts) - 1


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    return np.pad(a, (0, n - len(a))) if len(a) < n else a


def _read_pair(sample, rules):
    """-> (problem or None, (w, h), per-class pixel counts, ignored pixels)."""
    try:
        image, mask = sample.read(rules)
        check_sizes(sample, image, mask)
    except SegtuneError as e:
        return str(e), None, None, 0
    ignored = mask == rules.ignore_index
    values = mask[~ignored]
    if values.size and values.min() < 0:
        return f"{sample.mask_name}: mask has negative values", None, None, 0
    return None, (image.width, image.height), np.bincount(values.ravel()), int(ignored.sum())


def scan(data: SegmentationData, splits=("train", "val"), progress=None,
         num_classes: int | None = None) -> dict[str, SplitStats]:
    """Reads every pair of `splits`; with `num_classes`, a mask with a class id outside them is bad too.

    The statistics count the good pairs only.
    """
    stats = {}
    rules = data.rules
    for split in splits:
        samples = getattr(data, split) or []
        stats[split] = split_stats = SplitStats()
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            results = pool.map(lambda s: _read_pair(s, rules), samples)
            if progress:
                results = progress(results, total=len(samples), desc=f"checking {split}")
            for sample, (problem, size, counts, ignored) in zip(samples, results):
                if problem is None and num_classes is not None and len(counts) > num_classes:
                    problem = _out_of_range(sample, len(counts) - 1, num_classes, data.ignore_index)
                if problem:
                    split_stats.bad.append((sample, problem))
                else:
                    split_stats.add(size, counts, ignored)
        data.mask_max[split] = split_stats.largest_id
    return stats


def _out_of_range(sample, top: int, num_classes: int, ignore_index: int) -> str:
    hint = " (ADE20K-style data needs --reduce-labels)" if top == num_classes else ""
    return (f"{sample.mask_name}: mask has class id {top}, outside the {num_classes} classes "
            f"0..{num_classes - 1} and not the ignore index {ignore_index}{hint}")


def blocking_problems(data: SegmentationData, stats: dict[str, SplitStats]) -> list[str]:
    """Every problem that stops training, one line each, naming the file."""
    lines = list(data.problems)
    for split, split_stats in stats.items():
        lines += [message for _, message in split_stats.bad]
        if split == "val" and not getattr(data, split):
            lines.append(f"{data.source}: the validation split is empty")
    return lines


def _drop_bad(data: SegmentationData, stats: dict[str, SplitStats], lines: list[str]) -> None:
    log.warning("segtune: --skip-bad: leaving out %d problem(s):\n  %s", len(lines), "\n  ".join(lines))
    bad = {sample.name for split_stats in stats.values() for sample, _ in split_stats.bad}
    if data.unsplit is not None and {"train", "val"} <= stats.keys():  # split the good pairs afresh
        pairs, val_split, seed = data.unsplit
        data.train, data.val = split_samples([s for s in pairs if s.name not in bad], val_split, seed, data.source)
    for split in stats:
        setattr(data, split, [s for s in getattr(data, split) if s.name not in bad])
        if not getattr(data, split):
            raise SegtuneError(f"{data.source}: no good pairs left in the {split} split")


def checked_labels(data: SegmentationData, labels: LabelSet | None, splits=("train", "val"), progress=None,
                   skip_bad: bool = False) -> LabelSet:
    """Checks the data once and returns its classes.

    Given labels win, then the data's own names; without either, classes are numbered up to
    the largest id found in the masks.
    """
    labels = labels or data.labels
    data.read_colours_of(labels)
    stats = scan(data, splits, progress=progress, num_classes=len(labels) if labels is not None else None)
    lines = blocking_problems(data, stats)
    if lines and not skip_bad:
        more = f"\n... and {len(lines) - 20} more problems" if len(lines) > 20 else ""
        log.warning("segtune: `segtune inspect` lists every problem; --skip-bad trains on the good pairs only")
        raise SegtuneError("\n".join(lines[:20]) + more)
    if lines:
        _drop_bad(data, stats, lines)
    if labels is not None:
        return labels
    top = max(data.mask_max.values())
    if top < 0:
        raise SegtuneError(f"{data.source}: every mask pixel is ignored; nothing to learn or score")
    return LabelSet.numbered(top + 1)
