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

from ..errors import SegtuneError
from .label_checks import (MaskFacts, binary_labels, label_findings, log_findings, looks_interpolated, mask_facts,
                           problem_lines)
from .labels import LabelSet
from .pairs import SegmentationData, StreamedData, check_sizes
from .sources.splits import split_samples

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
    # for label_checks, of every mask decoded (good, or bad only for ids outside the classes):
    raw_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # stored values, before the rules
    raw_image_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # masks holding each value
    raw_masks: int = 0  # masks with stored-value counts (colour-coded ones have none)
    interp_judged: int = 0  # masks with enough boundary to judge interpolation
    interp_flagged: list = field(default_factory=list)  # their in-between share, for those that look interpolated
    outside: list = field(default_factory=list)  # the largest id of each mask with ids outside the classes

    def add_facts(self, facts: MaskFacts | None) -> None:
        if facts is None:
            return
        if facts.histogram is not None:
            n = max(len(self.raw_counts), len(facts.histogram))
            self.raw_counts = _grow(self.raw_counts, n) + _grow(facts.histogram, n)
            self.raw_image_counts = _grow(self.raw_image_counts, n) + (_grow(facts.histogram, n) > 0)
            self.raw_masks += 1
        interpolated = looks_interpolated(facts)
        if interpolated is not None:
            self.interp_judged += 1
            if interpolated:
                self.interp_flagged.append(facts.between / facts.boundary)

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


class _Recording:
    """The mask rules, keeping the stored values they were given (for label_checks.mask_facts)."""

    def __init__(self, rules):
        self.rules, self.stored = rules, None

    def __getattr__(self, name):
        return getattr(self.rules, name)

    def apply(self, mask, name):
        self.stored = mask
        return self.rules.apply(mask, name)


def _read_pair(sample, rules):
    """-> (problem or None, (w, h), per-class pixel counts, ignored pixels, label_checks.MaskFacts)."""
    if hasattr(sample, "scan"):  # a raster of any size: read a block at a time (band_data.RasterSample)
        return sample.scan(rules)
    recording = _Recording(rules)
    try:
        image, mask = sample.read(recording)
        check_sizes(sample, image, mask)
    except SegtuneError as e:
        return str(e), None, None, 0, None
    ignored = mask == rules.ignore_index
    values = mask[~ignored]
    if values.size and values.min() < 0:
        return f"{sample.mask_name}: mask has negative values", None, None, 0, None
    return (None, (image.width, image.height), np.bincount(values.ravel()), int(ignored.sum()),
            mask_facts(recording.stored))


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
            for sample, (problem, size, counts, ignored, facts) in zip(samples, results):
                split_stats.add_facts(facts)
                if problem is None and num_classes is not None and len(counts) > num_classes:
                    problem = _out_of_range(sample, len(counts) - 1, num_classes, data.ignore_index)
                    split_stats.outside.append(len(counts) - 1)
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
    labels = labels or data.labels or (binary_labels() if data.binary else None)
    data.read_colours_of(labels)
    stats = scan(data, splits, progress=progress, num_classes=len(labels) if labels is not None else None)
    data.findings = label_findings(data, stats, labels)
    log_findings(data.findings, log)
    whole = problem_lines(data.findings)  # about the whole dataset: --skip-bad cannot leave them out
    lines = blocking_problems(data, stats)
    if whole or (lines and not skip_bad):
        shown = whole + lines
        more = f"\n... and {len(shown) - 20} more problems" if len(shown) > 20 else ""
        log.warning("segtune: `segtune inspect` lists every problem; --skip-bad trains on the good pairs only")
        raise SegtuneError("\n".join(shown[:20]) + more)
    if lines:
        _drop_bad(data, stats, lines)
    if labels is not None:
        return labels
    top = max(data.mask_max.values())
    if top < 0:
        raise SegtuneError(f"{data.source}: every mask pixel is ignored; nothing to learn or score")
    return LabelSet.numbered(top + 1)


def apply_label_options(data, opts) -> None:
    """The command line's mask rules (`options.LabelOptions`) over the data file's."""
    if opts.reduce_labels is not None:
        data.reduce_labels = opts.reduce_labels
    if opts.ignore_index is not None:
        data.ignore_index = opts.ignore_index
    if getattr(opts, "binary", None) is not None:
        data.binary = opts.binary


def load_checked_data(data_path, opts, *, val_split: float, seed: int, labels: LabelSet | None = None,
                      source_kwargs: dict | None = None, choose=None, skip_bad: bool = False, bands=None):
    """Finds, configures and checks a dataset; returns (data, labels). `opts`: the LabelOptions.

    `choose(data)`, for scoring: the pairs to check and score, which become the data's only (validation)
    split; without it both splits are checked, for training. A streamed dataset cannot be read ahead:
    its classes must be known and bad rows are met (and named, or skipped with `skip_bad`) as training
    reaches them. `bands`: None, read band by band where the files ask for it (band_data.wants_bands);
    a list of 1-based band numbers, band by band with those bands; False, as RGB pictures.
    """
    from functools import partial

    from tqdm.auto import tqdm

    from .band_data import as_band_data, wants_bands
    from .sources import load_data

    data = load_data(data_path, val_split=val_split, seed=seed, **(source_kwargs or {}))
    apply_label_options(data, opts)
    if isinstance(data, StreamedData):
        if bands:
            raise SegtuneError(f"{data_path}: multi-band data (--bands) is read from raster files, not streamed")
        if choose is not None:
            raise SegtuneError(f"{data_path}: a streamed dataset cannot be scored here; drop streaming")
        labels = labels or data.labels
        if labels is None:
            raise SegtuneError(f"{data_path}: a streamed dataset needs its classes: pass --labels or put "
                               "an id2label.json beside the data")
        data.read_colours_of(labels)
        return data, labels
    if bands is not False and wants_bands(data.train or data.val, bands):
        data.band_layout = as_band_data(data, bands or None)
    splits = ("train", "val")
    if choose is not None:
        data.train, data.val, data.unsplit, splits = [], choose(data), None, ("val",)
    labels = checked_labels(data, labels, splits=splits, progress=partial(tqdm, leave=False), skip_bad=skip_bad)
    return data, labels
