"""Label Studio brush exports: one PNG per class per image, merged into one mask.

    data/
      images/               # each task's image: 12.jpg or task-12.jpg, or named as in a JSON export beside
      masks/                # Label Studio's "Export to PNG": task-12-annotation-3-by-1-tag-car-0.png ...
      tasks.json            # optional: Label Studio's JSON export, to find each task's image by data.image

Recognised from `--data FOLDER` (images/ and masks/ holding task-*.png), or a data file with
`format: label-studio` and train/val as {images: ..., masks: ...}. A file's task is its `task-<id>`;
its label is the part after `-tag-` (less Label Studio's trailing `-<n>`), else its last `-` part.
Class ids: `names` in the data file (or an id2label.json / labels.json in the folder), else
`background` (0, the unpainted pixels) and the labels found, sorted. A painted pixel is one whose
alpha (or grey value) is 128 or more; where brushes of two labels overlap, the smaller area is on
top, as in coco.py.
Label Studio's COCO export goes through coco.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import SegtuneError
from ..labels import LabelSet
from ..pairs import Sample, SegmentationData
from ..reading import IMAGE_SUFFIXES, mask_array, open_image
from .splits import labels_beside, with_validation

BRUSH = re.compile(r"task-(\d+)-(.+)\.png", re.IGNORECASE)
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes uploaded files with 8 hex digits


def brush_label(rest: str) -> str:
    if "-tag-" in rest:
        return re.sub(r"-\d+$", "", rest.rsplit("-tag-", 1)[1])
    return rest.rsplit("-", 1)[-1]


def is_label_studio(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "masks").is_dir() and any((path / "masks").glob("task-*.png"))


@dataclass(frozen=True, eq=False)
class BrushMask:
    """One task's brush PNGs, (class value, file) each, merged when read."""

    task: str
    brushes: tuple

    def __str__(self) -> str:
        return str(self.brushes[0][1]) if self.brushes else f"task {self.task}"

    def draw(self) -> np.ndarray:
        layers = []
        for value, path in self.brushes:
            img = open_image(path, "mask")
            pixels = np.array(img.getchannel("A")) if "A" in img.getbands() else mask_array(img)
            if pixels.ndim == 3:
                pixels = pixels.max(axis=2)
            layers.append((value, path, pixels >= 128))
        shape = layers[0][2].shape
        for _, path, layer in layers:
            if layer.shape != shape:
                raise SegtuneError(f"{path}: brush is {layer.shape[1]}x{layer.shape[0]} but the task's other "
                                   f"brushes are {shape[1]}x{shape[0]}")
        out = np.zeros(shape, np.int64)
        for value, _, layer in sorted(layers, key=lambda v: -int(v[2].sum())):  # the smaller on top
            out[layer] = value
        return out


def _task_images(root: Path, images: Path) -> dict[str, Path]:
    """Task id -> image file: from a Label Studio JSON export beside, else by name (12.jpg, task-12.jpg)."""
    files = {p.name: p for p in sorted(images.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    found = {}
    for p in files.values():
        stem = p.stem.removeprefix("task-")
        if stem.isdigit():
            found.setdefault(stem, p)
    for export in sorted(root.glob("*.json")):
        try:
            tasks = json.loads(export.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(tasks, list):
            continue
        for task in tasks:
            if not isinstance(task, dict) or "id" not in task or not isinstance(task.get("data"), dict):
                continue
            for value in task["data"].values():
                name = Path(str(value).split("?")[0]).name
                for candidate in (name, UPLOAD_PREFIX.sub("", name)):
                    if candidate in files:
                        found[str(task["id"])] = files[candidate]
                        break
    return found


def brush_pairs(root: Path, images: Path, masks: Path, names: list[str] | None, problems: list) -> list:
    """The pairs of one images/ + masks/ split; `names`, the classes (None: ['background', labels found])."""
    if not images.is_dir():
        raise SegtuneError(f"{images}: image folder not found")
    if not masks.is_dir():
        raise SegtuneError(f"{masks}: mask folder not found")
    by_task: dict[str, list] = {}
    for p in sorted(masks.rglob("*.png")):
        match = BRUSH.fullmatch(p.name)
        if match is None:
            problems.append(f"{p}: not a Label Studio brush file name (task-<id>-...-<label>.png)")
            continue
        by_task.setdefault(match[1], []).append((brush_label(match[2]), p))
    task_images = _task_images(root, images)
    pairs = []
    for task, brushes in by_task.items():
        if task not in task_images:
            problems.append(f"{brushes[0][1]}: task {task} has no image in {images} "
                            f"({task}.jpg, task-{task}.jpg, or named in a Label Studio JSON export in {root})")
            continue
        unknown = [(label, p) for label, p in brushes if names is not None and label not in names]
        for label, p in unknown:
            problems.append(f"{p}: label '{label}' is not one of the classes ({', '.join(names)})")
        if not unknown:
            pairs.append(Sample(task_images[task], BrushMask(task, tuple((label, p) for label, p in brushes))))
    return pairs


def _numbered(pairs: list, names: list[str]) -> list:
    """Labels -> class ids, once the classes are known."""
    ids = {n: i for i, n in enumerate(names)}
    return [Sample(s.image, BrushMask(s.mask.task, tuple((ids[label], p) for label, p in s.mask.brushes)))
            for s in pairs]


def _classes(pairs_by_split: dict, given: LabelSet | None) -> LabelSet:
    if given is not None:
        return given
    found = sorted({label for pairs in pairs_by_split.values() for s in pairs for label, _ in s.mask.brushes})
    return LabelSet.from_names(["background", *[n for n in found if n != "background"]])


def _load(source: Path, root: Path, splits: dict, given: LabelSet | None, val_split: float, seed: int,
          rules: dict) -> SegmentationData:
    problems = []
    names = list(given.names) if given is not None else None
    found = {split: brush_pairs(root, images, masks, names, problems) for split, (images, masks) in splits.items()}
    labels = _classes(found, given)
    found = {split: _numbered(pairs, list(labels.names)) for split, pairs in found.items()}
    return with_validation(source, found.get("train", []), found.get("val"), val_split, seed, problems,
                           **{**rules, "labels": labels})


def load_label_studio_folder(path: Path, val_split: float, seed: int) -> SegmentationData:
    return _load(path, path, {"train": (path / "images", path / "masks")}, labels_beside(path), val_split, seed, {})


def load_label_studio_yaml(path: Path, spec: dict, root: Path, val_split: float, seed: int,
                           rules: dict) -> SegmentationData:
    """A data file with `format: label-studio`: train/val as {images: folder, masks: folder}."""
    splits = {}
    for split in ("train", "val"):
        entry = spec.get(split)
        if entry is None:
            continue
        if not isinstance(entry, dict) or set(entry) != {"images", "masks"} \
                or not all(isinstance(v, str) for v in entry.values()):
            raise SegtuneError(f"{path}: '{split}' must be {{images: folder, masks: folder}} for Label Studio")
        splits[split] = (root / entry["images"], root / entry["masks"])
    return _load(path, root, splits, rules.get("labels") or labels_beside(root), val_split, seed, rules)
