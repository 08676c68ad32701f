"""Finding image/mask pairs on disk, checking them, and reading them.

Three layouts are understood:
- ADE20K: images/{training,validation}/*.jpg + annotations/{training,validation}/*.png
- flat: images/ + annotations/ holding the files directly, split by `val_split` and `seed`
- a YAML data file naming the train/val image and mask folders, classes and label rules
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageOps

from .errors import SegtuneError
from .labels import LabelSet, _from_entries, load_labels

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MASK_SUFFIXES = {".png", ".tif", ".tiff", ".bmp"}
ADE_SPLITS = {"train": "training", "val": "validation"}


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None = None


@dataclass
class SegmentationData:
    """Pairs per split plus the rules for reading masks (ids as the model sees them)."""

    source: Path
    train: list[Sample]
    val: list[Sample]
    labels: LabelSet | None = None  # from the data file or an id2label.json beside the data
    ignore_index: int = 255
    reduce_labels: bool = False
    mask_max: dict = field(default_factory=dict)  # filled by check(): largest class id per split
    val_is_split: bool = False  # True when val was drawn from the training pairs by val_split/seed


# ---------------------------------------------------------------- reading files


HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def to_rgb(img: Image.Image) -> Image.Image:
    """The one conversion used for training, evaluation and prediction.

    EXIF orientation is applied (phones store photos sideways plus a rotation tag, while
    masks are drawn on the upright picture), and 16-bit or float grey images are scaled to
    8 bits rather than clipped, which would turn them nearly white.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in HIGH_DEPTH_MODES:
        pixels = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(pixels / 257.0), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def read_image(path: Path) -> Image.Image:
    """Decodes fully (so a truncated file fails here, naming itself) and converts to RGB."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SegtuneError(f"{path}: cannot read image ({e})") from None


def reduce_labels(mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """ADE20K's reduction, as `evaluate` and transformers do it: 0 -> ignore, k -> k-1, 255 stays."""
    out = mask.astype(np.int64) - 1
    out[(mask == 0) | (mask == 255)] = ignore_index
    return out


def read_mask(path: Path, reduce: bool = False, ignore_index: int = 255) -> np.ndarray:
    """Returns the mask as an int64 (H, W) array of class ids (after reduction if asked)."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            mask = np.array(ImageOps.exif_transpose(img))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SegtuneError(f"{path}: cannot read mask ({e})") from None
    if mask.ndim == 3:
        # A grey mask saved as RGB is harmless; a colour-coded one needs a colour map (not an index).
        if mask.shape[2] >= 3 and (mask[..., 0] == mask[..., 1]).all() and (mask[..., 0] == mask[..., 2]).all():
            mask = mask[..., 0]
        else:
            raise SegtuneError(f"{path}: mask is a colour ({mode}) image; expected a single-channel index mask")
    mask = mask.astype(np.int64)
    return reduce_labels(mask, ignore_index) if reduce else mask


class PairDataset:
    """Reads pair i as (RGB image, mask of class ids); subclasses turn it into model inputs."""

    def __init__(self, samples: list[Sample], transform, reduce: bool, ignore_index: int):
        self.samples, self.transform = samples, transform
        self.reduce, self.ignore_index = reduce, ignore_index

    def __len__(self):
        return len(self.samples)

    def load(self, i: int):
        s = self.samples[i]
        image, mask = read_image(s.image), read_mask(s.mask, self.reduce, self.ignore_index)
        if mask.shape != (image.height, image.width):
            raise SegtuneError(f"{s.mask}: mask size differs from its image {s.image}")
        return image, mask


# ---------------------------------------------------------------- finding pairs


def _files(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    found = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            if p.stem in found:
                raise SegtuneError(f"{p}: two files share the name '{p.stem}' ({found[p.stem].name})")
            found[p.stem] = p
    return found


def pair_folder(images_dir: Path, masks_dir: Path) -> list[Sample]:
    """Matches images to masks by file stem; a file without its partner is an error."""
    if not images_dir.is_dir():
        raise SegtuneError(f"{images_dir}: image folder not found")
    images = _files(images_dir, IMAGE_SUFFIXES)
    if not images:
        raise SegtuneError(f"{images_dir}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if not masks_dir.is_dir():
        raise SegtuneError(f"{masks_dir}: mask folder not found")
    masks = _files(masks_dir, MASK_SUFFIXES)
    for stem, p in images.items():
        if stem not in masks:
            other = next((q for q in sorted(masks_dir.iterdir()) if q.stem == stem and q.is_file()), None)
            if other is not None:  # e.g. a JPEG mask: lossy compression corrupts class ids
                raise SegtuneError(
                    f"{p}: image has no mask ({other.name} is not a mask file: use "
                    f"{', '.join(sorted(MASK_SUFFIXES))})"
                )
            raise SegtuneError(f"{p}: image has no mask ({masks_dir / (stem + '.png')} is missing)")
    for stem, p in masks.items():
        if stem not in images:
            raise SegtuneError(f"{p}: mask has no image in {images_dir}")
    return [Sample(images[s], masks[s]) for s in images]


def split_samples(samples: list[Sample], val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """The seeds' split: `datasets.Dataset.train_test_split(test_size=val_split, seed=seed)`."""
    from datasets import Dataset

    if len(samples) < 2:
        raise SegtuneError(f"{samples[0].image.parent}: only {len(samples)} pair, too few to split")
    try:
        parts = Dataset.from_dict({"i": list(range(len(samples)))}).train_test_split(test_size=val_split, seed=seed)
    except ValueError as e:  # val_split outside (0, 1), or leaving one side empty
        raise SegtuneError(
            f"{samples[0].image.parent}: cannot split {len(samples)} pairs with val_split={val_split} ({e})"
        ) from None
    return [samples[i] for i in parts["train"]["i"]], [samples[i] for i in parts["test"]["i"]]


