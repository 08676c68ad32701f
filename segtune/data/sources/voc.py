"""Pascal VOC folders, and CVAT's "Segmentation mask 1.1" export (the same layout with a labelmap.txt).

    JPEGImages/x.jpg                       # the images
    SegmentationClass/x.png                # colour (or VOC palette) masks
    ImageSets/Segmentation/train.txt       # stems, one a line; val.txt; CVAT writes default.txt
    labelmap.txt                           # CVAT: `name:r,g,b::` a line; without it, VOC's 21 classes

Recognised from `--data FOLDER` with no extra key. Class ids are labelmap.txt's order; each mask
colour becomes its class, VOC's boundary colour 224,224,192 (palette index 255) the ignore index.
A palette PNG whose palette holds the classes' colours at their ids is read by index, as VOC
ships them. train.txt is the training split and val.txt the validation split; without train.txt
every list but val.txt (CVAT's default.txt) is training, and without val.txt the seeds split it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import SegtuneError
from ..labels import LabelSet
from ..pairs import SegmentationData
from ..reading import IMAGE_SUFFIXES, open_image
from .splits import with_validation

BOUNDARY = (224, 224, 192)
VOC_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
             "tvmonitor")


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC colour map: class i's colour from the bits of i (background black, aeroplane 128,0,0, ...)."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def is_voc(path: Path) -> bool:
    return (path / "SegmentationClass").is_dir() and (path / "JPEGImages").is_dir() \
        and (path / "ImageSets" / "Segmentation").is_dir()


def read_labelmap(path: Path) -> LabelSet:
    """CVAT's labelmap.txt: `# label:color_rgb:parts:actions`, then `name:r,g,b::` a line."""
    names, colors = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SegtuneError(f"{path}: cannot read labelmap ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        try:
            rgb = tuple(int(v) for v in rest.split(":")[0].split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except ValueError:
            raise SegtuneError(f"{path}: line {n}: expected `name:r,g,b::`, got {line.strip()[:40]!r}") from None
        if rgb in colors:
            raise SegtuneError(f"{path}: line {n}: colour {rgb} is also '{names[colors.index(rgb)]}''s")
        names.append(name.strip())
        colors.append(rgb)
    if not names:
        raise SegtuneError(f"{path}: no classes")
    return LabelSet.from_names(names, colors)


@dataclass(frozen=True, eq=False)
class VocMask:
    """A colour (or palette) mask, read through the classes' colours."""

    path: Path
    colors: np.ndarray  # (N, 3): class i's colour
    ignore_index: int

    def __str__(self) -> str:
        return str(self.path)

    def draw(self) -> np.ndarray:
        img = open_image(self.path, "mask")
        if img.mode == "P":
            palette = np.array(img.getpalette() or [], np.uint8).reshape(-1, 3)
            n = len(self.colors)
            if len(palette) >= n and np.array_equal(palette[:n], self.colors):  # VOC's own: indices are ids
                ids = np.array(img).astype(np.int64)
                ids[ids == 255] = self.ignore_index
                outside = ids[(ids >= n) & (ids != self.ignore_index)]
                if outside.size:
                    raise SegtuneError(f"{self.path}: palette index {outside.max()} is not a class "
                                       f"(the labelmap has {n})")
                return ids
        rgb = np.array(img.convert("RGB")).astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        table = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in enumerate(self.colors)}
        boundary = (BOUNDARY[0] << 16) | (BOUNDARY[1] << 8) | BOUNDARY[2]
        table.setdefault(boundary, self.ignore_index)
        values, inverse = np.unique(codes, return_inverse=True)
        unknown = [int(v) for v in values if int(v) not in table]
        if unknown:
            v = unknown[0]
            more = f" (and {len(unknown) - 1} more unknown colours)" if len(unknown) > 1 else ""
            raise SegtuneError(f"{self.path}: mask colour {(v >> 16, (v >> 8) & 255, v & 255)} is not in the "
                               f"labelmap{more}")
        return np.array([table[int(v)] for v in values], np.int64)[inverse.reshape(codes.shape)]


def _stems(listing: Path) -> list[str]:
    try:
        return [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise SegtuneError(f"{listing}: cannot read split list ({e})") from None


def load_voc(path: Path, val_split: float, seed: int) -> SegmentationData:
    from ..pairs import Sample

    labelmap = path / "labelmap.txt"
    labels = read_labelmap(labelmap) if labelmap.is_file() else LabelSet.from_names(VOC_NAMES, voc_palette(21))
    sets = path / "ImageSets" / "Segmentation"
    lists = sorted(p for p in sets.glob("*.txt") if p.name != "trainval.txt" or not (sets / "train.txt").is_file())
    if not lists:
        raise SegtuneError(f"{sets}: no split lists (train.txt, val.txt)")
    val_lists = [p for p in lists if p.name == "val.txt"]
    train_lists = [p for p in lists if p.name == "train.txt"] or [p for p in lists if p.name != "val.txt"]
    images = {}
    for p in sorted((path / "JPEGImages").iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            images.setdefault(p.stem, p)
    problems = []

    def pairs(listings: list[Path]) -> list:
        out = []
        for listing in listings:
            for stem in _stems(listing):
                mask = path / "SegmentationClass" / f"{stem}.png"
                if stem not in images:
                    problems.append(f"{listing}: '{stem}' is listed but has no image in {path / 'JPEGImages'}")
                elif not mask.is_file():
                    problems.append(f"{images[stem]}: image has no mask ({mask} is missing)")
                else:
                    out.append(Sample(images[stem], VocMask(mask, labels.colors, 255)))
        return out

    train = pairs(train_lists)
    val = pairs(val_lists) if val_lists else None
    return with_validation(path, train, val, val_split, seed, problems, labels=labels)
