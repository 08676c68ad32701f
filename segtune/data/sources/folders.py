"""Image folders: an image folder and a mask folder paired by file name, and the two layouts
`load_data` recognises in a dataset folder.

- ADE20K layout: images/{training,validation}/ + annotations/{training,validation}/
- flat: images/ + annotations/, split by `val_split` and `seed`

Pairing problems (a file without its partner, two files with one name, a listed stem with no
file) are collected in `problems` rather than raised, so `inspect` can list them all and
`--skip-bad` can leave them out; the checks in checks.py refuse to train on them otherwise.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from ...errors import SegtuneError
from ..pairs import Sample, SegmentationData
from ..reading import IMAGE_SUFFIXES, MASK_SUFFIXES
from .splits import labels_beside, with_validation

ADE_SPLITS = {"train": "training", "val": "validation"}


@dataclass
class FolderSpec:
    """One split's images, masks, optional list of stems, and file-name endings."""

    images: Path
    masks: Path
    list_file: Path | None = None
    image_suffix: str | None = None  # e.g. "_leftImg8bit.png"; None: any image extension
    mask_suffix: str | None = None  # e.g. "_gtFine_labelIds.png"; None: any mask extension


def _files(folder: Path, suffix: str | None, extensions: set[str], problems: list) -> dict[str, Path]:
    """Files under `folder` (recursively) by key: the relative path without its suffix.

    Two files with one key (a.jpg and a.png) are a problem; the key is left out, as neither
    is surely the right one.
    """
    found, clashes = {}, set()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if suffix is not None:
            if not p.name.endswith(suffix) or p.name == suffix:
                continue
            key = str(p.relative_to(folder))[: -len(suffix)]
        elif p.suffix.lower() in extensions:
            key = str(p.relative_to(folder).with_suffix(""))
        else:
            continue
        if key in found:
            problems.append(f"{p}: two files share the name '{key}' ({found[key].name}); rename one")
            clashes.add(key)
            continue
        found[key] = p
    return {k: p for k, p in found.items() if k not in clashes}, clashes


def _read_list(path: Path) -> list[str]:
    """One entry per line (a stem, or 'image mask' paths as CamVid ships them); # comments."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SegtuneError(f"{path}: cannot read split list ({e})") from None
    entries = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise SegtuneError(f"{path}: split list is empty")
    return entries


def pair_folder(spec: FolderSpec, problems: list | None = None) -> list[Sample]:
    """Matches images to masks by key; partners missing are recorded in `problems`."""
    problems = [] if problems is None else problems
    if not spec.images.is_dir():
        raise SegtuneError(f"{spec.images}: image folder not found")
    if not spec.masks.is_dir():
        raise SegtuneError(f"{spec.masks}: mask folder not found")
    if spec.images.resolve() == spec.masks.resolve() and spec.image_suffix == spec.mask_suffix:
        raise SegtuneError(f"{spec.images}: images and masks share this folder: give image_suffix and mask_suffix")
    images, image_clashes = _files(spec.images, spec.image_suffix, IMAGE_SUFFIXES, problems)
    masks, mask_clashes = _files(spec.masks, spec.mask_suffix, MASK_SUFFIXES, problems)
    if spec.images.resolve() == spec.masks.resolve():  # one folder: an image name may also match as a mask
        images = {k: p for k, p in images.items() if p not in masks.values()}
    if not images:
        wanted = spec.image_suffix or ", ".join(sorted(IMAGE_SUFFIXES))
        raise SegtuneError(f"{spec.images}: no images found (looked for {wanted})")
    keys = list(images)
    if spec.list_file is not None:
        by_name = {}
        for key in images:
            by_name.setdefault(Path(key).name, []).append(key)
        keys = []
        for entry in _read_list(spec.list_file):
            stem = Path(entry).name
            if spec.image_suffix and stem.endswith(spec.image_suffix):
                stem = stem[: -len(spec.image_suffix)]
            elif Path(stem).suffix.lower() in IMAGE_SUFFIXES:
                stem = Path(stem).stem
            key = entry if entry in images else stem if stem in images else None
            if key is None and len(by_name.get(stem, [])) == 1:
                key = by_name[stem][0]
            if key is None:
                problems.append(f"{spec.list_file}: '{entry}' is listed but has no image in {spec.images}")
            else:
                keys.append(key)
    pairs = []
    for key in keys:
        if key in mask_clashes:
            continue
        if key in masks:
            pairs.append(Sample(images[key], masks[key]))
            continue
        look_for = key + (spec.mask_suffix or ".png")
        other = next((q for q in (spec.masks / key).parent.glob(glob.escape(Path(key).name) + ".*") if q.is_file()),
                     None)
        if other is not None and spec.mask_suffix is None:  # e.g. a JPEG mask: lossy, corrupts class ids
            problems.append(
                f"{images[key]}: image has no mask ({other.name} is not a mask file: use "
                f"{', '.join(sorted(MASK_SUFFIXES))})"
            )
        else:
            problems.append(f"{images[key]}: image has no mask ({spec.masks / look_for} is missing)")
    if spec.list_file is None:
        for key, p in masks.items():
            if key not in images and key not in image_clashes and spec.images.resolve() != spec.masks.resolve():
                problems.append(f"{p}: mask has no image in {spec.images}")
    return pairs


def is_layout(path: Path) -> bool:
    """A dataset folder in one of the two layouts: images/ and annotations/ side by side."""
    return (path / "images").is_dir() and (path / "annotations").is_dir()


def load_layout(path: Path, val_split: float, seed: int, image_suffix: str | None = None,
                mask_suffix: str | None = None) -> SegmentationData:
    """The pairs of an ADE20K-layout or flat dataset folder (is_layout), with an id2label.json beside them."""
    images, annotations = path / "images", path / "annotations"
    problems = []

    def pairs(sub: str) -> list[Sample]:
        return pair_folder(FolderSpec(images / sub, annotations / sub, None, image_suffix, mask_suffix), problems)

    if any((images / d).is_dir() for d in ADE_SPLITS.values()):
        splits = {split: pairs(folder) for split, folder in ADE_SPLITS.items() if (images / folder).is_dir()}
        train, val = splits.get("train", []), splits.get("val")
    else:
        train, val = pairs(""), None
    return with_validation(path, train, val, val_split, seed, problems, labels=labels_beside(path))