def _labels_beside(root: Path) -> LabelSet | None:
    for name in ("id2label.json", "labels.json"):
        if (root / name).is_file():
            return load_labels(root / name)
    return None


def _from_yaml(path: Path, val_split: float, seed: int) -> SegmentationData:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SegtuneError(f"{path}: cannot read data file ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or "train" not in spec and "val" not in spec:
        raise SegtuneError(f"{path}: data file needs 'train' and/or 'val' entries")
    for key in ("path", "train_masks", "val_masks"):
        if key in spec and not isinstance(spec[key], str):
            raise SegtuneError(f"{path}: '{key}' must be a folder name, not {spec[key]!r}")
    root = (path.parent / spec.get("path", ".")).resolve()

    def folders(split):
        entry = spec.get(split)
        if entry is None:
            return None
        if isinstance(entry, dict):
            images, masks = entry.get("images"), entry.get("masks")
        else:
            images, masks = entry, spec.get(f"{split}_masks")
        if images is None or masks is None:
            raise SegtuneError(f"{path}: '{split}' needs an image folder and a mask folder ({split}_masks)")
        if not isinstance(images, str) or not isinstance(masks, str):
            raise SegtuneError(f"{path}: '{split}' folders must be folder names, not {images!r} / {masks!r}")
        return pair_folder(root / images, root / masks)

    train, val = folders("train"), folders("val")
    val_is_split = train is not None and val is None
    if val_is_split:
        train, val = split_samples(train, val_split, seed)
    labels = None
    if "names" in spec:
        names = spec["names"]
        if isinstance(names, dict):  # ids must be exactly 0..N-1: a gap would shift every later name
            names = _from_entries([(k, str(v)) for k, v in names.items()], f"{path}: names").names
        if not isinstance(names, list | tuple) or not names:
            raise SegtuneError(f"{path}: 'names' must be a list of class names or a mapping of id: name")
        try:
            labels = LabelSet.from_names([str(n) for n in names], spec.get("colors"))
        except (ValueError, TypeError) as e:
            raise SegtuneError(f"{path}: bad 'colors' ({e})") from None
    ignore_index, reduce = spec.get("ignore_index", 255), spec.get("reduce_labels", False)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise SegtuneError(f"{path}: 'ignore_index' must be an integer, not {ignore_index!r}")
    if not isinstance(reduce, bool):  # bool("false") would be True
        raise SegtuneError(f"{path}: 'reduce_labels' must be true or false, not {reduce!r}")
    return SegmentationData(
        source=path,
        train=train or [],
        val=val,
        labels=labels,
        ignore_index=ignore_index,
        reduce_labels=reduce,
        val_is_split=val_is_split,
    )


def load_data(path: str | Path, val_split: float = 0.2, seed: int = 42) -> SegmentationData:
    """Finds the pairs of a dataset given as a folder or a YAML data file."""
    path = Path(path)
    if not path.exists():
        raise SegtuneError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in {".yaml", ".yml"}:
            raise SegtuneError(f"{path}: expected a dataset folder or a YAML data file (.yaml)")
        return _from_yaml(path, val_split, seed)
    images, annotations = path / "images", path / "annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise SegtuneError(
            f"{path}: not a dataset folder: expected images/ and annotations/ "
            "(flat, or with training/ and validation/ inside), or pass a YAML data file"
        )
    if any((images / d).is_dir() for d in ADE_SPLITS.values()):
        splits = {}
        for split, folder in ADE_SPLITS.items():
            if (images / folder).is_dir():
                splits[split] = pair_folder(images / folder, annotations / folder)
        train, val = splits.get("train", []), splits.get("val")
        val_is_split = val is None
        if val_is_split:
            train, val = split_samples(train, val_split, seed)
    else:
        val_is_split = True
        train, val = split_samples(pair_folder(images, annotations), val_split, seed)
    return SegmentationData(source=path, train=train, val=val, labels=_labels_beside(path), val_is_split=val_is_split)


