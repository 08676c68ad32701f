"""YOLO segmentation labels (Ultralytics, Roboflow): a data.yaml as Ultralytics reads it, unchanged.

    path: .              # the root (relative to this file); the folders below are relative to it
    train: images/train  # image folders (or lists of them); labels in the parallel labels/ folders
    val: images/val
    names: {0: person, 1: car}

Each image's label file is its path with the last `images` folder replaced by `labels` and the
extension by `.txt` (images/train/x.jpg -> labels/train/x.txt): one polygon a line, the class, then
x y pairs normalised to 0..1. An image without a label file is all background, as Ultralytics has it.
The file is recognised by that layout (a `labels/` folder beside the images' and `names`), or by
`format: yolo`. Uncovered pixels as for COCO: `background: class` (the default: class `background`
id 0, YOLO class k -> k + 1) or `background: ignore`. Polygons are rasterised with pycocotools
when a data worker reads the pair, overlaps drawn as in coco.py (the smaller on top).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import SegtuneError
from ..pairs import Sample, SegmentationData
from ..reading import IMAGE_SUFFIXES
from .coco import background_mode, class_names, draw_shapes
from .splits import with_validation

# the keys Ultralytics data files carry besides segtune's own
YOLO_KEYS = {"path", "train", "val", "test", "names", "nc", "download", "format", "background", "ignore_index",
             "kpt_shape", "flip_idx", "channels", "yaml_file"}
EXIF_ROTATED = {5, 6, 7, 8}  # orientations that swap width and height


def labels_path(image: Path) -> Path:
    """Ultralytics' rule: the last /images/ of the path becomes /labels/, the extension .txt."""
    text = str(image)
    head, sep, tail = text.rpartition(f"{os.sep}images{os.sep}")
    return Path(f"{head}{os.sep}labels{os.sep}{tail}" if sep else text).with_suffix(".txt")


def _folders(spec: dict, root: Path, split: str) -> list[Path]:
    entry = spec.get(split)
    entries = entry if isinstance(entry, list) else [entry] if entry is not None else []
    return [root / e for e in entries if isinstance(e, str)]


def is_yolo(path: Path, spec: dict) -> bool:
    """An Ultralytics data file: `format: yolo`, or names and a labels/ folder beside the training images."""
    if spec.get("format") is not None:
        return spec["format"] == "yolo"
    if "names" not in spec or "dataset" in spec or not isinstance(spec.get("train"), str | list):
        return False
    root = (path.parent / spec.get("path", ".")) if isinstance(spec.get("path", "."), str) else path.parent
    folders = _folders(spec, root, "train")
    return bool(folders) and all(f.is_dir() and labels_path(f / "x.jpg") != f / "x.txt"  # an images/ folder
                                 and labels_path(f / "x.jpg").parent.is_dir() for f in folders)


def _names(path: Path, spec: dict) -> list[str]:
    names = spec.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise SegtuneError(f"{path}: 'names' ids must be 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise SegtuneError(f"{path}: 'names' must be a list of class names or a mapping of id: name")
    if "nc" in spec and spec["nc"] != len(names):
        raise SegtuneError(f"{path}: 'nc' is {spec['nc']} but 'names' has {len(names)} classes")
    return [str(n) for n in names]


@dataclass(frozen=True, eq=False)
class YoloMask:
    """One image's polygons (normalised), rasterised at the image's size when read."""

    labels: Path  # the .txt file (may not exist: all background)
    image: Path
    polygons: tuple  # (class value, (x0, y0, x1, y1, ...) normalised)
    fill: int

    def __str__(self) -> str:
        return str(self.labels)

    def draw(self) -> np.ndarray:
        try:
            with Image.open(self.image) as img:  # the header only: the size, upright as to_rgb turns it
                width, height = img.size
                if img.getexif().get(0x0112) in EXIF_ROTATED:
                    width, height = height, width
        except (OSError, ValueError, SyntaxError) as e:
            raise SegtuneError(f"{self.image}: cannot read image ({e})") from None
        shapes = [(value, [[c * (width if i % 2 == 0 else height) for i, c in enumerate(coords)]])
                  for value, coords in self.polygons]
        return draw_shapes(height, width, shapes, self.fill, str(self.labels))


def _parse(labels: Path, image: Path, nc: int, offset: int, problems: list) -> tuple | None:
    """The label file's polygons, or None (problems recorded: one line per bad line)."""
    if not labels.is_file():
        return ()
    try:
        lines = labels.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{labels}: cannot read label file ({e})")
        return None
    polygons, ok = [], True
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{labels}: line {n} (image {image.name})"
        try:
            cls, *coords = line.split()
            cls, coords = int(cls), [float(c) for c in coords]
        except ValueError:
            problems.append(f"{where}: expected a class id and x y pairs, got {line.strip()[:40]!r}")
            ok = False
            continue
        problem = None
        if not 0 <= cls < nc:
            problem = f"class {cls} is not one of the {nc} classes 0..{nc - 1} in 'names'"
        elif len(coords) < 6 or len(coords) % 2:
            kind = " (a detection box: this needs segmentation labels)" if len(coords) == 4 else ""
            problem = f"polygon with {len(coords) // 2} point(s) (at least 3 needed){kind}"
        elif min(coords) < 0 or max(coords) > 1:
            problem = "coordinates must be normalised to 0..1"
        if problem:
            problems.append(f"{where}: {problem}")
            ok = False
        else:
            polygons.append((cls + offset, tuple(coords)))
    return tuple(polygons) if ok else None


def load_yolo(path: Path, spec: dict, val_split: float, seed: int, rules: dict) -> SegmentationData:
    unknown = sorted(set(spec) - YOLO_KEYS)
    if unknown:
        raise SegtuneError(f"{path}: unknown key '{unknown[0]}' in a YOLO data file")
    names = _names(path, spec)
    background = background_mode(path, spec.get("background"))
    offset, fill = (1, 0) if background == "class" else (0, rules["ignore_index"])
    root = (path.parent / spec.get("path", ".")).resolve()
    problems, splits = [], {}
    for split in ("train", "val"):
        if split not in spec:
            continue
        pairs = []
        for folder in _folders(spec, root, split):
            if not folder.is_dir():
                raise SegtuneError(f"{folder}: image folder not found (from '{split}' in {path})")
            images = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise SegtuneError(f"{folder}: no images found")
            for image in images:
                labels = labels_path(image)
                polygons = _parse(labels, image, len(names), offset, problems)
                if polygons is not None:
                    pairs.append(Sample(image, YoloMask(labels, image, polygons, fill)))
        splits[split] = pairs
    rules = {**rules, "labels": class_names(path, names, background)}
    return with_validation(path, splits.get("train", []), splits.get("val"), val_split, seed, problems, **rules)