# ---------------------------------------------------------------- checking


def _check_pair(sample: Sample, reduce: bool, ignore_index: int) -> tuple[str | None, int]:
    """Returns (problem or None, largest class id in the mask)."""
    try:
        image = read_image(sample.image)
        mask = read_mask(sample.mask, reduce, ignore_index)
    except SegtuneError as e:
        return str(e), -1
    if mask.shape != (image.height, image.width):
        return (
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.width}x{image.height}",
            -1,
        )
    values = mask[mask != ignore_index]
    if values.size and values.min() < 0:
        return f"{sample.mask}: mask has negative values", -1
    return None, int(values.max()) if values.size else -1


def check(data: SegmentationData, splits=("train", "val"), num_classes: int | None = None, progress=None) -> None:
    """Reads every pair once before any training; raises one line per bad file.

    Finds the largest class id per split (`data.mask_max`) so classes can be counted when
    no names are given, and rejects ids >= num_classes when it is known.
    """
    problems = []
    for split in splits:
        samples = getattr(data, split) or []
        if not samples and split == "val":
            raise SegtuneError(f"{data.source}: the validation split is empty")
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            results = pool.map(lambda s: _check_pair(s, data.reduce_labels, data.ignore_index), samples)
            if progress:
                results = progress(results, total=len(samples), desc=f"checking {split}")
            results = list(results)
        largest = -1
        for sample, (problem, top) in zip(samples, results):
            if problem:
                problems.append(problem)
            elif num_classes is not None and top >= num_classes:
                hint = " (ADE20K-style data needs --reduce-labels)" if top == num_classes else ""
                problems.append(
                    f"{sample.mask}: mask has class id {top}, outside the {num_classes} classes "
                    f"0..{num_classes - 1} and not the ignore index {data.ignore_index}{hint}"
                )
            largest = max(largest, top)
        data.mask_max[split] = largest
    if problems:
        more = f"\n... and {len(problems) - 20} more problems" if len(problems) > 20 else ""
        raise SegtuneError("\n".join(problems[:20]) + more)


def checked_labels(data: SegmentationData, labels: LabelSet | None, splits=("train", "val"), progress=None) -> LabelSet:
    """Checks the data once and returns its classes.

    Given labels win, then the data's own names; without either, classes are numbered up to
    the largest id found in the masks.
    """
    labels = labels or data.labels
    check(data, splits, num_classes=len(labels) if labels else None, progress=progress)
    if labels is not None:
        return labels
    top = max(data.mask_max.values())
    if top < 0:
        raise SegtuneError(f"{data.source}: every mask pixel is ignored; nothing to learn or score")
    return LabelSet.numbered(top + 1)


def write_split_lists(data: SegmentationData, out_dir: Path) -> None:
    """Records which files went where, so a run can be repeated and audited."""
    listing = {split: [str(s.image) for s in getattr(data, split)] for split in ("train", "val")}
    (out_dir / "splits.json").write_text(json.dumps(listing, indent=1))
